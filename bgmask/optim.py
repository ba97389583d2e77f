"""Optimiser, learning-rate schedule and AMP scaler from timm, under upstream's flag and schedule names."""

from __future__ import annotations

from dataclasses import dataclass

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn

from bgmask.models import param_groups

OPTIMIZERS = ("adamw", "adam", "sgd")  # timm's 'sgd' is SGD with Nesterov momentum, as upstream's
SCHEDULERS = ("cosine", "cosine_with_warmup", "steplr", "linearlr", "cosine_warmup_restart")


@dataclass(frozen=True)
class OptimConfig:
    """What the optimiser and schedule need (the CLI's optimisation flags, upstream's names)."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-8
    weight_decay: float = 1e-2
    weight_decay_rule: str = "all"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    scratch_lr_factor: float = 1.0
    scheduler: str = "cosine"
    epochs: int = 90
    warmup_epochs: int = 0
    start_factor: float = 0.333
    end_factor: float = 1.0
    restart_factor: int = 2
    gamma: float = 0.1
    step_size: int = 10
    on_updates: bool = False

    @classmethod
    def from_args(cls, args) -> OptimConfig:
        return cls(optimizer=args.optimizer_type, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
                   weight_decay_rule=args.weight_decay_rule, momentum=args.momentum, betas=(args.betas1, args.betas2),
                   scratch_lr_factor=args.scratch_lr_factor, scheduler=args.scheduler_type, epochs=args.epochs,
                   warmup_epochs=args.scheduler_warmup_epochs, start_factor=args.scheduler_start_factor,
                   end_factor=args.scheduler_end_factor, restart_factor=args.scheduler_restart_factor,
                   gamma=args.scheduler_gamma, step_size=args.scheduler_step_size, on_updates=args.sched_on_updates)


def build_optimizer(model: nn.Module, cfg: OptimConfig):
    """timm's ``create_optimizer_v2`` on our parameter groups (backbone at lr, new layers at lr x scratch factor)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer_type must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.scratch_lr_factor, cfg.weight_decay_rule)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return create_optimizer_v2(groups, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, betas=cfg.betas)


class LinearFactorLRScheduler(Scheduler):
    """``torch.optim.lr_scheduler.LinearLR`` on timm's scheduler base: each group's lr is its base lr times a factor
    going linearly from ``start_factor`` to ``end_factor`` over ``t_total`` steps, then held.

    timm ships no linear schedule with per-group factors (its warm-up starts every group at one absolute lr), and
    upstream's ``linearlr`` is this one; the timm base gives per-epoch or per-update stepping like the others.
    """

    def __init__(self, optimizer, t_total: int, start_factor: float, end_factor: float, t_in_epochs: bool = True):
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=t_in_epochs)
        self.t_total, self.start_factor, self.end_factor = max(1, t_total), start_factor, end_factor
        self.update_groups(self._get_lr(0))

    def _get_lr(self, t: int) -> list[float]:
        factor = self.start_factor + (self.end_factor - self.start_factor) * min(t, self.t_total) / self.t_total
        return [base * factor for base in self.base_values]


def build_scheduler(optimizer, cfg: OptimConfig, updates_per_epoch: int) -> Scheduler:
    """A timm scheduler for one of upstream's schedule names (``docs/fidelity.md`` has the mapping).

    ``cosine``: cosine from lr to ``min_lr`` over the epochs. ``cosine_with_warmup``: linear warm-up from 0 for
    ``warmup_epochs``, then cosine to ``min_lr`` over the rest. ``cosine_warmup_restart``: cosine with warm restarts,
    first cycle ``warmup_epochs`` long, each next one ``restart_factor`` times longer (upstream's use of the flag).
    ``steplr``: lr x ``gamma`` every ``step_size`` epochs. ``linearlr``: lr x factor going linearly from
    ``start_factor`` to ``end_factor`` over the epochs. Stepped once per epoch (upstream) unless ``cfg.on_updates``.
    """
    per_update = cfg.on_updates
    unit = updates_per_epoch if per_update else 1
    common = {"min_lr": cfg.min_lr, "step_on_epochs": not per_update, "updates_per_epoch": updates_per_epoch}
    if cfg.scheduler == "cosine":
        kwargs = {"sched": "cosine", "num_epochs": cfg.epochs}
    elif cfg.scheduler == "cosine_with_warmup":
        kwargs = {"sched": "cosine", "num_epochs": cfg.epochs - cfg.warmup_epochs, "warmup_epochs": cfg.warmup_epochs,
                  "warmup_lr": 0.0, "warmup_prefix": True}
    elif cfg.scheduler == "cosine_warmup_restart":
        kwargs = {"sched": "cosine", "num_epochs": cfg.warmup_epochs, "cycle_mul": cfg.restart_factor,
                  "cycle_decay": 1.0, "cycle_limit": cfg.epochs + 1}
    elif cfg.scheduler == "steplr":
        kwargs = {"sched": "step", "num_epochs": cfg.epochs, "decay_epochs": cfg.step_size, "decay_rate": cfg.gamma}
    elif cfg.scheduler == "linearlr":
        return LinearFactorLRScheduler(optimizer, cfg.epochs * unit, cfg.start_factor, cfg.end_factor,
                                       t_in_epochs=not per_update)
    else:
        raise ValueError(f"--scheduler_type must be one of {SCHEDULERS}, got {cfg.scheduler!r}")
    scheduler, _ = create_scheduler_v2(optimizer, **common, **kwargs)
    return scheduler


def set_schedule_position(scheduler: Scheduler, epoch: int, updates: int) -> None:
    """Set every group's lr for ``epoch`` epochs / ``updates`` optimizer steps done (start, resume).

    timm schedulers are functions of that position, so resuming needs no scheduler state.
    """
    scheduler.step(epoch)
    scheduler.step_update(updates)
