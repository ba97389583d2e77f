"""Loading mmengine checkpoints under torch >= 2.6 (``weights_only``), handled in this one place."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from mmengine.runner.checkpoint import CheckpointLoader

# Why: torch >= 2.6 made ``torch.load(weights_only=True)`` the default, while mmengine 0.10.7 calls ``torch.load``
# without the argument. A checkpoint written by mmengine's Runner holds more than tensors (numpy scalars in the
# message hub, mmengine HistoryBuffer objects, the config text), so the new default refuses to load it: resuming,
# test.py and generate_masks.py would all fail on checkpoints this repository wrote itself.
#
# Choice: while our entry points load checkpoints (trusted_local_checkpoints() below), mmengine's loader for *local
# paths* (scheme prefix '') is one that passes weights_only=False; on exit mmengine's own loader is back. Importing
# cub_seg changes nothing in mmengine.
# Local files are ones the user points at explicitly (their own training output or a release they chose), which is
# the trust model torch documents for weights_only=False. We did not use torch.serialization.add_safe_globals: the
# classes inside a checkpoint depend on the hooks, optimizer and numpy version, so an allow-list breaks silently on
# the next one. Remote URLs (http, torchvision://, open-mmlab://: the pretrained backbones) keep mmengine's loaders
# and torch's safe default; those files are plain state dicts.


def load_from_local_trusted(filename: str, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=False`` for trusted local files.

    Args:
        filename: path of a checkpoint on the local file system (``~`` is expanded).
        map_location: as for :func:`torch.load`.
    """
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"Checkpoint {filename} does not exist. Check the path; training writes "
                                f"iter_N.pth and last_checkpoint into its --work-dir.")
    return torch.load(filename, map_location=map_location, weights_only=False)


@contextlib.contextmanager
def trusted_local_checkpoints() -> Iterator[None]:
    """Inside the block, mmengine loads local checkpoint files with :func:`load_from_local_trusted`; remote URLs keep
    their loaders. The previous local loader is restored on exit (nesting is fine)."""
    # Longer prefixes win in mmengine's lookup, so only paths without a URL-like scheme reach this loader.
    previous = CheckpointLoader._schemes.get("")
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_trusted, force=True)
    try:
        yield
    finally:
        if previous is None:
            CheckpointLoader._schemes.pop("", None)
        else:
            CheckpointLoader.register_scheme(prefixes="", loader=previous, force=True)
