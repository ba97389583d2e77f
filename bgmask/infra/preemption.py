"""Graceful preemption: SIGTERM / SIGUSR1 ask training to save ``last.pt`` after the current step and exit.

SLURM sends a signal some time before killing a job (``#SBATCH --signal=USR1@120`` sends SIGUSR1 120 s ahead);
``scancel`` and torchrun send SIGTERM. The trainer then exits with :data:`REQUEUE_EXIT_CODE`, which the sbatch
templates in ``scripts/slurm/`` turn into ``scontrol requeue``; the next allocation resumes from ``last.pt``.
"""

from __future__ import annotations

import signal
import time

import torch

from bgmask.infra.distributed import all_reduce_sum

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure, try again"
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# A repeat within this many seconds is the same request fanned out (SLURM signals every process of the job step and
# torchrun forwards its own SIGTERM to the trainers it started), not an impatient user.
REPEAT_WINDOW_S = 10.0


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every data loader: the workers ignore SIGTERM, SIGUSR1 and SIGINT.

    SLURM signals every process of a job step and torchrun the whole process group of each trainer, so the loader
    workers get the preemption signal too; PyTorch's workers only ignore a SIGTERM from their own parent, and one that
    dies makes the trainer raise "DataLoader worker ... is killed by signal" before it can save ``last.pt``. Workers
    that ignore it keep serving batches until the trainer stops at its next poll, and still exit with the trainer
    (PyTorch's watchdog ends a worker whose parent is gone; SIGKILL ends it in any case).
    """
    for sig in (*PREEMPTION_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class PreemptionFlag:
    """Records a preemption signal; :meth:`requested` agrees across processes so all ranks stop at the same step."""

    def __init__(self, signals=PREEMPTION_SIGNALS, distributed: bool = False, device: torch.device | None = None):
        self.signal_received: int | None = None
        self.distributed = distributed
        self.device = device or torch.device("cpu")  # nccl reduces CUDA tensors only
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        now = time.monotonic()
        if self.signal_received is not None:
            if now - self._received_at < REPEAT_WINDOW_S:
                return  # the same request reaching this process twice (job-wide signal + torchrun's forward)
            self.restore()  # a later second signal: stop waiting for the step to finish
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name} while saving")
        self.signal_received, self._received_at = signum, now

    def requested(self) -> bool:
        local = torch.tensor([1.0 if self.signal_received is not None else 0.0], device=self.device)
        if self.distributed:
            return bool(all_reduce_sum(local).item() > 0)
        return bool(local.item() > 0)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
