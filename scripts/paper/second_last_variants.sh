#!/usr/bin/env bash
# Late masking after the second-last stage (ConvNeXt-B) / block (DINOv2 ViT-B, new LayerNorm before masking),
# frozen and fine-tuned; compare with the last-stage runs of frozen_grid.sh / finetune_grid.sh.
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=4 bash scripts/paper/second_last_variants.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
for regime in frozen finetune; do
  for model in convnext_base vit_base; do
    name=$model; [[ $model == vit_* ]] && name=${model}_cls_mean
    classifier late_masking/train.py $regime $model ${regime}_${name}_second_last_late --fm_second_last_block
  done
done
