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
