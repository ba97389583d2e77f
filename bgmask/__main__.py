"""Train any registered masking strategy: ``--masking NAME`` picks it (``--help`` lists them and their flags).

  python -m bgmask --masking groupdro --dataset waterbirds --data_path DATA/CUB_200_2011 --snapshot_dir runs/gdro
  # early_masking_and_baseline/train.py and late_masking/train.py are this entry point for the paper's strategies;
  # a strategy added as a module of bgmask/strategies/ is trained from here (see docs/architecture.md)
"""

import sys

from bgmask import cli, strategies

if __name__ == "__main__":
    sys.exit(cli.main(strategies.names(), description=__doc__, prog="python -m bgmask"))
