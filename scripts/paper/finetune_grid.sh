#!/usr/bin/env bash
# Fine-tuned grid: ConvNeXt-B and DINOv2 ViT-S/B/L (CLS+GAP head), baseline / early / late masking. 300 epochs,
# AdamW 4e-6 (min 1e-8), wd 5e-2, 20 warm-up epochs, head lr x1000, drop-path 0.1, mixup 0.8 / cutmix 1.0.
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=4 bash scripts/paper/finetune_grid.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
for name in convnext_base vit_small_cls_mean vit_base_cls_mean vit_large_cls_mean; do
  classifier early_masking_and_baseline/train.py early_masking_and_baseline/configs/finetune_$name.yaml finetune_${name}_baseline
  classifier early_masking_and_baseline/train.py early_masking_and_baseline/configs/finetune_$name.yaml finetune_${name}_early --masking early
  classifier late_masking/train.py late_masking/configs/finetune_$name.yaml finetune_${name}_late
done
