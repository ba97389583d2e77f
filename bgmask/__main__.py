"""Train any registered strategy: ``python -m bgmask --masking NAME [flags]`` (``--help`` lists them and their flags).

``early_masking_and_baseline/train.py`` and ``late_masking/train.py`` are this entry point for the paper's
strategies; a strategy added as a module of :mod:`bgmask.strategies` is trained from here.
"""

import sys

from bgmask import cli, strategies

if __name__ == "__main__":
    sys.exit(cli.main(strategies.names(), description=__doc__))
