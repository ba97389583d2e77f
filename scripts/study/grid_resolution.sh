#!/usr/bin/env bash
# Late masking against the resolution of the masked feature grid (docs/grid_resolution.md). For each grid size G
# (the masked map is GxG): the synthetic benchmark generated at 32G px (twice the ConvNeXt input, as the demo's 128 px
# for its 4x4 grid), oracle masks (CUB's segmentations: the grid is the only thing that changes, not a segmenter's
# quality), both demo backbones pretrained at the grid's input size (ConvNeXt-atto at 16G px, masked after its
# second-last stage, GxG; ViT-S/14 at 14G px, GxG patch tokens), and the demo's two regimes with baseline, early and
# late masking, everything else held equal. At the finest grid also: area-threshold mask downsampling and, for the
# ViT, the mean over foreground tokens only. Then the table, figure and boundary-token statistics
# (scripts/study/grid_resolution.py) with the trends across grids as claims (OUT/claims.md), and each grid's claims
# (OUT/gridG/tables/claims.md, scripts/collect_results.py).
# Usage: bash scripts/study/grid_resolution.sh [--force]
#   GRIDS="4 6 8"  grid sizes (16 is the paper's ConvNeXt grid: about 16x the compute of 4)
#   SEEDS="0"  training seeds (each seed trains every run again; pretraining stays seed 0)
#   OUT=runs/grid_resolution  where every stage writes;  DATA_ROOT=data/grid_resolution  the benchmarks
#   FROZEN_EPOCHS=10 / EPOCHS=12 / VIT_EPOCHS=6  as the demo's
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
VENV="${VENV:-$REPO_ROOT/.venv}"
GRIDS="${GRIDS:-4 6 8}"
SEEDS="${SEEDS:-0}"
OUT="${OUT:-runs/grid_resolution}"
DATA_ROOT="${DATA_ROOT:-data/grid_resolution}"
source scripts/lib/stage.sh
source scripts/lib/demo_recipe.sh  # FROZEN, FINETUNE and the epochs
parse_pipeline_args 15 "$@"
for g in $GRIDS; do
  [[ "$g" =~ ^[0-9]+$ && "$g" -ge 2 ]] || { echo "GRIDS: '$g' is not a grid size (an integer >= 2)" >&2; exit 2; }
done
check_seeds $SEEDS
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # as the demo: spinning OpenMP threads slow CPU training

bash scripts/setup_env.sh
PY="$VENV/bin/python"
LOG_DIR="$OUT/logs"
mkdir -p "$LOG_DIR"
PIPELINE_START=$SECONDS
GEN_KEY="$("$PY" -c 'from bgmask.pretraining.cache import corpus_source_digest; print(corpus_source_digest()[:12])')"
FINEST="$(printf '%s\n' $GRIDS | sort -n | tail -1)"
RUNS=()

# The recipes are the demo's (scripts/lib/demo_recipe.sh); the images and masks of each grid, the backbone's input
# size and its weights differ.
EARLY=("$PY" early_masking_and_baseline/train.py)
LATE=("$PY" late_masking/train.py --mask_source precomputed)

for g in $GRIDS; do
  DATA="$DATA_ROOT/grid$g"
  CUB="$DATA/CUB_200_2011"
  CLS_DIR="$OUT/grid$g"
  SAVED_FORCE=$FORCE
  if [[ -e "$CUB/images.txt" && ! -e "$DATA/.generator-$GEN_KEY" && "$FORCE" == 0 ]]; then
    echo "==> $DATA was made by another version of the synthetic generator: redoing grid $g (as --force)"
    FORCE=1
  fi
  [[ "$FORCE" == 1 ]] && rm -rf "$CLS_DIR"
  stage "grid${g}_data" "$DATA/.generator-$GEN_KEY" \
    bash -c '"$1" scripts/make_synthetic_cub.py --out "$2" --image_size "$3" --overwrite --no_progress \
             && rm -f "$2"/.generator-* && touch "$4"' _ "$PY" "$DATA" "$((32 * g))" "$DATA/.generator-$GEN_KEY"
  stage "grid${g}_masks" "$CUB/waterbird_complete95_forest2water2_masked/metadata.csv" \
    "$PY" mmsegmentation/tools/generate_masks.py --cub_root "$CUB" --gt --num_workers 0 --no_progress --overwrite

  CN_SIZE=$((16 * g)); VIT_SIZE=$((14 * g))
  PRETRAIN=("$PY" scripts/pretrain_synthetic.py --corpus_image_size "$CN_SIZE")
  stage "grid${g}_pretrain" "$LOG_DIR/.pretrain-never-skipped" \
    bash -c '"${@:3}" --arch convnext_atto --image_size "$1" && "${@:3}" --arch vit_small_patch14_dinov2 \
             --image_size "$2"' _ "$CN_SIZE" "$VIT_SIZE" "${PRETRAIN[@]}"
  CN_WEIGHTS="$("${PRETRAIN[@]}" --image_size "$CN_SIZE" --print_path convnext_atto 2>>"$LOG_DIR/grid${g}_pretrain.log")"
  VIT_WEIGHTS="$("${PRETRAIN[@]}" --image_size "$VIT_SIZE" --print_path vit_small_patch14_dinov2 \
    2>>"$LOG_DIR/grid${g}_pretrain.log")"
  # Late masking of ConvNeXt masks after the second-last stage (--fm_second_last_block, as in the demo); the baseline
  # and early runs take the plain arguments.
  CN_PLAIN=(--model_arch convnext_atto --image_size "$CN_SIZE" --pretrained_path "$CN_WEIGHTS")
  CONVNEXT=("${CN_PLAIN[@]}" --fm_second_last_block)
  VIT=(--model_arch vit_small_patch14_dinov2 --image_size "$VIT_SIZE" --pretrained_path "$VIT_WEIGHTS")

  for seed in $SEEDS; do
    COMMON=(--data_path "$CUB" --batch_size 32 --num_workers 0 --augmentations_to_use cub_original --seed "$seed")
    run() {  # NAME SCRIPT... : one classifier run of this grid and seed
      local dir="$CLS_DIR/$1_s$seed"; shift
      RUNS+=("$dir")
      stage "grid${g}_$(basename "$dir")" "$dir/results.json" "$@" --snapshot_dir "$dir"
    }
    run convnext_frozen_baseline "${EARLY[@]}" "${COMMON[@]}" "${CN_PLAIN[@]}" "${FROZEN[@]}"
    run convnext_frozen_early "${EARLY[@]}" --masking early "${COMMON[@]}" "${CN_PLAIN[@]}" "${FROZEN[@]}"
    run convnext_frozen_late "${LATE[@]}" "${COMMON[@]}" "${CONVNEXT[@]}" "${FROZEN[@]}"
    run vit_frozen_probes "${LATE[@]}" "${COMMON[@]}" "${VIT[@]}" "${FROZEN[@]}" \
      --probe_heads mean,cls_mean,late:mean,late:cls_mean,late:masked_mean
    run vit_frozen_early "${EARLY[@]}" --masking early "${COMMON[@]}" "${VIT[@]}" "${FROZEN[@]}" \
      --probe_heads mean,cls_mean
    CN_FT=(--epochs "$EPOCHS" --eval_every "$EPOCHS" "${FINETUNE[@]}")
    VIT_FT=(--patch_tokens_only --epochs "$VIT_EPOCHS" --eval_every "$VIT_EPOCHS" "${FINETUNE[@]}")
    run convnext_finetune_baseline "${EARLY[@]}" "${COMMON[@]}" "${CN_PLAIN[@]}" "${CN_FT[@]}"
    run convnext_finetune_early "${EARLY[@]}" --masking early "${COMMON[@]}" "${CN_PLAIN[@]}" "${CN_FT[@]}"
    run convnext_finetune_late "${LATE[@]}" "${COMMON[@]}" "${CONVNEXT[@]}" "${CN_FT[@]}"
    run vit_finetune_baseline "${EARLY[@]}" "${COMMON[@]}" "${VIT[@]}" "${VIT_FT[@]}"
    run vit_finetune_early "${EARLY[@]}" --masking early "${COMMON[@]}" "${VIT[@]}" "${VIT_FT[@]}"
    run vit_finetune_late "${LATE[@]}" "${COMMON[@]}" "${VIT[@]}" "${VIT_FT[@]}"
    if [[ "$g" == "$FINEST" ]]; then  # the two masking details that differ where a feature holds bird and background
      AREA=(--mask_downsample area --mask_area_threshold 0.5)
      run convnext_frozen_late_area "${LATE[@]}" "${COMMON[@]}" "${CONVNEXT[@]}" "${FROZEN[@]}" "${AREA[@]}"
      run vit_frozen_probes_area "${LATE[@]}" "${COMMON[@]}" "${VIT[@]}" "${FROZEN[@]}" "${AREA[@]}" \
        --probe_heads late:mean,late:masked_mean
    fi
  done
  FORCE=$SAVED_FORCE
done

echo "==> Study results"
"$PY" scripts/study/grid_resolution.py --study_dir "$OUT" --data_root "$DATA_ROOT" --grids $GRIDS --out "$OUT"
# The trends across grids as claims (T8: late masking's gain grows, T9: its own top-1 rises): OUT/claims.md
[[ -f "$OUT/claims.md" ]] && echo "across grids: $(grep -h '^Verdicts' "$OUT/claims.md" | paste -sd ' ' -)"
# Each grid's claims (the paper's three per row, with the verdict rule of bgmask/reporting/claims.py): OUT/gridG/tables/claims.md
for g in $GRIDS; do
  "$PY" scripts/collect_results.py "$OUT/grid$g"/*_s* --out "$OUT/grid$g/tables" --note "grid ${g}x${g}" > /dev/null
  echo "grid ${g}x${g}: $(grep -h '^Verdicts' "$OUT/grid$g/tables/claims.md" | paste -sd ' ' -)"
done
echo "Study finished in $((SECONDS - PIPELINE_START)) s."
