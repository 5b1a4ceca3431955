#!/usr/bin/env bash
# Run the test suite in the project's .venv (created on first use): the main tier, without the
# long end-to-end tests marked `integration`. Pass pytest arguments to change that, e.g.
#   bash scripts/test.sh -m integration     # only the integration tier
#   bash scripts/test.sh -m ""              # everything
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -m "not integration" tests "$@"
