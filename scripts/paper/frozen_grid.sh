#!/usr/bin/env bash
# Frozen-backbone grid (paper: linear probes): ConvNeXt-B and DINOv2 ViT-S/B/L (CLS+GAP head), each as baseline,
# early masking and late masking (precomputed Mask2Former Swin-T masks). 90 epochs, AdamW 1e-3, wd 1e-2, cosine.
# The baseline head and late masking after the last stage/block read the same frozen features: one run trains both
# (--probe_heads; each head trains exactly as its own run would, see bgmask/models/probes.py).
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=4 bash scripts/paper/frozen_grid.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
for model in convnext_base vit_small vit_base vit_large; do
  if [[ $model == vit_* ]]; then name=${model}_cls_mean; head=cls_mean; else name=$model; head=pool; fi
  classifier late_masking/train.py frozen $model frozen_${name}_baseline_and_late --probe_heads $head,late:$head
  classifier early_masking_and_baseline/train.py frozen $model frozen_${name}_early --masking early
done
