#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv: requirements.txt, then the project itself
# in editable mode with its [pytorch-ood] extra. A stamp file records the hash of requirements.txt and
# pyproject.toml, so a second call is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt and the project (editable) into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-build-isolation -e ".[pytorch-ood]"
  echo "$want" > "$stamp"
fi
