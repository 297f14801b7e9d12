#!/usr/bin/env bash
# The README's main command: install, then run the whole loop on local Ray with
# the packaged MiniLM (fine-tune briefly on generated data, evaluate, bulk-tag a
# sample corpus, show the output). Extra arguments go to `python -m jobs.demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh ""
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m jobs.demo "$@"
