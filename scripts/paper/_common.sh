# Shared by the scripts in scripts/paper/: settings, launcher and --dry-run. Source it, do not run it.
#   DATA_ROOT  folder holding CUB_200_2011/ (default: data)
#   OUT        where runs are written (default: runs/paper)
#   NPROC      processes (GPUs) per node (default: 4)
#   NNODES     nodes (default: 1); multi-node also needs MASTER_ADDR (and MASTER_PORT) or use scripts/slurm/
#   --dry-run  print each command instead of running it
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_ROOT="${DATA_ROOT:-data}"
OUT="${OUT:-runs/paper}"
NPROC="${NPROC:-4}"
NNODES="${NNODES:-1}"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
CUB="$DATA_ROOT/CUB_200_2011"
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $arg (only --dry-run)" >&2; exit 2 ;;
  esac
done

# The grace period torchrun gives its workers after SIGTERM (preemption): derived from the SLURM signal lead.
source "$REPO_ROOT/scripts/slurm/_preemptible.sh"
if [[ "$NNODES" -gt 1 ]]; then
  LAUNCH=(torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC" --rdzv_backend c10d
          --rdzv_endpoint "${MASTER_ADDR:?set MASTER_ADDR for multi-node runs}:${MASTER_PORT:-29500}"
          --shutdown_timeout "$BGMASK_SHUTDOWN_TIMEOUT_S")
else
  LAUNCH=(torchrun --standalone --nnodes 1 --nproc_per_node "$NPROC" --shutdown_timeout "$BGMASK_SHUTDOWN_TIMEOUT_S")
fi

# run CMD...: print it (dry run) or execute it; a finished run (results.json present) is skipped.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"; printf '\n'
    return 0
  fi
  local snapshot=""
  local prev=""
  for a in "$@"; do [[ "$prev" == "--snapshot_dir" ]] && snapshot="$a"; prev="$a"; done
  # results.json with "pending" diagnostics: the metrics are written, the run was stopped before its diagnostics.
  if [[ -n "$snapshot" && -f "$snapshot/results.json" ]] && ! grep -qs '"pending"' "$snapshot/results.json"; then
    echo "skip (finished): $snapshot"
    return 0
  fi
  echo "+ $*"
  "$@"
}

# classifier TRAINER REGIME MODEL NAME [EXTRA FLAGS...]: one classifier run on $NPROC x $NNODES processes, set by
# configs/classifier/REGIME.yaml (frozen | finetune) and configs/classifier/models/MODEL.yaml.
classifier() {
  local trainer="$1" regime="$2" model="$3" name="$4"; shift 4
  run "${LAUNCH[@]}" "$REPO_ROOT/$trainer" --config "$REPO_ROOT/configs/classifier/$regime.yaml" \
    --config "$REPO_ROOT/configs/classifier/models/$model.yaml" --data_path "$CUB" --snapshot_dir "$OUT/$name" "$@"
}
