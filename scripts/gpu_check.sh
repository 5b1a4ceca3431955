#!/usr/bin/env bash
# GPU evidence in one command: bash scripts/gpu_check.sh [--out DIR] [--device cuda|cpu] [--tiny] [--peak-tflops X]
# The logic is the package featurenorm/gpu_check/; the README's "GPU check" section explains the output.
# Python: $PYTHON if set, else .venv/bin/python (scripts/setup_env.sh makes it), else python3.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m featurenorm.gpu_check "$@"
