#!/usr/bin/env bash
# Segmenter block: prepare the binary segmentation data, train the four segmenters (SegFormer MiT-B0/B1,
# Mask2Former R50/Swin-T; 160k iterations, batch 16 = 8 GPUs x 2), test each on CUB test and Waterbirds test, and
# write masks + masked images with Mask2Former Swin-T (the segmenter behind every classifier result).
# Usage: DATA_ROOT=data OUT=runs/paper NPROC=8 bash scripts/paper/segmenters.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
SEG_DATA="$DATA_ROOT/cub_binary_segmentation"
run "$PYTHON" "$REPO_ROOT/mmsegmentation/tools/prepare_cub_binary_seg.py" --cub_root "$CUB" --out "$SEG_DATA"
for cfg in segformer_mit-b0_8xb2-160k_cub-512x512 segformer_mit-b1_8xb2-160k_cub-512x512 \
           mask2former_r50_8xb2-160k_cub-512x512 mask2former_swin-t_8xb2-160k_cub-512x512; do
  run "${LAUNCH[@]}" "$REPO_ROOT/mmsegmentation/tools/train.py" "$REPO_ROOT/mmsegmentation/configs/$cfg.py" \
    --work-dir "$OUT/segmenters/$cfg" --launcher pytorch --cfg-options "train_dataloader.dataset.data_root=$SEG_DATA" \
    "val_dataloader.dataset.data_root=$SEG_DATA" "test_dataloader.dataset.data_root=$SEG_DATA"
  run "$PYTHON" "$REPO_ROOT/mmsegmentation/tools/test.py" "$REPO_ROOT/mmsegmentation/configs/$cfg.py" \
    "$OUT/segmenters/$cfg/iter_160000.pth" --work-dir "$OUT/segmenters/$cfg/test" \
    --cfg-options "test_dataloader.dataset.data_root=$SEG_DATA"
done
best=mask2former_swin-t_8xb2-160k_cub-512x512
run "${LAUNCH[@]}" "$REPO_ROOT/mmsegmentation/tools/generate_masks.py" --cub_root "$CUB" \
  --config "$REPO_ROOT/mmsegmentation/configs/$best.py" --checkpoint "$OUT/segmenters/$best/iter_160000.pth"
