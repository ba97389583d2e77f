#!/usr/bin/env bash
# More seeds for the demo's claims whose single-seed verdict sits near the line (docs/claims.md, "Seeds where the
# verdict depends on them"): the demo's runs of those cells again with SEEDS (default 1 2; seed 0 is the demo's run),
# the same data, weights and recipe. Their baselines' extra seeds are the seed study's (scripts/study/seeds.sh, run
# here when missing). Then the claims of the demo's runs plus these seeds: OUT/claims.md.
# Usage: bash scripts/study/claim_seeds.sh [--force]
#   SEEDS="1 2"  OUT=runs/claim_seeds  DEMO=runs/demo (its classifiers/ are seed 0)  SEED_STUDY=runs/seeds
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
VENV="${VENV:-$REPO_ROOT/.venv}"
DATA="${DATA:-data/synthetic}"
OUT="${OUT:-runs/claim_seeds}"
DEMO="${DEMO:-runs/demo}"
SEED_STUDY="${SEED_STUDY:-runs/seeds}"
SEEDS="${SEEDS:-1 2}"
source scripts/lib/stage.sh
source scripts/lib/demo_recipe.sh
parse_pipeline_args 7 "$@"
for s in $SEEDS; do
  [[ "$s" =~ ^[1-9][0-9]*$ ]] || { echo "SEEDS: '$s' is not a seed other than the demo's 0" >&2; exit 2; }
done
[[ -d "$DEMO/classifiers" ]] || { echo "no $DEMO/classifiers: run bash scripts/demo.sh first" >&2; exit 2; }
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
bash scripts/setup_env.sh
PY="$VENV/bin/python"
for seed in $SEEDS; do  # the baselines' seeds: the seed study's runs (made there when missing)
  for base in convnext_frozen_baseline vit_finetune_baseline; do
    if [[ ! -f "$SEED_STUDY/runs/${base}_s$seed/results.json" ]]; then
      SEEDS="$SEEDS" OUT="$SEED_STUDY" bash scripts/study/seeds.sh
      break 2
    fi
  done
done
CUB="$DATA/CUB_200_2011"
LOG_DIR="$OUT/logs"
mkdir -p "$LOG_DIR"
PIPELINE_START=$SECONDS
stage pretrain "$LOG_DIR/.pretrain-never-skipped" "$PY" scripts/pretrain_synthetic.py  # cached: seconds
weights() { "$PY" scripts/pretrain_synthetic.py --print_path "$1" 2>>"$LOG_DIR/pretrain.log"; }
CONVNEXT=(--model_arch convnext_atto --image_size 64 --pretrained_path "$(weights convnext_atto)")
VIT=(--model_arch vit_small_patch14_dinov2 --image_size 56 --pretrained_path "$(weights vit_small_patch14_dinov2)")
EARLY=("$PY" early_masking_and_baseline/train.py)
LATE=("$PY" late_masking/train.py --mask_source precomputed)
[[ "$FORCE" == 1 ]] && rm -rf "$OUT/runs"
RUNS=("$DEMO"/classifiers/{convnext,vit}_*)  # seed 0
for seed in $SEEDS; do
  COMMON=(--data_path "$CUB" --batch_size 32 --num_workers 0 --augmentations_to_use cub_original --seed "$seed")
  run() {  # NAME COMMAND...: one demo run with this seed
    local dir="$OUT/runs/$1_s$seed"; shift
    RUNS+=("$dir")
    stage "$(basename "$dir")" "$dir/results.json" "$@" --snapshot_dir "$dir"
  }
  run convnext_frozen_early "${EARLY[@]}" --masking early "${COMMON[@]}" "${CONVNEXT[@]}" "${FROZEN[@]}"
  run vit_frozen_probes "${LATE[@]}" "${COMMON[@]}" "${VIT[@]}" "${FROZEN[@]}" \
    --probe_heads mean,cls,cls_mean,late:mean,late:cls_mean
  run vit_finetune_late "${LATE[@]}" "${COMMON[@]}" "${VIT[@]}" --patch_tokens_only --epochs "$VIT_EPOCHS" \
    --eval_every "$VIT_EPOCHS" "${FINETUNE[@]}"
  # The baselines of those cells (the ViT frozen baseline heads are in the probe run above).
  RUNS+=("$SEED_STUDY/runs/convnext_frozen_baseline_s$seed" "$SEED_STUDY/runs/vit_finetune_baseline_s$seed")
done
"$PY" scripts/collect_results.py "${RUNS[@]}" --out "$OUT" \
  --note "demo runs (seed 0) and seeds $SEEDS of the cells near the line" > "$LOG_DIR/collect.log"
grep -h '^Verdicts\|^## ' "$OUT/claims.md"
echo "Claim seeds finished in $((SECONDS - PIPELINE_START)) s."
