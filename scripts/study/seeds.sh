#!/usr/bin/env bash
# The seed-to-seed spread of the demo's baselines: each regime's baseline run with SEEDS (default 0-4), everything
# else as in scripts/demo.sh (its data, pretrained weights and recipe). Writes runs/seeds/seed_spread.{json,md}: per
# regime and evaluation set the mean and standard deviation of top-1 across seeds, which the claims' verdict rule
# uses for single-seed differences (docs/claims.md). Runs the demo's data and pretraining stages first if needed.
# Usage: bash scripts/study/seeds.sh [--force]
#   SEEDS="0 1 2 3 4"  OUT=runs/seeds  DATA=data/synthetic (the demo's benchmark)
#   FROZEN_EPOCHS=10 / EPOCHS=12 / VIT_EPOCHS=6  as the demo's
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
VENV="${VENV:-$REPO_ROOT/.venv}"
DATA="${DATA:-data/synthetic}"
OUT="${OUT:-runs/seeds}"
SEEDS="${SEEDS:-0 1 2 3 4}"
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
stage pretrain "$LOG_DIR/.pretrain-never-skipped" "$PY" scripts/pretrain_synthetic.py
CONVNEXT=(--model_arch convnext_atto --image_size 64
          --pretrained_path "$("$PY" scripts/pretrain_synthetic.py --print_path convnext_atto 2>>"$LOG_DIR/pretrain.log")")
VIT=(--model_arch vit_small_patch14_dinov2 --image_size 56
     --pretrained_path "$("$PY" scripts/pretrain_synthetic.py --print_path vit_small_patch14_dinov2 \
                          2>>"$LOG_DIR/pretrain.log")")
EARLY=("$PY" early_masking_and_baseline/train.py)
[[ "$FORCE" == 1 ]] && rm -rf "$OUT/runs"
RUNS=()
for seed in $SEEDS; do
  COMMON=(--data_path "$CUB" --batch_size 32 --num_workers 0 --augmentations_to_use cub_original --seed "$seed")
  run() {  # NAME ARGS...: one baseline run of this seed
    local dir="$OUT/runs/$1_s$seed"; shift
    RUNS+=("$dir")
    stage "$(basename "$dir")" "$dir/results.json" "${EARLY[@]}" "${COMMON[@]}" "$@" --snapshot_dir "$dir"
  }
  run convnext_frozen_baseline "${CONVNEXT[@]}" "${FROZEN[@]}" --diagnostics none
  run convnext_finetune_baseline "${CONVNEXT[@]}" --epochs "$EPOCHS" --eval_every "$EPOCHS" "${FINETUNE[@]}" \
    --diagnostics none
  run vit_frozen_baseline "${VIT[@]}" "${FROZEN[@]}" --probe_heads mean,cls,cls_mean --diagnostics none
  run vit_finetune_baseline "${VIT[@]}" --patch_tokens_only --epochs "$VIT_EPOCHS" --eval_every "$VIT_EPOCHS" \
    "${FINETUNE[@]}" --diagnostics none
done
"$PY" scripts/study/seed_spread.py "${RUNS[@]}" --out "$OUT"
echo "Seed study finished in $((SECONDS - PIPELINE_START)) s."
