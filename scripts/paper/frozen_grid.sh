#!/usr/bin/env bash
# Frozen-backbone grid (paper: linear probes): ConvNeXt-B and DINOv2 ViT-S/B/L (CLS+GAP head), each as baseline,
# early masking and late masking (precomputed Mask2Former Swin-T masks). 90 epochs, AdamW 1e-3, wd 1e-2, cosine.
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=4 bash scripts/paper/frozen_grid.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
for name in convnext_base vit_small_cls_mean vit_base_cls_mean vit_large_cls_mean; do
  classifier early_masking_and_baseline/train.py early_masking_and_baseline/configs/frozen_$name.yaml frozen_${name}_baseline
  classifier early_masking_and_baseline/train.py early_masking_and_baseline/configs/frozen_$name.yaml frozen_${name}_early --masking early
  classifier late_masking/train.py late_masking/configs/frozen_$name.yaml frozen_${name}_late
done
