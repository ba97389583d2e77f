#!/usr/bin/env python
r"""Train a classifier on original images (baseline) or on pre-masked images (early masking).

  # baseline, the paper's frozen regime with DINOv2 ViT-B/14 weights
  python early_masking_and_baseline/train.py --data_path DATA/CUB_200_2011 --snapshot_dir runs/base \
      --config configs/classifier/frozen.yaml --config configs/classifier/models/vit_base.yaml
  # early masking: the same with --masking early (reads images_masked/ and the masked Waterbirds folder written by
  # mmsegmentation/tools/generate_masks.py)
  python early_masking_and_baseline/train.py ... --masking early
  # several GPUs: the same flags under torchrun
  torchrun --nproc_per_node 4 early_masking_and_baseline/train.py ...
"""

from __future__ import annotations

import sys

from bgmask import cli

STRATEGIES = ("none", "early")


def main(argv=None) -> int:
    return cli.main(STRATEGIES, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
