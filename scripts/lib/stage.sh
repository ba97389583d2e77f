# Shared by scripts/demo.sh and scripts/study/*.sh (sourced): run a pipeline stage once, log it, time it.
# The caller sets LOG_DIR (logs and timings.tsv), FORCE (1 redoes finished stages) and PIPELINE_START (=$SECONDS).

# stage NAME DONE_MARKER COMMAND...: skip when DONE_MARKER exists (unless FORCE=1); log to $LOG_DIR/NAME.log and append
# "NAME<TAB>seconds" to $LOG_DIR/timings.tsv.
stage() {
  local name="$1" marker="$2"; shift 2
  # A results.json whose diagnostics are still "pending" is a run interrupted after its metrics: not done.
  if [[ -e "$marker" && "$FORCE" == 0 ]] && ! grep -qs '"pending"' "$marker"; then
    echo "==> [$name] done before ($marker); skipping (--force redoes it)"
    return 0
  fi
  echo "==> [$name] $*"
  local start=$SECONDS
  if ! "$@" > >(tee "$LOG_DIR/$name.log") 2>&1; then
    echo "ERROR: stage '$name' failed; its log is $LOG_DIR/$name.log" >&2
    exit 1
  fi
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$LOG_DIR/timings.tsv"
  echo "    [$name] finished in $((SECONDS - start)) s (total $((SECONDS - PIPELINE_START)) s)"
}

# parse_pipeline_args LAST_HELP_LINE "$@": --force sets FORCE=1; -h/--help prints the calling script's header comment
# (lines 2..LAST_HELP_LINE) and exits; anything else is an error.
parse_pipeline_args() {
  local help_end="$1" arg; shift
  FORCE=0
  for arg in "$@"; do
    case "$arg" in
      --force) FORCE=1 ;;
      -h|--help) sed -n "2,${help_end}p" "$0"; exit 0 ;;
      *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
  done
}

# check_seeds SEEDS...: each a non-negative integer, or exit 2 naming the first that is not (before any work).
check_seeds() {
  local s
  for s in "$@"; do
    [[ "$s" =~ ^[0-9]+$ ]] || { echo "SEEDS: '$s' is not a seed (a non-negative integer)" >&2; exit 2; }
  done
}
