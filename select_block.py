"""Pick the block whose FeatureNorm best separates ID images from their jigsaw puzzles.

A thin wrapper over featurenorm.cli.select_main (installed as the console script featurenorm-select).
Run `python select_block.py --help` for the flags.
"""
import sys

from featurenorm.cli import select_main as main
from featurenorm.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
