"""Train a classifier.

A thin wrapper over featurenorm.cli.train_main (installed as the console script featurenorm-train).
Run `python train.py --help` for the flags.
"""
import sys

from featurenorm.cli import train_main as main
from featurenorm.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
