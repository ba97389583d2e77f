"""GroupDRO (Sagawa et al., ICLR 2020) beside the masking strategies (``--masking groupdro``).

Original images and the baseline's model, as the baseline; only the training objective differs: the loss of every (y,
attribute) group of the batch, weighted online towards the worst group (:class:`bgmask.training.losses.GroupDROLoss`;
group_DRO's ``LossComputer`` with its defaults: step size 0.01, no generalisation adjustment). It needs the training
split's groups (``--dataset waterbirds``, a CSV with an ``a`` column). As in group_DRO, what makes it work is strong
regularisation or early stopping: the best epoch is selected on the validation worst group.

GroupDRO is a strategy, not a second axis: ``--masking`` names what differs from the baseline, and for GroupDRO that
is the objective; everything else (augmentation draws, optimiser, schedule, evaluation) is shared, so it stands in
the same table as the masking strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from bgmask.config import TrainConfig, option
from bgmask.data.groups import Groups
from bgmask.errors import ConfigError
from bgmask.strategies.base import Strategy, register
from bgmask.training.losses import GroupDROLoss


@dataclass
class GroupDROOptions:
    section: ClassVar[str] = "GroupDRO"
    robust_step_size: float = option(0.01, "step size eta of the group-weight update q <- q exp(eta loss_g) "
                                           "(group_DRO's default)")
    generalization_adjustment: float = option(0.0, "C: group losses are raised by C / sqrt(training group size) in "
                                                   "the update (group_DRO's default 0)")


@register
class GroupDRO(Strategy):
    name = "groupdro"
    label = "GroupDRO"
    summary = "original images; the loss of the worst training groups weighted up online (needs training groups)"
    Options = GroupDROOptions

    def check(self, cfg: TrainConfig) -> None:
        opts: GroupDROOptions = cfg.strategy_options
        if opts.robust_step_size < 0 or opts.generalization_adjustment < 0:
            raise ConfigError("--robust_step_size and --generalization_adjustment must be >= 0.")
        if cfg.data.class_balance == "loss":
            raise ConfigError("--masking groupdro weights the loss by group itself: drop --class_balance loss (the "
                              "sampler options combine with it).")
        if cfg.model.probe_heads is not None:
            raise ConfigError("--masking groupdro trains one head; drop --probe_heads.")

    def training_loss(self, cfg: TrainConfig, loss: nn.Module, train_groups: Groups | None) -> nn.Module:
        if train_groups is None:
            raise ConfigError(f"--masking groupdro weights the training groups, and --dataset {cfg.data.dataset} "
                              f"has none in its training split: use --dataset waterbirds, or a CSV with an a column.")
        opts: GroupDROOptions = cfg.strategy_options
        return GroupDROLoss(len(train_groups.names), train_groups.sizes(), opts.robust_step_size,
                            opts.generalization_adjustment, smoothing=cfg.optim.smoothing)

    def results_info(self, cfg: TrainConfig) -> dict:
        opts: GroupDROOptions = cfg.strategy_options
        return {"robust_step_size": opts.robust_step_size,
                "generalization_adjustment": opts.generalization_adjustment}
