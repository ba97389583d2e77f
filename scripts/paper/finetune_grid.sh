#!/usr/bin/env bash
# Fine-tuned grid: ConvNeXt-B and DINOv2 ViT-S/B/L (CLS+GAP head), baseline / early / late masking. 300 epochs,
# AdamW 4e-6 (min 1e-8), wd 5e-2, 20 warm-up epochs, head lr x1000, drop-path 0.1, mixup 0.8 / cutmix 1.0.
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=4 bash scripts/paper/finetune_grid.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
for model in convnext_base vit_small vit_base vit_large; do
  name=$model; [[ $model == vit_* ]] && name=${model}_cls_mean
  classifier early_masking_and_baseline/train.py finetune $model finetune_${name}_baseline
  classifier early_masking_and_baseline/train.py finetune $model finetune_${name}_early --masking early
  classifier late_masking/train.py finetune $model finetune_${name}_late
done
