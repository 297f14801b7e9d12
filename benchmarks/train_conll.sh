#!/usr/bin/env bash
# Fine-tunes both architectures on CoNLL-2003 train, selects the epoch by dev F1,
# then scores the selected model once on test. Logs and outputs under $OUT (default runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs}"
DATA="${DATA:-../shared/data/conll2003}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for arch in encoder encoder-decoder; do
  cfg=jobs/configs/train_conll_minilm.yaml
  [ "$arch" = encoder ] && cfg=jobs/configs/train_conll_minilm_encoder.yaml
  dir="$OUT/conll-minilm-$arch"
  rm -rf "$dir"
  /usr/bin/time -v .venv/bin/python -m jobs.train --config "$cfg" --train "$DATA/train.txt" --dev "$DATA/dev.txt" --output "$dir" 2> "$dir.train.err" | tee "$dir.train.log"
  .venv/bin/python -m jobs.evaluate --model "$dir" --data "$DATA/test.txt" --scheme IOB1 --json "$dir/test_metrics.json" | tee "$dir.test.log"
done
