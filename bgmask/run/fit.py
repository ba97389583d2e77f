"""Training a run: optimiser, schedule, mixup and loss from timm; epochs with evaluation when due, checkpoints, exact
resume and a clean stop on preemption."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import NativeScaler
from torch import nn
from torch.utils.data import DataLoader

from bgmask.benchmarks import BenchmarkData
from bgmask.config import AugConfig
from bgmask.data.sampling import SeededAugmentation, WithGroups
from bgmask.errors import NonFiniteLossError
from bgmask.infra import distributed
from bgmask.infra.checkpoint import CheckpointManager, load_checkpoint, rng_state, set_rng_state
from bgmask.infra.distributed import DistInfo
from bgmask.infra.logging import RunLogger, save_args
from bgmask.infra.preemption import REQUEUE_EXIT_CODE, PreemptionFlag
from bgmask.run.evaluation import brief, evaluate_heads, evaluate_sets, results_layout
from bgmask.run.model import RunModel, reports_every_head
from bgmask.run.session import Session
from bgmask.strategies import Strategy
from bgmask.training.balance import build_sampler, class_weights
from bgmask.training.engine import train_one_epoch
from bgmask.training.losses import TrainingLoss
from bgmask.training.mixup import MaskMixup
from bgmask.training.optim import build_optimizer, build_scheduler, set_schedule_position
from bgmask.training.selection import is_better, selection_key, selection_note


@dataclass
class Progress:
    """Where training stands: epochs done, optimizer steps done in the next epoch, and the best evaluation."""

    epoch: int = 0
    step: int = 0
    best_top1: float = -1.0  # the best selection score (top-1, or the worst group with --selection_metric)
    best_epoch: int = 0
    best_metrics: dict | None = None
    best_probes: dict | None = None  # with probe heads: each head's best {"epoch", "top1"}
    best_key: tuple | None = None  # the selected epoch's lexicographic score (bgmask.training.selection.selection_key)
    history: list = field(default_factory=list)  # per evaluated epoch: {"epoch", "score", "trained"}


def train(session: Session, data: BenchmarkData, model: RunModel, ckpt: CheckpointManager,
          strategy: Strategy) -> dict:
    """Train from scratch or from ``last.pt``; the final metrics, the epoch count and the best epoch."""
    cfg, info = session.cfg, session.info
    scaler = NativeScaler(info.device.type) if session.amp.dtype == torch.float16 else None
    optimizer = build_optimizer(model.module, cfg.optim, fused=info.device.type == "cuda")
    criterion = strategy.training_loss(cfg, build_criterion(cfg.optim.smoothing, cfg.aug.turn_on_mixup_or_cutmix,
                                                            class_weights(cfg, data)), data.train_groups)
    if isinstance(criterion, nn.Module):
        criterion.to(info.device)
    with_groups = getattr(criterion, "needs_groups", False)
    progress = resume(session, model, optimizer, scaler, ckpt, criterion)
    if info.is_main:
        save_args(cfg.flat(), session.snapshot_dir / "args.yaml")
    # Data order comes from the sampler (seed, epoch) and augmentation from (seed, epoch, image): both are
    # independent of the worker count, and a run stopped mid-epoch resumes at the exact batch. The sampler passes
    # the epoch with each index, so the workers can persist across epochs.
    train_set = SeededAugmentation(WithGroups(data.train, data.train_groups.ids) if with_groups else data.train,
                                   cfg.run.seed)
    sampler = build_sampler(cfg, data, train_set, info)
    mixup = build_mixup(cfg.aug, cfg.optim.smoothing, data.num_classes)
    # Upstream drops each process's last incomplete batch (every epoch's updates have the full batch size, and
    # mixup needs even batches); kept only where a process would otherwise get no batch at all.
    loader = DataLoader(train_set, sampler=sampler, drop_last=sampler.num_samples >= cfg.data.batch_size,
                        persistent_workers=cfg.data.num_workers > 0, **session.loader_kwargs)
    updates_per_epoch = min(len(loader), cfg.run.max_train_batches or len(loader))
    scheduler = build_scheduler(optimizer, cfg.optim, updates_per_epoch)
    set_schedule_position(scheduler, progress.epoch, progress.epoch * updates_per_epoch + progress.step)
    logger = RunLogger(session.snapshot_dir, enabled=info.is_main, use_wandb=cfg.run.wandb,
                       wandb_kwargs={"project": cfg.run.wandb_project, "entity": cfg.run.wandb_entity,
                                     "group": cfg.run.group, "job_type": cfg.run.job_type, "config": cfg.flat(),
                                     "name": session.snapshot_dir.name})
    if info.is_main:
        n_train = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
        sets = ", ".join(f"{len(s.dataset)} {name}" for name, s in data.eval_sets.items())
        print(f"{strategy.name} | {cfg.model.model_arch} @ {data.image_size}px | {len(data.train)} train images, "
              f"{sets} | {n_train / 1e6:.2f}M trainable params | "
              f"{info.world_size} process(es) on {info.device}", flush=True)
    loop = EpochLoop(session, data, model, ckpt, optimizer, scaler, scheduler, criterion, mixup, loader, logger,
                     updates_per_epoch, with_groups)
    return loop.run(progress)


def resume(session: Session, model: RunModel, optimizer, scaler, ckpt: CheckpointManager,
           criterion: nn.Module | None = None) -> Progress:
    """Restore model, optimizer, scaler, the objective's state (GroupDRO's weights), position and RNG from
    ``last.pt`` when there is one."""
    info = session.info
    state = ckpt.resume_state()
    if state is None:
        return Progress()
    model.load(state["model"], ckpt.last_path, state.get("weights_identity"))
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if criterion is not None and state.get("criterion"):
        criterion.load_state_dict(state["criterion"])
    progress = Progress(epoch=state["epoch"], step=state.get("step", 0), best_top1=state["best_top1"],
                        best_epoch=state["best_epoch"], best_metrics=state.get("best_metrics"),
                        best_probes=state.get("best_probes"),
                        best_key=tuple(state["best_key"]) if state.get("best_key") is not None else (
                            # a checkpoint written before the tie-breaks: a later epoch must beat its metric
                            (state["best_top1"], float("inf"), float("inf")) if state["best_top1"] >= 0 else None),
                        history=list(state.get("history") or []))
    rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if len(rng) == info.world_size:
        set_rng_state(rng[info.rank])
    elif info.is_main:
        warnings.warn(f"{ckpt.last_path} was written by {len(rng)} process(es), this run has {info.world_size}: "
                      f"training continues, but not bit-identically to an uninterrupted run.", stacklevel=2)
    if info.is_main:
        where = f" + {progress.step} steps" if progress.step else ""
        print(f"Resumed from {ckpt.last_path} after epoch {progress.epoch}/{session.cfg.optim.epochs}{where}",
              flush=True)
    return progress


@dataclass
class EpochLoop:
    """The epochs of one training run: train, evaluate, checkpoint; stops cleanly when preempted."""

    session: Session
    data: BenchmarkData
    model: RunModel
    ckpt: CheckpointManager
    optimizer: torch.optim.Optimizer
    scaler: NativeScaler | None
    scheduler: object
    criterion: nn.Module
    mixup: MaskMixup | None
    loader: DataLoader
    logger: RunLogger
    updates_per_epoch: int
    with_groups: bool = False  # batches end with each image's training group (the objective weights groups)

    def run(self, progress: Progress) -> dict:
        cfg = self.session.cfg
        self.num_updates = progress.epoch * self.updates_per_epoch + progress.step
        last_metrics = None
        preemption = PreemptionFlag(distributed=self.session.info.distributed, device=self.session.info.device)
        for epoch in range(progress.epoch, cfg.optim.epochs):
            skip = progress.step if epoch == progress.epoch else 0
            stats = self.train_epoch(epoch, skip, preemption)
            if not stats["completed"]:
                self.stop_preempted(epoch, skip + stats["steps"], progress, preemption)
            progress.epoch, progress.step = epoch + 1, 0
            metrics = self.end_epoch(stats, progress)
            last_metrics = metrics or last_metrics
        preemption.restore()
        self.logger.close()
        if last_metrics is None:  # resumed after the final epoch: evaluate the final weights again
            last_metrics = evaluate_sets(self.session, self.model, self.data.eval_sets)
        best = {"epoch": progress.best_epoch, self.data.selection_metric: progress.best_top1,
                "selected_on": self.selected_on,
                "history": [{"epoch": h["epoch"], self.data.selection_metric: h["score"], "trained": h["trained"]}
                            for h in progress.history]}
        note = selection_note(progress.history, self.data.selection_metric)
        if note is not None:
            best["note"] = note
            if self.session.info.is_main:
                print(f"model selection: {note} (epoch {progress.best_epoch})", flush=True)
        if progress.best_probes is not None:
            best["probes"] = progress.best_probes
        if self.data.validation_selection and progress.best_probes is None:
            # Selected on a validation split: every set is reported with the selected epoch's weights.
            return {**self.selected_metrics(progress, last_metrics), "epoch": cfg.optim.epochs, "best": best,
                    "last_epoch": last_metrics, "reported": f"the selected epoch ({progress.best_epoch})"}
        return {**last_metrics, "epoch": cfg.optim.epochs, "best": best}

    def selected_metrics(self, progress: Progress, last_metrics: dict) -> dict:
        """Every set scored with the weights of the selected epoch (``best.pt``; the final ones when they are it)."""
        if progress.best_epoch == self.session.cfg.optim.epochs:
            return last_metrics
        distributed.barrier()  # rank 0 wrote best.pt
        state = load_checkpoint(self.ckpt.best_path)
        self.model.load(state["model"], self.ckpt.best_path, state.get("weights_identity"))
        return evaluate_sets(self.session, self.model, self.data.eval_sets)

    @property
    def selected_on(self) -> str:
        """The evaluation set that selects the best epoch: the validation part, or the benchmark's selection set."""
        return "val" if self.session.cfg.data.eval_mode == "val" else self.data.selection

    def train_epoch(self, epoch: int, skip: int, preemption: PreemptionFlag) -> dict:
        cfg, info = self.session.cfg, self.session.info
        self.loader.sampler.set_epoch(epoch)  # the epoch travels with each index to the (persistent) workers
        self.loader.sampler.set_start(skip * cfg.data.batch_size)
        self.epoch_max_lr = max(g["lr"] for g in self.optimizer.param_groups)
        max_batches = max(0, cfg.run.max_train_batches - skip) if cfg.run.max_train_batches else 0
        try:
            stats = train_one_epoch(self.model.ddp, self.loader, self.optimizer, self.criterion, info.device,
                                    self.session.amp, self.scaler, self.mixup, cfg.optim.grad_norm_clip, max_batches,
                                    progress=info.is_main, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                                    should_stop=preemption.requested, on_update=self.on_update,
                                    sync_every=cfg.run.log_interval, input_tail=self.data.train_tail,
                                    with_groups=self.with_groups)
        except NonFiniteLossError as e:
            self.logger.close()
            raise SystemExit(f"error: {e} ({self.ckpt.last_path} holds the last completed epoch)") from None
        if info.distributed:  # the log reports the run, not rank 0's share: one all-reduce per epoch
            totals = distributed.all_reduce_sum(torch.tensor([stats["loss"] * stats["images"], stats["images"]],
                                                             dtype=torch.float64, device=info.device)).tolist()
            stats.update(loss=totals[0] / max(totals[1], 1), images=int(totals[1]),
                         images_per_s=totals[1] / max(stats["seconds"], 1e-9))
        return stats

    def on_update(self) -> None:
        # the learning rate this update used (a per-update schedule changes it within the epoch)
        self.epoch_max_lr = max(self.epoch_max_lr, max(g["lr"] for g in self.optimizer.param_groups))
        self.num_updates += 1
        self.scheduler.step_update(self.num_updates)

    def end_epoch(self, stats: dict, progress: Progress) -> dict | None:
        """Schedule step, evaluation when due, log record and checkpoint; the metrics when evaluated."""
        cfg, info, done = self.session.cfg, self.session.info, progress.epoch
        record = {"epoch": done, "train_loss": stats["loss"], "train_steps": stats["steps"],
                  "train_images": stats["images"], "train_images_per_s": stats["images_per_s"],
                  "lr": self.optimizer.param_groups[0]["lr"], "time": time.time()}
        self.scheduler.step(done)
        metrics, is_best = None, False
        if done % cfg.run.eval_every == 0 or done == cfg.optim.epochs:
            # Before the end only the selection set is scored (the paper's runs would otherwise spend most of their
            # compute on evaluation); every set at the end.
            sets = self.data.sets_to_score(done == cfg.optim.epochs, cfg.data.eval_mode)
            per_head = evaluate_heads(self.session, self.model, sets)
            every_head = reports_every_head(cfg)
            metrics, first = results_layout(per_head, every_head), next(iter(per_head.values()))
            selected_on, metric = self.selected_on, self.data.selection_metric
            # An epoch trained at lr 0 is never selected (bgmask.training.selection), unless nothing else can be:
            # the last.
            trained = self.epoch_max_lr > 0
            key = selection_key(first[selected_on], metric)
            progress.history.append({"epoch": done, "score": key[0], "trained": trained})
            is_best = (trained and is_better(key, progress.best_key)) or (
                done == cfg.optim.epochs and progress.best_key is None)
            if is_best:
                progress.best_top1, progress.best_epoch, progress.best_metrics = key[0], done, metrics
                progress.best_key = key
            if every_head:
                # Each head has its own best epoch, so no one best.pt can stand for the run: probe runs keep last.pt.
                progress.best_probes = progress.best_probes or {}
                for head, head_sets in per_head.items():
                    previous = progress.best_probes.get(head, {"top1": -1.0})
                    if trained and head_sets[selected_on][metric] > previous["top1"]:
                        progress.best_probes[head] = {"epoch": done, "top1": head_sets[selected_on][metric]}
                is_best = False
                record["probes"] = {h: {n: brief(m) for n, m in ms.items()} for h, ms in per_head.items()}
            record.update({name: brief(m) for name, m in first.items()})
            if info.is_main:
                summary = ", ".join(f"{n} {m['top1']:.2f}%" + (f" (worst group {m['worst_group']:.1f}%)"
                                                               if m.get("worst_group") is not None else "")
                                    for n, m in first.items())
                print(f"epoch {done}/{cfg.optim.epochs}: loss {stats['loss']:.4f}, {summary}", flush=True)
        self.logger.log(record, step=done)
        # Only rank 0 writes; the others go on (the next epoch's first gradient all-reduce waits for it). A
        # preemption signal saves last.pt at once whatever --checkpoint_every says.
        write_last = done % cfg.run.checkpoint_every == 0 or done == cfg.optim.epochs
        self.ckpt.save(self.training_state(progress), done, is_best, write_last)
        return metrics

    def stop_preempted(self, epoch: int, steps: int, progress: Progress, preemption: PreemptionFlag) -> None:
        """Save the exact position (``steps`` optimizer steps into ``epoch``) and exit asking to be requeued."""
        self.ckpt.save_last(self.training_state(Progress(epoch, steps, progress.best_top1, progress.best_epoch,
                                                         progress.best_metrics, progress.best_probes,
                                                         progress.best_key, progress.history)))
        distributed.barrier()
        if self.session.info.is_main:
            print(f"Preempted (signal {preemption.signal_received}) in epoch {epoch + 1} after {steps} steps: saved "
                  f"{self.ckpt.last_path}; exiting with code {REQUEUE_EXIT_CODE} so the job can be requeued.",
                  flush=True)
        self.logger.close()
        distributed.cleanup()
        raise SystemExit(REQUEUE_EXIT_CODE)

    def training_state(self, progress: Progress) -> dict:
        cfg = self.session.cfg
        return {"model": self.model.state(), "weights_identity": self.model.weights_identity,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "criterion": self.criterion.state_dict() if isinstance(self.criterion, nn.Module) else None,
                "epoch": progress.epoch, "step": progress.step, "best_top1": progress.best_top1,
                "best_epoch": progress.best_epoch, "best_metrics": progress.best_metrics,
                "best_probes": progress.best_probes, "best_key": progress.best_key, "history": progress.history,
                "rng": gather_rng_states(self.session.info), "args": cfg.flat(),
                "model_arch": cfg.model.model_arch, "num_classes": self.data.num_classes}


def build_criterion(smoothing: float, mixup_active: bool, class_weights=None) -> nn.Module:
    """The loss every strategy shares: timm's label-smoothing or soft-target cross-entropy; with ``class_weights``
    (``--class_balance loss``) the class-weighted mean of the same per-sample losses (:mod:`bgmask.training.losses`)."""
    if class_weights is not None:
        return TrainingLoss(0.0 if mixup_active else smoothing, class_weights)
    if mixup_active:
        return SoftTargetCrossEntropy()  # mixup targets already carry the label smoothing
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(aug: AugConfig, smoothing: float, num_classes: int) -> MaskMixup | None:
    """timm mixup/cutmix (masks, when the batch has them, are mixed alike), or None."""
    if not aug.turn_on_mixup_or_cutmix:
        return None
    return MaskMixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, cutmix_minmax=aug.cutmix_minmax,
                     prob=aug.mixup_prob, switch_prob=aug.mixup_switch_prob, mode=aug.mixup_mode,
                     label_smoothing=smoothing, num_classes=num_classes)


def gather_rng_states(info: DistInfo) -> list | dict:
    """RNG states of every rank (each rank restores its own on resume)."""
    state = rng_state()
    if not info.distributed:
        return state
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states
