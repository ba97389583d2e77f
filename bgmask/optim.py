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
    """What the optimiser and schedule need (the CLI's optimisation flags)."""

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
    restart_epochs: int = 0
    on_updates: bool = False

    @classmethod
    def from_args(cls, args) -> OptimConfig:
        return cls(optimizer=args.optimizer_type, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
                   weight_decay_rule=args.weight_decay_rule, momentum=args.momentum, betas=(args.betas1, args.betas2),
                   scratch_lr_factor=args.scratch_lr_factor, scheduler=args.scheduler_type, epochs=args.epochs,
                   warmup_epochs=args.scheduler_warmup_epochs, restart_epochs=args.scheduler_restart_epochs,
                   on_updates=args.sched_on_updates)


def build_optimizer(model: nn.Module, cfg: OptimConfig):
    """timm's ``create_optimizer_v2`` on our parameter groups (backbone at lr, new layers at lr x scratch factor)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer_type must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.scratch_lr_factor, cfg.weight_decay_rule)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return create_optimizer_v2(groups, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, betas=cfg.betas)


def build_scheduler(optimizer, cfg: OptimConfig, updates_per_epoch: int) -> Scheduler:
    """A timm scheduler for one of upstream's schedule names (docs/fidelity.md has the exact mapping).

    Every schedule spans ``cfg.epochs`` in total, warm-up included. The warm-up is linear from ``min_lr``. Per-epoch
    stepping is the default (as upstream); ``cfg.on_updates`` steps after every optimizer update instead.

    Returns a scheduler driven by :func:`set_schedule_position`.
    """
    warmup = cfg.warmup_epochs if cfg.scheduler in ("cosine_with_warmup", "cosine_warmup_restart") else 0
    common = {"warmup_epochs": warmup, "warmup_lr": cfg.min_lr, "warmup_prefix": True, "min_lr": cfg.min_lr,
              "step_on_epochs": not cfg.on_updates, "updates_per_epoch": updates_per_epoch}
    after_warmup = max(1, cfg.epochs - warmup)
    if cfg.scheduler in ("cosine", "cosine_with_warmup"):
        kwargs = {"sched": "cosine", "num_epochs": after_warmup}
    elif cfg.scheduler == "cosine_warmup_restart":
        cycle = cfg.restart_epochs or max(1, after_warmup // 3)
        kwargs = {"sched": "cosine", "num_epochs": cycle, "cycle_limit": -(-after_warmup // cycle),
                  "cycle_decay": 1.0}
    elif cfg.scheduler == "steplr":
        kwargs = {"sched": "step", "num_epochs": cfg.epochs, "decay_epochs": max(1, cfg.epochs // 3),
                  "decay_rate": 0.1}
    elif cfg.scheduler == "linearlr":
        kwargs = {"sched": "poly", "num_epochs": cfg.epochs, "decay_rate": 1.0}
    else:
        raise ValueError(f"--scheduler_type must be one of {SCHEDULERS}, got {cfg.scheduler!r}")
    scheduler, _ = create_scheduler_v2(optimizer, **common, **kwargs)
    return scheduler


def set_schedule_position(scheduler: Scheduler, epoch: int, updates: int) -> None:
    """Set every group's lr for the position ``epoch`` (0-based, epochs done) / ``updates`` (optimizer steps done).

    timm schedulers are stateless functions of that position, so resuming needs no scheduler state.
    """
    scheduler.step(epoch)
    scheduler.step_update(updates)
