"""The classifier run: data, model, training with exact resume, evaluation and results.json, for any strategy.

Strategies (:mod:`bgmask.strategies`) differ only in the folders they read (their data view) and the model wrapper;
everything here is shared, which is what keeps their comparison fair.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import NativeScaler
from torch import nn
from torch.utils.data import DataLoader, Subset

from bgmask import distributed
from bgmask.checkpoint import (
    CheckpointManager,
    atomic_torch_save,
    load_checkpoint,
    model_state,
    rng_state,
    set_rng_state,
    trained_state_keys,
)
from bgmask.config import RUN_ONLY_SETTINGS, AugConfig, ModelConfig, TrainConfig
from bgmask.data.cub import WATERBIRDS_SUB_PATH, CUBDataset, DatasetError, missing_folder_hint
from bgmask.data.sampling import ResumableDistributedSampler, SeededAugmentation
from bgmask.data.transforms import DeviceTail, build_eval_transform, build_train_transform
from bgmask.distributed import DistInfo
from bgmask.engine import AmpSettings, IndexedDataset, NonFiniteLossError, ShardSampler, evaluate, train_one_epoch
from bgmask.errors import ConfigError
from bgmask.logging import RunLogger, save_args, write_json_atomic
from bgmask.mixup import MaskMixup
from bgmask.models import create_classifier, weights_identity
from bgmask.optim import build_optimizer, build_scheduler, set_schedule_position
from bgmask.preemption import REQUEUE_EXIT_CODE, PreemptionFlag
from bgmask.probes import LATE, ProbeHeads, needs_masks, parse_heads
from bgmask.strategies import DataView, Strategy

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
GALLERY_IMAGES = 6  # attribution maps kept per run for collect_results' gallery


def run(cfg: TrainConfig, strategy: Strategy) -> dict | None:
    """Train (or with ``--eval_only`` evaluate) and write results.json. Returns the results on rank 0."""
    cfg.check(torch.cuda.is_available())
    strategy.check(cfg)
    view = strategy.data_view(cfg)
    check_probe_masks(cfg, view)
    session = start_session(cfg)
    image_size = resolve_image_size(cfg.model)
    data = image_folder_data(cfg, view, image_size, device_tail=session.device_tail)
    model, weights = build_model(session, strategy, data.num_classes, image_size)
    ckpt = CheckpointManager(session.snapshot_dir, cfg.run.save_every_n_epochs, enabled=session.info.is_main)
    if cfg.run.eval_only:
        outcome = evaluate_checkpoint(session, data, model, ckpt)
    else:
        outcome = train(session, data, model, ckpt, strategy)
    results = {**outcome, "model_arch": cfg.model.model_arch, "masking": strategy.name, "image_size": image_size,
               "num_classes": data.num_classes, "world_size": session.info.world_size, "weights": weights,
               "precision": session.amp.name, "device_tail": session.device_tail,
               **({} if data.waterbirds is not None else {"waterbirds": {"skipped": "--skip_ood_eval"}}),
               **strategy.results_info(cfg), "diagnostics": {"pending": "computed after the metrics are written"}}
    # The metrics are on disk before anything optional runs: a failure in the diagnostics never loses them.
    write_results(session, results)
    add_diagnostics(results, safe_diagnostics(session, model, strategy, data))
    write_results(session, results)
    distributed.cleanup()
    return results if session.info.is_main else None


def write_results(session: Session, results: dict) -> None:
    if session.info.is_main:
        write_json_atomic(results, session.snapshot_dir / "results.json")


def add_diagnostics(results: dict, diagnostics: dict) -> None:
    """Every probe head's own diagnostics; the top level holds the first head's, as its metrics."""
    if "probes" in results:
        per_head = {head: diagnostics for head in results["probes"]} if "failed" in diagnostics else diagnostics
        for head, head_diagnostics in per_head.items():
            results["probes"][head]["diagnostics"] = head_diagnostics
        diagnostics = per_head[next(iter(per_head))]
    results["diagnostics"] = diagnostics


def safe_diagnostics(session: Session, model: RunModel, strategy: Strategy, data: DataBundle) -> dict:
    """The diagnostics, or ``{"failed": reason}`` when they raise (reported, never fatal to the run)."""
    try:
        return run_diagnostics(session, *diagnostics_target(model.module, strategy, session.cfg), data)
    except Exception as e:  # noqa: BLE001 - optional step: any failure is recorded, the metrics stay
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
        warnings.warn(f"background diagnostics failed ({reason}); results.json keeps the metrics and records the "
                      f"failure. Rerun with --eval_only to compute them again.", stacklevel=2)
        return {"failed": reason}


# ----------------------------------------------------------------------------------------------- session, model
@dataclass
class Session:
    """This process's part of a run: the settings, where it runs, and what every phase shares."""

    cfg: TrainConfig
    info: DistInfo
    snapshot_dir: Path
    amp: AmpSettings
    loader_kwargs: dict
    device_tail: bool = False  # the training images are finished on the device (see --device_tail)

    def eval_loader(self, dataset, batch_size: int | None = None) -> DataLoader:
        """Every image exactly once across processes, in dataset order, with its index (for group metrics)."""
        kwargs = {**self.loader_kwargs, **({"batch_size": batch_size} if batch_size else {})}
        return DataLoader(IndexedDataset(dataset), shuffle=False, drop_last=False, **kwargs,
                          sampler=ShardSampler(len(dataset), self.info.rank, self.info.world_size))


def start_session(cfg: TrainConfig) -> Session:
    """Join the process group, check the run folder, pin CPU threads and seed this process."""
    snapshot_dir = Path(cfg.run.snapshot_dir)
    info = distributed.init_distributed(cfg.run.device)
    if info.is_main:
        check_writable_dir(snapshot_dir)
    distributed.barrier()
    set_cpu_threads(info, cfg.data.num_workers)
    seed_everything(cfg.run.seed + info.rank)
    amp = amp_settings(cfg, info)
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.optim.tf32
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest convolution algorithms once
    # A private generator: creating a loader iterator must not consume the global RNG (exact resume). Evaluation
    # loaders are built per evaluation and do not keep their workers; the training loader does (see train()).
    loader_kwargs = {"batch_size": cfg.data.batch_size, "num_workers": cfg.data.num_workers,
                     "pin_memory": info.device.type == "cuda",
                     "generator": torch.Generator().manual_seed(cfg.run.seed)}
    device_tail = cfg.aug.device_tail == "on" or (cfg.aug.device_tail == "auto" and info.device.type == "cuda")
    return Session(cfg, info, snapshot_dir, amp, loader_kwargs, device_tail)


def amp_settings(cfg: TrainConfig, info: DistInfo) -> AmpSettings:
    """Autocast in ``--amp_dtype`` with ``--use_amp`` on CUDA, and on CPU only with ``--amp_on_cpu``: a config
    written for GPU nodes (the regime files turn AMP on) runs in fp32 on a CPU, and says so."""
    active = cfg.optim.use_amp and (info.device.type == "cuda" or cfg.optim.amp_on_cpu)
    if cfg.optim.use_amp and not active and info.is_main:
        print(f"--use_amp applies on CUDA; this run is on {info.device.type} and trains in fp32 (--amp_on_cpu "
              f"--amp_dtype bfloat16 autocasts on CPU).", flush=True)
    return AmpSettings(info.device.type, AMP_DTYPES[cfg.optim.amp_dtype] if active else None)


@dataclass
class RunModel:
    """The strategy's model (``module``, what is saved) and what runs the forward (``ddp``: the same module, or its
    DistributedDataParallel wrapper when several processes train it)."""

    module: nn.Module
    ddp: nn.Module
    frozen_backbone: bool = False
    weights_identity: dict | None = None  # with a frozen backbone: what checkpoints (which omit it) build on

    def state(self) -> dict:
        """The model part of a checkpoint (without the frozen backbone, when there is one)."""
        return model_state(self.module, self.frozen_backbone)

    def load(self, state: dict, path, identity: dict | None) -> None:
        """Load a checkpoint's model part; one without the frozen backbone only onto the weights it was trained
        from."""
        if identity is not None and identity != self.weights_identity:
            raise ConfigError(f"checkpoint {path} holds the trained part of a model whose frozen backbone came from "
                              f"other weights ({identity} vs this run's {self.weights_identity}); start it from the "
                              f"same --pretrained_path / --start_weights (or seed for a random init), or use a new "
                              f"--snapshot_dir.")
        load_model_state(self.module, state, path, partial=identity is not None)


def build_model(session: Session, strategy: Strategy, num_classes: int, image_size: int) -> tuple[RunModel, dict]:
    """The classifier, wrapped by the strategy, on the device; and where its weights came from."""
    info, run_cfg = session.info, session.cfg.run
    classifier = create_classifier(session.cfg.model.spec(num_classes, image_size))
    if run_cfg.grad_checkpointing:
        classifier.backbone.set_grad_checkpointing(True)
    weights = classifier.backbone.weights_source
    if info.is_main:
        print(f"weights: {weights['source']}" + (f" ({weights['location']})" if weights["location"] else "")
              + (f", resampled: {weights['resampled']}" if weights["resampled"] else ""), flush=True)
    if session.cfg.model.probe_heads is not None:
        model = ProbeHeads(classifier, parse_heads(session.cfg.model.probe_heads), num_classes).to(info.device)
    else:
        model = strategy.wrap_model(session.cfg, classifier).to(info.device)
    if info.distributed and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif info.is_main:  # torch's SyncBatchNorm takes GPU tensors only
            print(f"BatchNorm statistics stay per process on {info.device.type} (SyncBatchNorm needs CUDA).",
                  flush=True)
    if run_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp = model
    if info.distributed and any(p.requires_grad for p in model.parameters()):
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if run_cfg.compile:
        ddp = torch.compile(ddp)
    frozen = session.cfg.model.freeze_backbone
    identity = weights_identity(session.cfg.model.spec(num_classes, image_size), weights, session.cfg.run.seed) \
        if frozen else None
    return RunModel(model, ddp, frozen, identity), weights


def check_probe_masks(cfg: TrainConfig, view: DataView) -> None:
    """``late:`` probe heads need masks loaded with the images, which only a strategy that loads masks provides."""
    if cfg.model.probe_heads is not None and needs_masks(parse_heads(cfg.model.probe_heads)) and view.masks is None:
        raise ConfigError(f"--probe_heads {cfg.model.probe_heads} has late: heads, which need masks loaded with the "
                          f"images: run them with late_masking/train.py (--mask_source precomputed or gt); its "
                          f"heads without late: are the baseline's.")


def resolve_image_size(model: ModelConfig) -> int:
    """``--image_size`` or the model's pretrained default input size."""
    if model.image_size:
        return model.image_size
    import timm

    try:
        cfg = timm.get_pretrained_cfg(model.model_arch)
    except Exception:  # noqa: BLE001 - unknown names are reported by the model factory
        cfg = None
    size = cfg.input_size[-1] if cfg is not None and getattr(cfg, "input_size", None) else 224
    return int(size)


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class DataBundle:
    """The datasets of one run. ``waterbirds`` is None only with ``--skip_ood_eval``."""

    train: torch.utils.data.Dataset
    cub_test: CUBDataset
    waterbirds: CUBDataset | None
    num_classes: int
    image_size: int
    val: torch.utils.data.Dataset | None = None
    train_tail: DeviceTail | None = None  # finishes the training images on the device (--device_tail)

    def eval_sets(self) -> dict:
        return {"cub_test": self.cub_test, **({"waterbirds": self.waterbirds} if self.waterbirds is not None else {})}


def image_folder_data(cfg: TrainConfig, view: DataView, image_size: int, device_tail: bool = False) -> DataBundle:
    """The datasets of a run: train (+ validation part), CUB test and, unless skipped, Waterbirds.

    With mask folders in ``view`` the items are ``(image, mask, label)``, transformed jointly: one transform for
    every strategy, which replays the image's random draws on the mask (the image tensor is the same). With
    ``device_tail`` the training images come as uint8 :class:`~bgmask.data.transforms.RawImage` and
    ``DataBundle.train_tail`` finishes them on the device.
    """
    data, aug = cfg.data, cfg.aug
    train_masks, test_masks, ood_masks = view.masks or (None, None, None)
    train_tf = build_train_transform(image_size, aug.augmentations_to_use, aug.aa, aug.color_jitter, aug.reprob,
                                     aug.remode, aug.recount, aug.train_interpolation, device_tail=device_tail)
    eval_tf = build_eval_transform(image_size, aug.crop_pct, aug.eval_interpolation)
    train = CUBDataset(data.data_path, "train", view.train, train_masks, transform=train_tf)
    train, val = split_train_val(train, data.train_split, cfg.run.seed)
    if val is not None:  # validation images use the eval transform
        val = Subset(CUBDataset(data.data_path, "train", view.train, train_masks, transform=eval_tf), val.indices)
    cub_test = CUBDataset(data.data_path, "test", view.test, test_masks, transform=eval_tf)
    waterbirds = None if data.skip_ood_eval else waterbirds_data(data.data_path, view.ood, ood_masks, eval_tf)
    if waterbirds is None:
        warnings.warn("Waterbirds (OOD) evaluation is skipped (--skip_ood_eval); results.json records it.",
                      stacklevel=2)
    return DataBundle(train=train, cub_test=cub_test, waterbirds=waterbirds, num_classes=train_num_classes(train),
                      image_size=image_size, val=val, train_tail=train_tf.device_tail)


def split_train_val(dataset: CUBDataset, fraction: float, seed: int):
    """Stratified split of the train split: ``fraction`` per class for training, the rest for validation."""
    if fraction >= 1:
        return dataset, None
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(dataset.labels):
        idx = rng.permutation(np.flatnonzero(dataset.labels == c))
        k = max(1, round(len(idx) * fraction))
        train_idx += idx[:k].tolist()
        val_idx += idx[k:].tolist()
    return Subset(dataset, sorted(train_idx)), Subset(dataset, sorted(val_idx))


def waterbirds_data(data_path: str, ood_sub: str | None, ood_masks: str | None, eval_tf) -> CUBDataset | None:
    """The Waterbirds (OOD) test set; None when the strategy has no Waterbirds folder.

    A missing folder stops the run before training, saying what supplies it. Without ``metadata.csv`` in the folder
    (a masked copy made before Waterbirds' metadata was there), the original release's file is used; without any,
    the run warns and results.json says that group metrics are absent.
    """
    if not ood_sub:
        return None
    root = Path(data_path)
    ood_dir = root / ood_sub  # also right for an absolute ood_sub
    if not ood_dir.is_dir():
        original = root / WATERBIRDS_SUB_PATH
        found = f" The original Waterbirds folder {original} is there, but this run evaluates on {ood_sub}/." \
            if ood_dir != original and original.is_dir() else ""
        raise DatasetError(f"The Waterbirds folder {ood_dir} does not exist.{found} "
                           f"{missing_folder_hint(root, ood_sub)} Or pass --skip_ood_eval to train without the "
                           f"Waterbirds evaluation (recorded in results.json).")
    metadata = ood_dir / "metadata.csv"
    if not metadata.is_file() and (root / WATERBIRDS_SUB_PATH / "metadata.csv").is_file():
        metadata = root / WATERBIRDS_SUB_PATH / "metadata.csv"
    if not metadata.is_file():
        warnings.warn(f"{ood_dir / 'metadata.csv'} is missing: Waterbirds top-1 is computed, but not the per-place "
                      f"and (y, place) group metrics. Copy metadata.csv from the {WATERBIRDS_SUB_PATH} release "
                      f"into {ood_dir}/.", stacklevel=2)
    return CUBDataset(root, "test", ood_sub, ood_masks, transform=eval_tf, skip_missing=True,
                      metadata_csv=metadata if metadata.is_file() else None)


def train_num_classes(ds) -> int:
    return (ds.dataset if isinstance(ds, Subset) else ds).num_classes


# ------------------------------------------------------------------------------------------------- evaluation
def evaluate_sets(session: Session, model: RunModel, sets: dict) -> dict:
    """Metrics per named dataset (Waterbirds also per place and group, when its metadata is there). With probe heads
    the top level holds the first head's metrics and ``probes`` every head's, ``{head: {dataset: metrics}}``."""
    heads = getattr(model.module, "probe_names", None)
    per_set = {}
    for name, ds in sets.items():
        result = evaluate(model.ddp, session.eval_loader(ds), session.info.device, session.amp,
                          places=getattr(ds, "places", None), waterbird_y=getattr(ds, "waterbird_y", None),
                          progress=session.info.is_main, desc=f"eval {name}")
        for metrics in (result.values() if heads else [result]):
            if getattr(ds, "skipped", None):
                metrics["skipped_missing_files"] = len(ds.skipped)
            if name == "waterbirds" and ds.places is None:
                metrics["group_metrics"] = f"absent: no metadata.csv in {ds.image_root} or the Waterbirds release"
        per_set[name] = result
    if not heads:
        return per_set
    return {**{name: result[heads[0]] for name, result in per_set.items()},
            "probes": {head: {name: result[head] for name, result in per_set.items()} for head in heads}}


def evaluate_checkpoint(session: Session, data: DataBundle, model: RunModel, ckpt: CheckpointManager) -> dict:
    """``--eval_only``: the metrics of ``--checkpoint``, or of the run's best (else last) checkpoint; a probe run's
    last."""
    run = session.cfg.run
    # A probe run has no one best epoch (each head has its own): its final weights are scored.
    best = ckpt.best_path if ckpt.best_path.is_file() and session.cfg.model.probe_heads is None else None
    path = Path(run.checkpoint) if run.checkpoint else best or ckpt.last_path
    if not path.is_file():
        raise ConfigError(f"--eval_only found no checkpoint: neither {ckpt.best_path} nor {ckpt.last_path} exists; "
                          f"pass --checkpoint FILE.")
    state = load_checkpoint(path)
    model.load(state["model"], path, state.get("weights_identity"))
    return {**evaluate_sets(session, model, data.eval_sets()), "epoch": state["epoch"], "checkpoint": str(path)}


# --------------------------------------------------------------------------------------------------- training
@dataclass
class Progress:
    """Where training stands: epochs done, optimizer steps done in the next epoch, and the best evaluation."""

    epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    best_metrics: dict | None = None
    best_probes: dict | None = None  # with probe heads: each head's best {"epoch", "top1"}


def train(session: Session, data: DataBundle, model: RunModel, ckpt: CheckpointManager, strategy: Strategy) -> dict:
    """Train from scratch or from ``last.pt``; the final metrics, the epoch count and the best epoch."""
    cfg, info = session.cfg, session.info
    scaler = NativeScaler(info.device.type) if session.amp.dtype == torch.float16 else None
    optimizer = build_optimizer(model.module, cfg.optim)
    if info.is_main:
        check_same_run(cfg.flat(), session.snapshot_dir)
    progress = resume(session, model, optimizer, scaler, ckpt)
    if info.is_main:
        save_args(cfg.flat(), session.snapshot_dir / "args.yaml")
    # Data order comes from the sampler (seed, epoch) and augmentation from (seed, epoch, image): both are
    # independent of the worker count, and a run stopped mid-epoch resumes at the exact batch. The sampler passes
    # the epoch with each index, so the workers can persist across epochs.
    train_set = SeededAugmentation(data.train, cfg.run.seed)
    sampler = ResumableDistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                          seed=cfg.run.seed, drop_last=False, with_epoch=True)
    mixup = build_mixup(cfg.aug, cfg.optim.smoothing, data.num_classes)
    # Upstream drops each process's last incomplete batch (every epoch's updates have the full batch size, and
    # mixup needs even batches); kept only where a process would otherwise get no batch at all.
    loader = DataLoader(train_set, sampler=sampler, drop_last=sampler.num_samples >= cfg.data.batch_size,
                        persistent_workers=cfg.data.num_workers > 0, **session.loader_kwargs)
    criterion = build_criterion(cfg.optim.smoothing, mixup is not None)
    updates_per_epoch = min(len(loader), cfg.run.max_train_batches or len(loader))
    scheduler = build_scheduler(optimizer, cfg.optim, updates_per_epoch)
    set_schedule_position(scheduler, progress.epoch, progress.epoch * updates_per_epoch + progress.step)
    logger = RunLogger(session.snapshot_dir, enabled=info.is_main, use_wandb=cfg.run.wandb,
                       wandb_kwargs={"project": cfg.run.wandb_project, "entity": cfg.run.wandb_entity,
                                     "group": cfg.run.group, "job_type": cfg.run.job_type, "config": cfg.flat(),
                                     "name": session.snapshot_dir.name})
    if info.is_main:
        n_train = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
        n_ood = len(data.waterbirds) if data.waterbirds else 0
        print(f"{strategy.name} | {cfg.model.model_arch} @ {data.image_size}px | {len(data.train)} train images, "
              f"{len(data.cub_test)} CUB test, {n_ood} Waterbirds | {n_train / 1e6:.2f}M trainable params | "
              f"{info.world_size} process(es) on {info.device}", flush=True)
    loop = EpochLoop(session, data, model, ckpt, optimizer, scaler, scheduler, criterion, mixup, loader, logger,
                     updates_per_epoch)
    return loop.run(progress)


def resume(session: Session, model: RunModel, optimizer, scaler, ckpt: CheckpointManager) -> Progress:
    """Restore model, optimizer, scaler, position and RNG from ``last.pt`` when there is one."""
    info = session.info
    state = ckpt.resume_state()
    if state is None:
        return Progress()
    model.load(state["model"], ckpt.last_path, state.get("weights_identity"))
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    progress = Progress(epoch=state["epoch"], step=state.get("step", 0), best_top1=state["best_top1"],
                        best_epoch=state["best_epoch"], best_metrics=state.get("best_metrics"),
                        best_probes=state.get("best_probes"))
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
    data: DataBundle
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
            last_metrics = evaluate_sets(self.session, self.model, self.data.eval_sets())
        best = {"epoch": progress.best_epoch, "top1": progress.best_top1,
                "selected_on": "val" if cfg.data.eval_mode == "val" else "cub_test"}
        if progress.best_probes is not None:
            best["probes"] = progress.best_probes
        return {**last_metrics, "epoch": cfg.optim.epochs, "best": best}

    def train_epoch(self, epoch: int, skip: int, preemption: PreemptionFlag) -> dict:
        cfg, info = self.session.cfg, self.session.info
        self.loader.sampler.set_epoch(epoch)  # the epoch travels with each index to the (persistent) workers
        self.loader.sampler.set_start(skip * cfg.data.batch_size)
        max_batches = max(0, cfg.run.max_train_batches - skip) if cfg.run.max_train_batches else 0
        try:
            stats = train_one_epoch(self.model.ddp, self.loader, self.optimizer, self.criterion, info.device,
                                    self.session.amp, self.scaler, self.mixup, cfg.optim.grad_norm_clip, max_batches,
                                    progress=info.is_main, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                                    should_stop=preemption.requested, on_update=self.on_update,
                                    sync_every=cfg.run.log_interval, input_tail=self.data.train_tail)
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
            final = done == cfg.optim.epochs
            sets = self.data.eval_sets()
            if cfg.data.eval_mode == "val":
                sets = {"val": self.data.val, **(sets if final else {})}
            elif not (final or cfg.run.eval_ood_each_time):
                sets = {"cub_test": sets["cub_test"]}
            metrics = evaluate_sets(self.session, self.model, sets)
            selected_on = "val" if cfg.data.eval_mode == "val" else "cub_test"
            top1 = metrics[selected_on]["top1"]
            is_best = top1 > progress.best_top1
            if is_best:
                progress.best_top1, progress.best_epoch, progress.best_metrics = top1, done, metrics
            if "probes" in metrics:
                # Each head has its own best epoch, so no one best.pt can stand for the run: probe runs keep last.pt.
                progress.best_probes = progress.best_probes or {}
                for head, head_metrics in metrics["probes"].items():
                    previous = progress.best_probes.get(head, {"top1": -1.0})
                    if head_metrics[selected_on]["top1"] > previous["top1"]:
                        progress.best_probes[head] = {"epoch": done, "top1": head_metrics[selected_on]["top1"]}
                is_best = False
            record.update({name: _brief(m) for name, m in metrics.items() if name != "probes"})
            if "probes" in metrics:
                record["probes"] = {h: {n: _brief(m) for n, m in ms.items()} for h, ms in metrics["probes"].items()}
            if info.is_main:
                summary = ", ".join(f"{n} {m['top1']:.2f}%" for n, m in metrics.items() if n != "probes")
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
                                                         progress.best_metrics, progress.best_probes)))
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
                "epoch": progress.epoch, "step": progress.step, "best_top1": progress.best_top1,
                "best_epoch": progress.best_epoch, "best_metrics": progress.best_metrics,
                "best_probes": progress.best_probes,
                "rng": gather_rng_states(self.session.info), "args": cfg.flat(),
                "model_arch": cfg.model.model_arch, "num_classes": self.data.num_classes}


def build_criterion(smoothing: float, mixup_active: bool) -> nn.Module:
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_threads(num_workers: int) -> int:
    """The intra-op threads a CPU process trains with: its share of the cores less one per data-loader worker
    (OpenMP threads spinning against busy workers slow training down by an order of magnitude); an explicit
    OMP_NUM_THREADS always wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores_per_process = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, cores_per_process - num_workers)


def set_cpu_threads(info: DistInfo, num_workers: int) -> None:
    """On CPU, train with :func:`cpu_threads` intra-op threads."""
    if info.device.type == "cpu":
        torch.set_num_threads(cpu_threads(num_workers))


def check_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to --snapshot_dir {path} ({e.strerror}); choose a writable folder.") from None


# ------------------------------------------------------------------------------------------------ diagnostics
def diagnostics_target(model: nn.Module, strategy: Strategy, cfg: TrainConfig) -> tuple[nn.Module, str | None, str]:
    """The model the diagnostics score, how it takes its inputs (see :class:`~bgmask.strategies.Strategy`), and a
    name for it. With probe heads: all of them (the views go through the backbone once for every head), with the
    masks loaded when a ``late:`` head needs them."""
    if not isinstance(model, ProbeHeads):
        return model, strategy.diagnostics_input, strategy.name
    kind = "early" if strategy.diagnostics_input == "early" else "late" if needs_masks(model.probe_names) else "none"
    return model, kind, strategy.name


def run_diagnostics(session: Session, model: nn.Module, kind: str | None, name: str, data: DataBundle) -> dict:
    """Background-reliance diagnostics of the final weights (:mod:`bgmask.diagnostics`), or why they are absent.

    Every test image is scored once per view on any number of processes; rank 0 keeps a few attribution maps in
    ``attribution_gallery.pt`` for ``collect_results`` (of the first head, with probe heads). With probe heads the
    result is ``{head: diagnostics}``: each head is scored as its single-head run's model would be.
    """
    cfg, info = session.cfg.diagnostics, session.info
    heads = getattr(model, "probe_names", None)
    skipped = None
    if cfg.diagnostics == "none":
        skipped = {"skipped": "--diagnostics none"}
    elif kind is None:
        skipped = {"skipped": f"the {name!r} strategy declares no diagnostics input"}
    root = Path(session.cfg.data.data_path)
    if skipped is None and not (root / cfg.diagnostics_mask_sub_path).is_dir():
        hint = missing_folder_hint(root, cfg.diagnostics_mask_sub_path)
        warnings.warn(f"background diagnostics skipped: no bird masks in {root / cfg.diagnostics_mask_sub_path}. "
                      f"{hint}", stacklevel=2)
        skipped = {"skipped": f"no masks in {root / cfg.diagnostics_mask_sub_path}"}
    if skipped is not None:
        return {head: dict(skipped) for head in heads} if heads else skipped
    from bgmask import diagnostics

    seed = session.cfg.run.seed
    layout = getattr(model, "classifier", model).adapter.layout
    eval_tf = data.cub_test.transform
    out = {head: {} for head in heads or [None]}
    for view in diagnostics.VIEWS:
        ds = diagnostics.DiagnosticViews(root, cfg.diagnostics_mask_sub_path, view, kind, eval_tf, seed)
        metrics = evaluate(model, session.eval_loader(ds), info.device, session.amp, progress=info.is_main,
                           desc=f"diagnostics {view}")
        for head, m in (metrics.items() if heads else [(None, metrics)]):
            out[head][view] = {"top1": m["top1"], "correct": m["correct"], "num_images": m["num_images"]}
    ds = diagnostics.DiagnosticViews(root, cfg.diagnostics_mask_sub_path, "original", kind, eval_tf, seed,
                                     with_mask=True)
    for k, head in enumerate(heads or [None]):
        # A probe head's attribution is that of its single-head run: late heads take the mask, the others do not.
        head_model = model if head is None else model.single_head_model(head)
        head_kind = kind if head is None else "late" if head.startswith(LATE) else "early" if kind == "early" \
            else "none"
        keep = GALLERY_IMAGES if info.is_main and k == 0 else 0
        batch = attribution_batch_size(session.cfg)
        share, counted, gallery = diagnostics.fg_attribution(head_model, session.eval_loader(ds, batch), info.device,
                                                             head_kind, layout, gallery=keep, progress=info.is_main,
                                                             autocast=session.amp.autocast)
        result = out[head]
        result["bg_gap"] = result["mixed_same"]["top1"] - result["mixed_rand"]["top1"]
        result.update(fg_attribution=share, fg_attribution_images=counted,
                      attribution="|gradient x input|" if layout == "tokens" else "Grad-CAM on the pooled feature map",
                      model=name if head is None else f"{name}, probe head {head}")
        if keep:
            gallery["paths"] = [ds.base.paths[i] for i in gallery["index"]]
            atomic_torch_save(gallery, diagnostics.gallery_path(session.snapshot_dir))
    return out if heads else out[None]


# ------------------------------------------------------------------------------------------ resume and checks
def attribution_batch_size(cfg: TrainConfig) -> int:
    """Images per attribution pass (a forward that keeps its activations for a backward to the input).

    A fine-tuning step held the same activations at the training batch, plus gradients and optimiser state; a
    frozen backbone held none, so its attribution runs at an eighth of the batch (docs/scale.md measures both
    against the training step at the paper's sizes). An out-of-memory batch is halved anyway
    (:func:`bgmask.diagnostics.attribution_in_chunks`)."""
    if cfg.diagnostics.diagnostics_batch_size:
        return cfg.diagnostics.diagnostics_batch_size
    return max(1, cfg.data.batch_size // 8) if cfg.model.freeze_backbone else cfg.data.batch_size


def check_same_run(settings: dict, snapshot_dir: Path) -> None:
    """Refuse to continue a run in ``snapshot_dir`` that was started with other settings (it would silently resume
    or overwrite it). Only settings that change the result count; one unknown to the older run is not compared."""
    previous_args = snapshot_dir / "args.yaml"
    started = (snapshot_dir / "last.pt").is_file() or (snapshot_dir / "results.json").is_file()
    if not (started and previous_args.is_file()):
        return
    import yaml

    try:
        previous = yaml.safe_load(previous_args.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{previous_args} is unreadable ({e}); it describes the run in {snapshot_dir}. Delete the "
                          f"folder to start over, or use another --snapshot_dir.") from None
    keys = sorted(set(previous) & set(settings) - RUN_ONLY_SETTINGS)
    changed = [f"--{k} {previous[k]!r} -> {settings[k]!r}" for k in keys
               if _normalise(previous[k]) != _normalise(settings[k])]
    if changed:
        raise ConfigError(f"--snapshot_dir {snapshot_dir} holds a run started with other settings, which this run "
                          f"would resume or overwrite:\n    " + "\n    ".join(changed) + "\n  Use a new "
                          f"--snapshot_dir, or delete {snapshot_dir} to start over. (Same settings resume the run.)")


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def _brief(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in ("top1", "num_images", "worst_group", "per_place")}


def gather_rng_states(info: DistInfo) -> list | dict:
    """RNG states of every rank (each rank restores its own on resume)."""
    state = rng_state()
    if not info.distributed:
        return state
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def load_model_state(model: nn.Module, state: dict, path, partial: bool = False) -> None:
    """Load weights, with an error that says which checkpoint does not fit and why. A ``partial`` state holds
    exactly what training changes (:func:`~bgmask.checkpoint.trained_state_keys`); the rest stays as built."""
    target = model.state_dict()
    if partial:
        target = {k: v for k, v in target.items() if k in trained_state_keys(model)}
    mismatched = [k for k, v in state.items() if k in target and target[k].shape != v.shape]
    missing, unexpected = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    if mismatched or missing or unexpected:
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(f"{len(mismatched)} tensors differ in shape (e.g. {k}: checkpoint "
                           f"{tuple(state[k].shape)} vs model {tuple(target[k].shape)})")
        if missing:
            details.append(f"{len(missing)} model tensors missing from the checkpoint (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise ConfigError(f"checkpoint {path} does not match this model: {'; '.join(details)}. It was saved for "
                          f"another --model_arch, head or class count; use a matching checkpoint or a new "
                          f"--snapshot_dir.")
    model.load_state_dict(state, strict=not partial)
