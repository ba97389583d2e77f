"""Graceful preemption: SIGTERM / SIGUSR1 ask training to save ``last.pt`` after the current step and exit.

SLURM sends a signal some time before killing a job (``#SBATCH --signal=USR1@120`` sends SIGUSR1 120 s ahead);
``scancel`` and torchrun send SIGTERM. The trainer then exits with :data:`REQUEUE_EXIT_CODE`, which the sbatch
templates in ``scripts/slurm/`` turn into ``scontrol requeue``; the next allocation resumes from ``last.pt``.
"""

from __future__ import annotations

import signal

import torch

from bgmask.distributed import all_reduce_sum

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure, try again"
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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
        if self.signal_received is not None:  # a second signal: stop waiting for the step to finish
            self.restore()
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name} while saving")
        self.signal_received = signum

    def requested(self) -> bool:
        local = torch.tensor([1.0 if self.signal_received is not None else 0.0], device=self.device)
        if self.distributed:
            return bool(all_reduce_sum(local).item() > 0)
        return bool(local.item() > 0)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
