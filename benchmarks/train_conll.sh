#!/usr/bin/env bash
# Fine-tunes both architectures on one corpus's train split, selects the epoch by dev F1,
# then scores the selected model once on test. Logs and outputs under $OUT (default runs/).
#
#   bash benchmarks/train_conll.sh                          # CoNLL-2003, both architectures
#   CORPUS=wnut17 bash benchmarks/train_conll.sh            # WNUT-2017
#   ARCHS=encoder-decoder EXTRA="--epochs 3" NAME=e3 bash benchmarks/train_conll.sh
#   CORPUS=wnut17 INIT='runs/conll-minilm-{arch}-e5' NAME=from-conll bash benchmarks/train_conll.sh
#
# EXTRA flags go to both architectures (same budget); NAME suffixes the output folders.
# INIT: each architecture starts from its own trained tagger ({arch} is replaced) with a
# new head for this corpus's labels (--init-from ... --new-head true).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs}"
CORPUS="${CORPUS:-conll2003}"
DATA="${DATA:-../shared/data/$CORPUS}"
ARCHS="${ARCHS:-encoder encoder-decoder}"
EXTRA="${EXTRA:-}"
NAME="${NAME:-}"
INIT="${INIT:-}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$CORPUS" in
  conll2003) stem=conll; scheme=IOB1 ;;  # CoNLL-2003 keeps IOB1 remnants
  wnut17) stem=wnut; scheme=IOB2 ;;
  *) echo "unknown CORPUS $CORPUS" >&2; exit 2 ;;
esac
for arch in $ARCHS; do
  cfg="jobs/configs/train_${stem}_minilm.yaml"
  [ "$arch" = encoder ] && cfg="jobs/configs/train_${stem}_minilm_encoder.yaml"
  dir="$OUT/$stem-minilm-$arch${NAME:+-$NAME}"
  rm -rf "$dir"
  init=()
  [ -n "$INIT" ] && init=(--init-from "${INIT//\{arch\}/$arch}" --new-head true)
  mkdir -p "$OUT"
  # shellcheck disable=SC2086
  /usr/bin/time -v .venv/bin/python -m jobs.train --config "$cfg" --train "$DATA/train.txt" --dev "$DATA/dev.txt" \
      --output "$dir" "${init[@]}" $EXTRA 2> "$dir.train.err" | tee "$dir.train.log"
  .venv/bin/python -m jobs.evaluate --model "$dir" --data "$DATA/test.txt" --scheme "$scheme" --json "$dir/test_metrics.json" | tee "$dir.test.log"
done
