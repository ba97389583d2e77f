"""Process-group setup from the torchrun environment (nccl on GPU, gloo on CPU) and exact cross-process sums."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bgmask.errors import ConfigError, PeerFailure


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size and the device it should use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device a process uses: 'auto' (or None) is this process's CUDA device (``LOCAL_RANK`` under torchrun) when
    CUDA is available, else the CPU; 'cuda' is this process's CUDA device; 'cpu' or 'cuda:N' are taken as given."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but no CUDA device is visible; use --device cpu.")
        if device.index is None:
            local_rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
            if count == 1:  # one GPU visible per process (bound by the scheduler): it is this process's
                local_rank = 0
            elif local_rank >= count:  # two processes on one GPU would silently share it
                raise ConfigError(f"LOCAL_RANK {local_rank} but only {count} CUDA device(s) are visible: start at "
                                  f"most {count} processes per node (torchrun --nproc_per_node {count}).")
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group when launched by torchrun; a plain ``python train.py`` stays single-process.

    Args:
        device: 'auto' (cuda when available), 'cuda' or 'cpu' (see :func:`resolve_device`).
        timeout_s: collective timeout; a crashed peer makes the others fail after at most this long.
    """
    dev = resolve_device(device)
    if not launched_by_torchrun():
        return DistInfo(device=dev)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place, returned); identity when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agree(error: BaseException | None, device: torch.device | str = "cpu") -> None:
    """After a stage's local work and before its collectives: every process learns whether any process failed, and
    all raise :class:`PeerFailure` together. Without it, a process that fails skips the stage's all-reduce while the
    others wait in it until the process group's timeout (NCCL: 30 minutes)."""
    flag = torch.tensor([0.0 if error is None else 1.0], device=device)
    failed = int(all_reduce_sum(flag).item())
    if failed:
        reason = f": {type(error).__name__}: {error}" if error is not None else " (on another process)"
        raise PeerFailure(f"{failed} process(es) failed{reason}") from error


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
