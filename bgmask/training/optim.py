"""Optimiser, learning-rate schedule and AMP scaler from timm, under upstream's flag and schedule names."""

from __future__ import annotations

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn

from bgmask.config import OPTIMIZERS, SCHEDULERS, OptimConfig
from bgmask.errors import ConfigError
from bgmask.models import param_groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False):
    """timm's ``create_optimizer_v2`` on our parameter groups (backbone at lr, new layers at lr x scratch factor);
    ``fused``: torch's fused Adam/AdamW kernel (one launch per step instead of one per tensor; on CUDA)."""
    if cfg.optimizer_type not in OPTIMIZERS:
        raise ConfigError(f"--optimizer_type must be one of {OPTIMIZERS}, got {cfg.optimizer_type!r}")
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.scratch_lr_factor, cfg.weight_decay_rule)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    extra = {"fused": True} if fused and cfg.optimizer_type in ("adam", "adamw") else {}
    return create_optimizer_v2(groups, opt=cfg.optimizer_type, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, betas=(cfg.betas1, cfg.betas2), **extra)


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
    ``start_factor`` to ``end_factor`` over the epochs. Stepped once per epoch (upstream) unless
    ``cfg.sched_on_updates``.
    """
    per_update = cfg.sched_on_updates
    unit = updates_per_epoch if per_update else 1
    common = {"min_lr": cfg.min_lr, "step_on_epochs": not per_update, "updates_per_epoch": updates_per_epoch}
    if cfg.scheduler_type == "cosine":
        kwargs = {"sched": "cosine", "num_epochs": cfg.epochs}
    elif cfg.scheduler_type == "cosine_with_warmup":
        warmup = cfg.scheduler_warmup_epochs
        kwargs = {"sched": "cosine", "num_epochs": cfg.epochs - warmup, "warmup_epochs": warmup,
                  "warmup_lr": 0.0, "warmup_prefix": True}
    elif cfg.scheduler_type == "cosine_warmup_restart":
        kwargs = {"sched": "cosine", "num_epochs": cfg.scheduler_warmup_epochs,
                  "cycle_mul": cfg.scheduler_restart_factor,
                  "cycle_decay": 1.0, "cycle_limit": cfg.epochs + 1}
    elif cfg.scheduler_type == "steplr":
        kwargs = {"sched": "step", "num_epochs": cfg.epochs, "decay_epochs": cfg.scheduler_step_size,
                  "decay_rate": cfg.scheduler_gamma}
    elif cfg.scheduler_type == "linearlr":
        return LinearFactorLRScheduler(optimizer, cfg.epochs * unit, cfg.scheduler_start_factor,
                                       cfg.scheduler_end_factor, t_in_epochs=not per_update)
    else:
        raise ConfigError(f"--scheduler_type must be one of {SCHEDULERS}, got {cfg.scheduler_type!r}")
    scheduler, _ = create_scheduler_v2(optimizer, **common, **kwargs)
    return scheduler


def set_schedule_position(scheduler: Scheduler, epoch: int, updates: int) -> None:
    """Set every group's lr for ``epoch`` epochs / ``updates`` optimizer steps done (start, resume).

    timm schedulers are functions of that position, so resuming needs no scheduler state.
    """
    scheduler.step(epoch)
    scheduler.step_update(updates)
