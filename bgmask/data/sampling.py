"""Deterministic data order and augmentation: per-(epoch, image) augmentation seeds and a resumable sampler.

Together they make a run reproducible whatever the number of loader workers, and let a run interrupted in the
middle of an epoch resume at the exact batch where it stopped with the exact same augmentations.

The sampler hands the dataset ``(epoch, index)`` keys rather than bare indices: loader workers that persist across
epochs (``persistent_workers=True``) hold their own copy of the dataset, which a ``set_epoch`` call in the main
process never reaches, so the epoch has to travel with each index.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class SeededAugmentation(Dataset):
    """Draw each item's random augmentation from its own seed ``(seed, epoch, index)``.

    The caller's global RNG state (torch, numpy, python) is left untouched, so model-side randomness (drop-path,
    mixup) follows its own stream.
    """

    # How an item's torch stream is seeded: the CPU generator only. Augmentation draws nothing on an accelerator, and
    # torch.manual_seed would also queue a CUDA seeding with a formatted stack trace in every worker (~0.6 ms per
    # image; scripts/bench/loader.py measures both).
    seed_torch = staticmethod(torch.default_generator.manual_seed)

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # expose the wrapped dataset's attributes (labels, num_classes, ...)
        # ...but not its protocol methods: a Subset's ``__getitems__`` (which the DataLoader prefers) would fetch
        # around the seeding.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: int | tuple[int, int]):
        """``dataset[i]`` in the epoch of the last ``set_epoch``, or ``dataset[(epoch, i)]`` in that epoch."""
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        item_seed = int(np.random.SeedSequence([self.seed, int(epoch), int(i)]).generate_state(1)[0])
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            self.seed_torch(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed)
            try:
                return self.dataset[i]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler that can skip the first ``start`` samples of this rank's share of the current epoch.

    Yields ``(epoch, index)`` keys (for :class:`SeededAugmentation`) when built with ``with_epoch=True``.
    """

    def __init__(self, *args, with_epoch: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0
        self.with_epoch = with_epoch

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter([(self.epoch, i) for i in indices] if self.with_epoch else indices)

    def __len__(self) -> int:
        return super().__len__() - self.start
