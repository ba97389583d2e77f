#!/usr/bin/env bash
# Frozen-backbone grid (paper: linear probes): ConvNeXt-B and DINOv2 ViT-S/B/L (CLS+GAP head), each as baseline,
# early masking and late masking (precomputed Mask2Former Swin-T masks). 90 epochs, AdamW 1e-3, wd 1e-2, cosine.
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=4 bash scripts/paper/frozen_grid.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
for model in convnext_base vit_small vit_base vit_large; do
  name=$model; [[ $model == vit_* ]] && name=${model}_cls_mean
  classifier early_masking_and_baseline/train.py frozen $model frozen_${name}_baseline
  classifier early_masking_and_baseline/train.py frozen $model frozen_${name}_early --masking early
  classifier late_masking/train.py frozen $model frozen_${name}_late
done
