"""Data order and augmentation seeds: the same batches whatever the loader workers, persistent or not."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from bgmask.data.sampling import ResumableDistributedSampler, SeededAugmentation


class RandomDraws(Dataset):
    """Item ``i`` is ``(i, a torch draw, a numpy draw)``: what an augmentation pipeline would consume."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i):
        import numpy as np

        return torch.tensor([float(i), torch.rand(1).item(), float(np.random.rand())])


def epochs_of(num_workers: int, persistent: bool, epochs: int = 3, start_at: tuple[int, int] | None = None):
    dataset = SeededAugmentation(RandomDraws(), seed=7)
    sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=7, with_epoch=True)
    loader = DataLoader(dataset, sampler=sampler, batch_size=3, num_workers=num_workers,
                        persistent_workers=persistent, generator=torch.Generator().manual_seed(0))
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # only the sampler: the dataset copies in persistent workers never see this
        sampler.set_start(start_at[1] * 3 if start_at and epoch == start_at[0] else 0)
        out.append(torch.cat(list(loader)))
    return out


def test_persistent_workers_draw_each_epochs_augmentations():
    reference = epochs_of(num_workers=0, persistent=False)
    persistent = epochs_of(num_workers=2, persistent=True)
    for a, b in zip(reference, persistent):
        assert torch.equal(a, b)
    # every epoch draws anew: a stale epoch in the workers would repeat epoch 0's draws for the same image
    by_image = [{int(row[0]): tuple(row[1:].tolist()) for row in epoch} for epoch in reference]
    assert all(by_image[0][i] != by_image[e][i] for e in (1, 2) for i in range(10))


def test_a_resumed_epoch_starts_at_the_batch_with_its_draws():
    full = epochs_of(num_workers=0, persistent=False, epochs=2)
    resumed = epochs_of(num_workers=1, persistent=True, epochs=2, start_at=(1, 2))
    assert torch.equal(resumed[0], full[0])
    assert torch.equal(resumed[1], full[1][6:])


def test_bare_indices_use_the_last_set_epoch():
    dataset = SeededAugmentation(RandomDraws(), seed=7)
    dataset.set_epoch(2)
    assert torch.equal(dataset[4], dataset[(2, 4)])
    assert not torch.equal(dataset[4], dataset[(0, 4)])


def test_a_subset_is_still_seeded_per_image():
    """A Subset (the train part of --train_split) has ``__getitems__``, which the DataLoader calls when the dataset
    has one: it must not reach around the seeding."""
    from torch.utils.data import Subset

    dataset = SeededAugmentation(Subset(RandomDraws(), list(range(8))), seed=7)
    assert not hasattr(dataset, "__getitems__")
    loader = DataLoader(dataset, batch_size=4, sampler=[(0, 1), (0, 2), (1, 1), (1, 2)])
    (batch,) = list(loader)
    assert torch.equal(batch[0], dataset[(0, 1)]) and torch.equal(batch[2], dataset[(1, 1)])
    assert not torch.equal(batch[0], batch[2])
