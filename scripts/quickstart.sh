#!/usr/bin/env bash
# The main job: train on the bundled digits data (the full chain is wired in as it lands).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python train.py --config conf/digits.json "$@"
