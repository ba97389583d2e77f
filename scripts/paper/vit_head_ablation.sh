#!/usr/bin/env bash
# ViT head ablation (frozen DINOv2 ViT-S/B/L): CLS only and GAP-pooled patch tokens only, next to the default
# CLS+GAP of frozen_grid.sh, each as baseline / early / late masking. The paper's most robust model is GAP + early.
# Heads on the same frozen features train in one run (--probe_heads, bgmask/models/probes.py): the baseline CLS and GAP
# heads with late-masked GAP; the early-masked CLS and GAP heads. Masking after the last block cannot reach the CLS
# token, so the late CLS head is masked after the second-last block (it trains the last block: a run of its own).
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=4 bash scripts/paper/vit_head_ablation.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
for size in small base large; do
  classifier late_masking/train.py frozen vit_$size frozen_vit_${size}_heads_baseline_and_late \
    --probe_heads cls,mean,late:mean
  classifier early_masking_and_baseline/train.py frozen vit_$size frozen_vit_${size}_heads_early --masking early \
    --probe_heads cls,mean
  classifier late_masking/train.py frozen vit_$size frozen_vit_${size}_cls_late_second_last --class_token_only \
    --fm_second_last_block
done
