"""The field's answers to class and group imbalance, the same for every strategy: class weights for the loss
(``--class_balance loss``) and the training sampler (a seeded permutation, or weighted draws with replacement for
``--class_balance sampler`` / ``--reweight_groups``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bgmask.data.sampling import ResumableDistributedSampler, WeightedResumableSampler, balancing_weights, labels_of
from bgmask.errors import ConfigError
from bgmask.training.losses import balanced_class_weights

if TYPE_CHECKING:
    from bgmask.benchmarks import BenchmarkData
    from bgmask.config import TrainConfig
    from bgmask.infra.distributed import DistInfo


def class_weights(cfg: TrainConfig, data: BenchmarkData):
    """``--class_balance loss``: balanced class weights from the training labels; otherwise None."""
    if cfg.data.class_balance != "loss":
        return None
    return balanced_class_weights(labels_of(data.train), data.num_classes)


def build_sampler(cfg: TrainConfig, data: BenchmarkData, train_set, info: DistInfo):
    """The training order: a seeded permutation per epoch, or with ``--class_balance sampler`` /
    ``--reweight_groups`` weighted draws with replacement (group_DRO, DFR); both resumable at the exact batch."""
    weights = None
    if cfg.data.class_balance == "sampler":
        weights = balancing_weights(labels_of(data.train), data.num_classes)
    elif cfg.data.reweight_groups:
        if data.train_groups is None:
            raise ConfigError(f"--reweight_groups weights the training groups, and --dataset {cfg.data.dataset} has "
                              f"none in its training split: use --dataset waterbirds, or a CSV with an a column.")
        weights = balancing_weights(data.train_groups.ids, len(data.train_groups.names))
    if weights is None:
        return ResumableDistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                           seed=cfg.run.seed, drop_last=False, with_epoch=True)
    return WeightedResumableSampler(weights, seed=cfg.run.seed, num_replicas=info.world_size, rank=info.rank,
                                    with_epoch=True)
