#!/usr/bin/env bash
# The main job: the whole pipeline on the synthetic CUB + Waterbirds benchmark, on CPU.
#   data -> binary-seg data -> tiny segmenter -> masks -> {ConvNeXt, ViT} x {baseline, early, late} -> table + figures
# Usage: bash scripts/demo.sh [--force]
#   --force  redo every stage (finished stages are otherwise reused)
#   DATA=data/synthetic  where the benchmark is generated;  OUT=runs/demo  where every stage writes
#   EPOCHS=30 / VIT_EPOCHS=20  classifier epochs (ConvNeXt / ViT; the ViT is ~4x slower per epoch on CPU)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
VENV="${VENV:-$REPO_ROOT/.venv}"
DATA="${DATA:-data/synthetic}"
OUT="${OUT:-runs/demo}"
EPOCHS="${EPOCHS:-30}"
VIT_EPOCHS="${VIT_EPOCHS:-20}"
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done
# OpenMP threads that spin while data-loader workers need the same cores slow CPU training down tenfold.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

bash scripts/setup_env.sh
PY="$VENV/bin/python"
CUB="$DATA/CUB_200_2011"
SEG_DATA="$DATA/cub_binary_segmentation"
SEG_CONFIG=mmsegmentation/configs/segformer_mit-b0_tiny_synthetic-128x128.py
SEG_DIR="$OUT/segmenter"
CLS_DIR="$OUT/classifiers"
mkdir -p "$OUT/logs"
DEMO_START=$SECONDS

# stage NAME DONE_MARKER COMMAND...: skip when DONE_MARKER exists (unless --force); log to $OUT/logs/NAME.log.
stage() {
  local name="$1" marker="$2"; shift 2
  if [[ -e "$marker" && "$FORCE" == 0 ]]; then
    echo "==> [$name] done before ($marker); skipping (--force redoes it)"
    return 0
  fi
  echo "==> [$name] $*"
  local start=$SECONDS
  if ! "$@" > >(tee "$OUT/logs/$name.log") 2>&1; then
    echo "ERROR: stage '$name' failed; its log is $OUT/logs/$name.log" >&2
    exit 1
  fi
  echo "    [$name] finished in $((SECONDS - start)) s (demo total $((SECONDS - DEMO_START)) s)"
}

FORCE_FLAG=()
[[ "$FORCE" == 1 ]] && FORCE_FLAG=(--overwrite)

stage data "$CUB/images.txt" \
  "$PY" scripts/make_synthetic_cub.py --out "$DATA" --overwrite
echo "==> Dataset summary"
"$PY" -m bgmask.data.check "$CUB"

stage seg_data "$SEG_DATA/annotations/test" \
  "$PY" mmsegmentation/tools/prepare_cub_binary_seg.py --cub_root "$CUB" --out "$SEG_DATA" --overwrite --no_progress
stage seg_train "$SEG_DIR/last_checkpoint" \
  "$PY" mmsegmentation/tools/train.py "$SEG_CONFIG" --work-dir "$SEG_DIR" --data-root "$SEG_DATA"
SEG_CKPT="$(cat "$SEG_DIR/last_checkpoint")"
stage seg_test "$SEG_DIR/test_metrics.json" \
  "$PY" mmsegmentation/tools/test.py "$SEG_CONFIG" "$SEG_CKPT" --work-dir "$SEG_DIR" --data-root "$SEG_DATA"
stage masks "$CUB/waterbird_complete95_forest2water2_masked/metadata.csv" \
  "$PY" mmsegmentation/tools/generate_masks.py --cub_root "$CUB" --config "$SEG_CONFIG" --checkpoint "$SEG_CKPT" \
  --num_workers 0 --no_progress "${FORCE_FLAG[@]}"
stage gallery "$OUT/mask_gallery.png" \
  "$PY" scripts/visualize_masks.py --cub_root "$CUB" --out "$OUT/mask_gallery.png"

# Small models from scratch (no pretrained weights offline): ConvNeXt-atto at 64 px and a DINOv2-style ViT-S/14 at
# 56 px with the GAP-pooled patch-token head. Same recipe for every strategy; late masking uses the predicted masks.
COMMON=(--data_path "$CUB" --batch_size 32 --num_workers 0 --weight_decay 0.05
        --scheduler_type cosine_with_warmup --scheduler_warmup_epochs 2 --augmentations_to_use cub_original
        --eval_every 5 --seed 0)
CONVNEXT=(--model_arch convnext_atto --image_size 64 --lr 4e-3 --epochs "$EPOCHS")
VIT=(--model_arch vit_small_patch14_dinov2 --image_size 56 --patch_tokens_only --lr 1e-3 --epochs "$VIT_EPOCHS")
for model in convnext vit; do
  if [[ "$model" == convnext ]]; then ARCH=("${CONVNEXT[@]}"); else ARCH=("${VIT[@]}"); fi
  for strategy in baseline early late; do
    run="$CLS_DIR/${model}_${strategy}"
    [[ "$FORCE" == 1 ]] && rm -rf "$run"
    case "$strategy" in
      baseline) cmd=("$PY" early_masking_and_baseline/train.py) ;;
      early) cmd=("$PY" early_masking_and_baseline/train.py --masking early) ;;
      late) cmd=("$PY" late_masking/train.py --mask_source precomputed)
            # At 64 px ConvNeXt's last feature map is 2x2: too coarse to separate bird from background, so the
            # ConvNeXt masks after the second-last stage (4x4). The ViT's 4x4 token grid is masked after the last block.
            [[ "$model" == convnext ]] && cmd+=(--fm_second_last_block) ;;
    esac
    stage "${model}_${strategy}" "$run/results.json" "${cmd[@]}" "${COMMON[@]}" "${ARCH[@]}" --snapshot_dir "$run"
  done
done

echo "==> Results"
NOTE="Synthetic benchmark (scripts/make_synthetic_cub.py defaults), measured by scripts/demo.sh on $(date +%F), \
$(nproc) CPU cores, from scratch ($EPOCHS epochs ConvNeXt, $VIT_EPOCHS epochs ViT); masks from the tiny segmenter ($(basename "$SEG_CONFIG" .py))."
"$PY" scripts/collect_results.py "$CLS_DIR"/* --out "$OUT" --note "$NOTE"
echo "Figures: $OUT/results.png (accuracy), $OUT/diagnostics.png (background reliance), \
$OUT/attribution_gallery.png (attributions), $OUT/mask_gallery.png (masks)."
echo "Demo finished in $((SECONDS - DEMO_START)) s."
