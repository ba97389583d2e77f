#!/usr/bin/env bash
# The grid study's control: the grid varied alone. ConvNeXt-atto at the demo's 64 px, its data and pretrained
# weights, ground-truth masks, the demo's recipe; late masking before the last 0, 1 or 2 stages (2x2, 4x4, 8x8 grids:
# --fm_blocks_after_mask), beside the baseline, frozen and fine-tuned, SEEDS. Then OUT/claims.md: late masking
# against the baseline per grid, and the finer grid against the coarser (scripts/study/grid_control.py).
# Usage: bash scripts/study/grid_control.sh [--force]
#   SEEDS="0 1 2"  OUT=runs/grid_control  DATA=data/synthetic (the demo's benchmark)
#   Baselines are the seed study's runs (runs/seeds/runs, the same commands): made here when missing.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
VENV="${VENV:-$REPO_ROOT/.venv}"
DATA="${DATA:-data/synthetic}"
OUT="${OUT:-runs/grid_control}"
BASELINES="${BASELINES:-runs/seeds/runs}"
SEEDS="${SEEDS:-0 1 2}"
source scripts/lib/stage.sh
source scripts/lib/demo_recipe.sh
parse_pipeline_args 8 "$@"
check_seeds $SEEDS
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
bash scripts/setup_env.sh
PY="$VENV/bin/python"
CUB="$DATA/CUB_200_2011"
LOG_DIR="$OUT/logs"
mkdir -p "$LOG_DIR"
PIPELINE_START=$SECONDS
stage data "$CUB/images.txt" "$PY" scripts/make_synthetic_cub.py --out "$DATA" --no_progress
stage pretrain "$LOG_DIR/.pretrain-never-skipped" "$PY" scripts/pretrain_synthetic.py --arch convnext_atto
CONVNEXT=(--model_arch convnext_atto --image_size 64
          --pretrained_path "$("$PY" scripts/pretrain_synthetic.py --print_path convnext_atto 2>>"$LOG_DIR/pretrain.log")")
[[ "$FORCE" == 1 ]] && rm -rf "$OUT/runs"
RUNS=()
for seed in $SEEDS; do
  COMMON=(--data_path "$CUB" --batch_size 32 --num_workers 0 --augmentations_to_use cub_original --seed "$seed"
          "${CONVNEXT[@]}" --diagnostics none)
  FT=(--epochs "$EPOCHS" --eval_every "$EPOCHS" "${FINETUNE[@]}")
  for regime in frozen finetune; do
    [[ "$regime" == frozen ]] && RECIPE=("${FROZEN[@]}") || RECIPE=("${FT[@]}")
    base="$BASELINES/convnext_${regime}_baseline_s$seed"
    RUNS+=("$base")
    stage "$(basename "$base")" "$base/results.json" "$PY" early_masking_and_baseline/train.py "${COMMON[@]}" \
      "${RECIPE[@]}" --snapshot_dir "$base"
    for after in 0 1 2; do
      dir="$OUT/runs/convnext_${regime}_late_after${after}_s$seed"
      RUNS+=("$dir")
      stage "$(basename "$dir")" "$dir/results.json" "$PY" late_masking/train.py --mask_source gt \
        --fm_blocks_after_mask "$after" "${COMMON[@]}" "${RECIPE[@]}" --snapshot_dir "$dir"
    done
  done
done
"$PY" scripts/study/grid_control.py "${RUNS[@]}" --out "$OUT"
echo "Grid control finished in $((SECONDS - PIPELINE_START)) s."
