#!/usr/bin/env bash
# Build the documentation site into site/ with `mkdocs build --strict`; no network is used by the build.
#
#   bash scripts/build_docs.sh            # build into site/ (open site/index.html)
#   bash scripts/build_docs.sh serve      # build, then a live preview at http://127.0.0.1:8000
#
# Sets up .venv as scripts/setup_env.sh does, then installs the pinned [docs] extra of pyproject.toml into
# it, the first time only (a stamp file records pyproject.toml's hash). PYTHON=/path/to/python uses that
# interpreter as it is instead (it must already hold the [docs] extra); the checkout goes on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
else
  bash scripts/setup_env.sh
  PY=.venv/bin/python
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: the docs need Python 3.11 or later (Material for MkDocs, mkdocstrings); .venv has" \
         "$("$PY" --version 2>&1); recreate .venv with PYTHON=python3.11 bash scripts/setup_env.sh" >&2
    exit 2
  fi
  stamp=.venv/.docs.sha256
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[docs] installing the [docs] extra into .venv (first time only)"
    "$PY" -m pip install --quiet --no-build-isolation -e ".[docs,pytorch-ood]"
    echo "$want" > "$stamp"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NO_MKDOCS_2_WARNING=1   # Material's notice about MkDocs 2.0, printed on every build
if [ "${1:-}" = serve ]; then
  exec "$PY" -m mkdocs serve --strict
fi
exec "$PY" -m mkdocs build --strict
