"""``python -m featurenorm.gpu_check``: what scripts/gpu_check.sh runs."""
import sys

from ..errors import run_cli
from .run import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
