"""Score the ID test set and the OOD benchmarks by FeatureNorm and the baselines.

A thin wrapper over featurenorm.cli.eval_main (installed as the console script featurenorm-eval).
Run `python eval_ood.py --help` for the flags.
"""
import sys

from featurenorm.cli import eval_main as main
from featurenorm.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
