#!/usr/bin/env python
r"""Train a late-masked classifier: full images in, background features zeroed before pooling.

  # precomputed masks (fast; masks/ from mmsegmentation/tools/generate_masks.py)
  python late_masking/train.py --data_path DATA/CUB_200_2011 --snapshot_dir runs/late \
      --config configs/classifier/frozen.yaml --config configs/classifier/models/vit_base.yaml
  # ground-truth masks: CUB's segmentations/ > 0 (the oracle upper bound)
  python late_masking/train.py ... --mask_source gt
  # an online segmenter, as upstream
  python late_masking/train.py ... --mask_source segmenter --seg_model_config_path CFG --seg_model_checkpoint_path PTH
"""

from __future__ import annotations

import sys

from bgmask import cli

STRATEGIES = ("late",)


def main(argv=None) -> int:
    return cli.main(STRATEGIES, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
