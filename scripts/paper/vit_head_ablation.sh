#!/usr/bin/env bash
# ViT head ablation (frozen DINOv2 ViT-S/B/L): CLS only and GAP-pooled patch tokens only, next to the default
# CLS+GAP of frozen_grid.sh, each as baseline / early / late masking. The paper's most robust model is GAP + early.
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=4 bash scripts/paper/vit_head_ablation.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
for size in small base large; do
  for head in cls gap; do
    name=vit_${size}_${head}
    # shellcheck disable=SC2206  # the head flag is one word or none
    flags=(${HEAD_FLAGS[$head]})
    classifier early_masking_and_baseline/train.py frozen vit_$size frozen_${name}_baseline "${flags[@]}"
    classifier early_masking_and_baseline/train.py frozen vit_$size frozen_${name}_early "${flags[@]}" --masking early
    # Masking after the last block cannot reach the CLS token: the CLS head is late-masked after the second-last.
    if [[ $head == cls ]]; then
      classifier late_masking/train.py frozen vit_$size frozen_${name}_late_second_last "${flags[@]}" \
        --fm_second_last_block
    else
      classifier late_masking/train.py frozen vit_$size frozen_${name}_late "${flags[@]}"
    fi
  done
done
