#!/usr/bin/env bash
# The main job: set up .venv, then train -> select_block -> eval_ood on the bundled digits data.
# Finished stages are reused on a rerun; pass --fresh to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/quickstart.py "$@"
