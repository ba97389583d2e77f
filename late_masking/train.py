#!/usr/bin/env python
"""Train a late-masked classifier: full images in, background features zeroed before pooling.

Precomputed masks (fast):  python late_masking/train.py --data_path DATA/CUB_200_2011 --snapshot_dir runs/late \
                               --config configs/classifier/frozen.yaml --config configs/classifier/models/vit_base.yaml
                               # masks/ from mmsegmentation/tools/generate_masks.py (--mask_source precomputed)
Ground-truth masks:        ... --mask_source gt                 # CUB segmentations/ > 0 (oracle upper bound)
Online segmenter (upstream): ... --mask_source segmenter --seg_model_config_path CFG --seg_model_checkpoint_path PTH
"""

from __future__ import annotations

import sys

from bgmask import cli

STRATEGIES = ("late",)


def main(argv=None) -> int:
    return cli.main(STRATEGIES, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
