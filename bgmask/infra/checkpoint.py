"""Checkpoints: atomic writes, ``last.pt`` / ``best.pt`` / periodic snapshots, exact resume with RNG state."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bgmask.errors import CheckpointError
from bgmask.io import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that readers only ever see complete (see :func:`bgmask.io.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by this project (trusted: it holds optimizer and RNG state, not only tensors).

    The file is memory-mapped: processes of one node loading it share the page cache instead of each reading
    a private copy, and tensors are only paged in when copied into the model.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); it is corrupt or not a "
                           f"checkpoint of this project. Delete it to start over.") from None


RESUME_ONLY_KEYS = ("optimizer", "scaler", "rng", "step")


def trained_state_keys(model: nn.Module) -> set[str]:
    """The state-dict keys training can change: parameters that require grad, and the buffers of modules that run
    in training mode (a module kept in eval mode, like a frozen backbone, never updates its running statistics).

    With a frozen backbone this is the head (and what trains with it); everything else is rebuilt from the weights
    the run starts from, so checkpoints need not hold it.
    """
    was_training = model.training
    model.train()  # the modes the modules have during training (a frozen backbone stays in eval mode)
    keys = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        keys |= {dot + n for n, p in module.named_parameters(recurse=False) if p.requires_grad}
        if module.training:
            keys |= {dot + n for n, _ in module.named_buffers(recurse=False)}
    model.train(was_training)
    return keys


def model_state(model: nn.Module, frozen_backbone: bool) -> dict:
    """What a checkpoint holds of the model: everything, or with a frozen backbone only :func:`trained_state_keys`
    (a frozen ViT-L probe saves megabytes instead of gigabytes each epoch)."""
    state = model.state_dict()
    if not frozen_backbone:
        return state
    keep = trained_state_keys(model)
    return {k: v for k, v in state.items() if k in keep}


def weights_only(state: dict) -> dict:
    """A checkpoint without what only resuming needs (optimiser and scaler state, RNG, mid-epoch position)."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY_KEYS}


class CheckpointManager:
    """Owns ``snapshot_dir``: ``last.pt`` every epoch, ``best.pt`` on improvement, ``epoch_N.pt`` periodically."""

    def __init__(self, snapshot_dir: str | os.PathLike, save_every_n_epochs: int = 0, enabled: bool = True):
        self.dir = Path(snapshot_dir)
        self.save_every_n_epochs = save_every_n_epochs
        self.enabled = enabled  # only rank 0 writes

    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def save(self, state: dict, epoch: int, is_best: bool, write_last: bool = True) -> None:
        """Save the end-of-``epoch`` state (epochs are 1-based: ``epoch`` epochs are complete).

        ``last.pt`` (and ``epoch_N.pt``) hold the full resume state, ``last.pt`` only when ``write_last``;
        ``best.pt`` holds the weights and metadata only (no optimiser state, which doubles a fine-tuned ViT-L
        checkpoint): it is for evaluation, never resumed.
        """
        if not self.enabled:
            return
        if write_last:
            atomic_torch_save(state, self.last_path)
        if is_best:
            atomic_torch_save(weights_only(state), self.best_path)
        if self.save_every_n_epochs and epoch % self.save_every_n_epochs == 0:
            atomic_torch_save(state, self.dir / f"epoch_{epoch}.pt")

    def save_last(self, state: dict) -> None:
        """Save a mid-epoch state (preemption): ``last.pt`` only."""
        if self.enabled:
            atomic_torch_save(state, self.last_path)

    def resume_state(self) -> dict | None:
        """The state in ``last.pt`` (never ``best.pt``: resuming must continue where training stopped)."""
        return load_checkpoint(self.last_path) if self.last_path.is_file() else None
