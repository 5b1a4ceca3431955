#!/usr/bin/env bash
# Run the whole test suite in the project's .venv (created on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q tests "$@"
