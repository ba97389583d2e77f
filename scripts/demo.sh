#!/usr/bin/env bash
# The main job: the full pipeline on the synthetic CUB + Waterbirds benchmark.
# Usage: bash scripts/demo.sh [--force]
#   DATA=data/synthetic  where the benchmark is generated
#   OUT=runs/demo        where every stage writes
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
VENV="${VENV:-$REPO_ROOT/.venv}"
DATA="${DATA:-data/synthetic}"
OUT="${OUT:-runs/demo}"
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

bash scripts/setup_env.sh
PY="$VENV/bin/python"
mkdir -p "$OUT/logs"

# run_stage NAME DONE_MARKER COMMAND...: skip when DONE_MARKER exists (unless --force), log to $OUT/logs/NAME.log.
run_stage() {
  local name="$1" marker="$2"; shift 2
  if [[ -e "$marker" && "$FORCE" == 0 ]]; then
    echo "==> [$name] already done ($marker); skipping (use --force to redo)"
    return 0
  fi
  echo "==> [$name] $*"
  local start=$SECONDS
  if ! "$@" 2>&1 | tee "$OUT/logs/$name.log"; then
    echo "ERROR: stage '$name' failed; see $OUT/logs/$name.log" >&2
    exit 1
  fi
  echo "    [$name] finished in $((SECONDS - start)) s"
}

run_stage data "$DATA/CUB_200_2011/images.txt" \
  "$PY" scripts/make_synthetic_cub.py --out "$DATA" --overwrite
CUB="$DATA/CUB_200_2011"

echo "==> Dataset summary"
"$PY" -m bgmask.data.check "$CUB"
