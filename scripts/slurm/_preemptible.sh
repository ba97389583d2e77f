# Preemption-safe launching for the sbatch templates in this folder. Source it, then: preemptible CMD ARGS...
#
# The templates ask SLURM for a warning signal before the time limit: `#SBATCH --signal=B:USR1@180` sends SIGUSR1
# to this batch shell 180 s ahead (B: = the batch shell only, so the launcher is not killed by a signal it does not
# handle). The trap below forwards SIGTERM to the running step; torchrun passes SIGTERM to its workers, which save
# last.pt after the current step (bgmask.infra.preemption) and exit with code 75. The job is then requeued
# (`#SBATCH --requeue` must be set) and the next allocation resumes from last.pt automatically.
REQUEUE_EXIT_CODE=75
# Seconds between SLURM's warning signal and the kill: the templates' `#SBATCH --signal=B:USR1@180` (keep equal).
BGMASK_SIGNAL_LEAD_S="${BGMASK_SIGNAL_LEAD_S:-180}"
# torchrun SIGKILLs its workers 30 s after forwarding SIGTERM unless told otherwise; the step in flight and the write
# of last.pt must fit in that grace period, so give them the signal's lead minus 20 s for the launcher and requeue.
BGMASK_SHUTDOWN_TIMEOUT_S=$(( BGMASK_SIGNAL_LEAD_S - 20 ))
_bgmask_child=""
_bgmask_signalled=0

# Loader workers per GPU process, from the allocation: the task's CPUs shared by its GPU processes, one core left to
# each trainer (32 CPUs for 4 GPUs: 7 workers + the trainer per GPU). BGMASK_WORKERS overrides it.
workers_per_gpu() {  # GPUS
  local n=$(( ${SLURM_CPUS_PER_TASK:-32} / $1 - 1 ))
  (( n >= 1 )) || n=1
  echo "${BGMASK_WORKERS:-$n}"
}

_bgmask_forward() {
  _bgmask_signalled=1
  echo "[$(date +%T)] preemption signal received: asking the training step to save and stop"
  [[ -n "$_bgmask_child" ]] && kill -TERM "$_bgmask_child" 2>/dev/null || true
}

preemptible() {
  if [[ -n "${BGMASK_DRY_RUN:-}" ]]; then  # print the command instead of running it (tests, a check before sbatch)
    printf '%q ' "$@"; echo
    return 0
  fi
  trap _bgmask_forward USR1 TERM
  "$@" &
  _bgmask_child=$!
  local rc=0
  # `wait` returns early when a trapped signal arrives; keep waiting for the step to finish saving.
  while true; do
    wait "$_bgmask_child" && rc=0 || rc=$?
    kill -0 "$_bgmask_child" 2>/dev/null || break
  done
  trap - USR1 TERM
  if [[ "$_bgmask_signalled" == 1 || "$rc" == "$REQUEUE_EXIT_CODE" ]]; then
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then
      echo "[$(date +%T)] requeueing job $SLURM_JOB_ID; it will resume from last.pt"
      scontrol requeue "$SLURM_JOB_ID"
    fi
    exit 0
  fi
  return "$rc"
}
