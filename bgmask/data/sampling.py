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
from torch.utils.data import Dataset, DistributedSampler, Sampler, Subset


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


class WeightedResumableSampler(Sampler):
    """Draw ``num_samples`` (the dataset's size) indices per epoch with replacement, item ``i`` with probability
    proportional to ``weights[i]`` (``torch.utils.data.WeightedRandomSampler``, as group_DRO's ``--reweight_groups``
    and DFR's ``--reweight_classes`` use it), from a generator seeded by ``(seed, epoch)``: the same draws whatever the
    number of processes or workers, so a run resumes at the exact batch. The draws are padded to a multiple of the
    process count and dealt round-robin, as :class:`~torch.utils.data.DistributedSampler` deals its permutation.

    The interface is :class:`ResumableDistributedSampler`'s (``set_epoch``, ``set_start``, ``num_samples``, keys
    ``(epoch, index)`` with ``with_epoch``).
    """

    def __init__(self, weights, seed: int = 0, num_replicas: int = 1, rank: int = 0, with_epoch: bool = False):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights.numel() == 0 or not torch.isfinite(self.weights).all() or (self.weights < 0).any() \
                or self.weights.sum() <= 0:
            raise ValueError("sampling weights must be finite, non-negative and not all zero")
        self.seed, self.num_replicas, self.rank, self.with_epoch = seed, num_replicas, rank, with_epoch
        self.num_samples = -(-len(self.weights) // num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        self.start = start

    def draws(self, epoch: int) -> list[int]:
        """Every process's indices of ``epoch``, before dealing."""
        seed = int(np.random.SeedSequence([self.seed, epoch, 7]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        return torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator).tolist()

    def __iter__(self):
        indices = self.draws(self.epoch)[self.rank:self.total_size:self.num_replicas][self.start:]
        return iter([(self.epoch, i) for i in indices] if self.with_epoch else indices)

    def __len__(self) -> int:
        return self.num_samples - self.start


def balancing_weights(ids: np.ndarray, num_ids: int | None = None) -> np.ndarray:
    """Per-item weights ``n / count(id of the item)``: every class (or group) present is drawn equally often in
    expectation (group_DRO's ``len(data) / group_counts``, DFR's class version)."""
    ids = np.asarray(ids, dtype=np.int64)
    counts = np.bincount(ids, minlength=num_ids or 0).astype(np.float64)
    return len(ids) / counts[ids]


def labels_of(dataset) -> np.ndarray:
    """The class index of every item of a dataset that exposes ``labels`` (a ``Subset`` of one included)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError(f"{type(dataset).__name__} exposes no labels: class balancing needs them")
    return np.asarray(labels, dtype=np.int64)


class WithGroups(Dataset):
    """Each item with its group id appended, ``(*item, group)``: for objectives that weight groups (GroupDRO)."""

    def __init__(self, dataset, group_ids):
        self.dataset, self.group_ids = dataset, np.asarray(group_ids, dtype=np.int64)
        if len(self.group_ids) != len(dataset):
            raise ValueError(f"{len(self.group_ids)} group ids for {len(dataset)} items")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # the wrapped dataset's attributes (labels, ...), not its protocol methods
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i: int):
        return (*self.dataset[i], int(self.group_ids[i]))
