"""The classifier run: build data, model, optimizer and scheduler from args, train with resume, evaluate, report.

Strategies (baseline, early masking, late masking) differ only in the datasets they read and the model wrapper,
given as a :class:`Strategy`; everything else here is shared.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import NativeScaler
from torch import nn
from torch.utils.data import DataLoader, Subset

from bgmask import distributed
from bgmask.checkpoint import (
    CheckpointError,
    CheckpointManager,
    atomic_torch_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from bgmask.cli import UsageError, check_classifier_args
from bgmask.data.cub import WATERBIRDS_SUB_PATH, CUBDataset, DatasetError, missing_folder_hint
from bgmask.data.sampling import ResumableDistributedSampler, SeededAugmentation
from bgmask.data.transforms import build_eval_transform, build_train_transform
from bgmask.engine import AmpSettings, IndexedDataset, NonFiniteLossError, ShardSampler, evaluate, train_one_epoch
from bgmask.logging import RunLogger, save_args, write_json_atomic
from bgmask.mixup import MaskMixup
from bgmask.models import ModelError, ModelSpec, WeightsError, create_classifier, vit_head_from_flags
from bgmask.optim import OptimConfig, build_optimizer, build_scheduler, set_schedule_position
from bgmask.preemption import REQUEUE_EXIT_CODE, PreemptionFlag


@dataclass
class DataBundle:
    """The datasets of one run. ``waterbirds`` is None only with ``--skip_ood_eval``."""

    train: torch.utils.data.Dataset
    cub_test: CUBDataset
    waterbirds: CUBDataset | None
    num_classes: int
    val: torch.utils.data.Dataset | None = None


@dataclass
class Strategy:
    """What a masking strategy changes.

    Attributes:
        masking: label written to results.json ('none', 'early', 'late').
        build_data: ``(args, image_size) -> DataBundle``.
        build_model: ``(args, classifier) -> nn.Module`` wrapping the plain classifier (identity by default).
        extra_results: merged into results.json (e.g. mask source).
    """

    masking: str
    build_data: Callable[[argparse.Namespace, int], DataBundle]
    build_model: Callable[[argparse.Namespace, nn.Module], nn.Module] = lambda args, model: model
    extra_results: dict = field(default_factory=dict)


def model_spec(args, num_classes: int) -> ModelSpec:
    return ModelSpec(arch=args.model_arch, num_classes=num_classes, image_size=args.image_size,
                     pretrained=args.start_weights == "DEFAULT", pretrained_path=args.pretrained_path,
                     drop_path=args.drop_path, vit_head=vit_head_from_flags(args.class_token_only,
                                                                           args.patch_tokens_only),
                     freeze_backbone=args.freeze_backbone)


def resolve_image_size(args) -> int:
    """``--image_size`` or the model's pretrained default input size."""
    if args.image_size:
        return args.image_size
    import timm

    try:
        cfg = timm.get_pretrained_cfg(args.model_arch)
    except Exception:  # noqa: BLE001 - unknown names are reported by the model factory
        cfg = None
    size = cfg.input_size[-1] if cfg is not None and getattr(cfg, "input_size", None) else 224
    return int(size)


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


def image_folder_data(args, image_size: int, train_sub: str, test_sub: str, ood_sub: str | None,
                      mask_subs: tuple[str, str, str] | None = None) -> DataBundle:
    """The datasets of a run: train (+ validation part), CUB test and, when its folder exists, Waterbirds.

    Args:
        train_sub, test_sub, ood_sub: image folders (baseline: images; early masking: the masked folders).
        mask_subs: optional mask folders for (train, test, ood); the items are then ``(image, mask, label)``,
            transformed jointly (late masking with precomputed or ground-truth masks).
    """
    train_masks, test_masks, ood_masks = mask_subs or (None, None, None)
    # One transform for every strategy: with masks it replays the image's draws on them (same image tensor).
    train_tf = build_train_transform(image_size, args.augmentations_to_use, args.aa, args.color_jitter,
                                     args.reprob, args.remode, args.recount, args.train_interpolation)
    eval_tf = build_eval_transform(image_size, args.crop_pct, args.eval_interpolation)
    train = CUBDataset(args.data_path, "train", train_sub, train_masks, transform=train_tf)
    train, val = split_train_val(train, args.train_split, args.seed)
    if val is not None:  # validation images use the eval transform
        val = Subset(CUBDataset(args.data_path, "train", train_sub, train_masks, transform=eval_tf), val.indices)
    cub_test = CUBDataset(args.data_path, "test", test_sub, test_masks, transform=eval_tf)
    waterbirds = waterbirds_data(args, ood_sub, ood_masks, eval_tf)
    return DataBundle(train=train, cub_test=cub_test, waterbirds=waterbirds, num_classes=train_num_classes(train),
                      val=val)


def waterbirds_data(args, ood_sub: str | None, ood_masks: str | None, eval_tf) -> CUBDataset | None:
    """The Waterbirds (OOD) test set, or None only when ``--skip_ood_eval`` asks for it.

    A missing folder stops the run before training, saying what supplies it. Without ``metadata.csv`` in the folder
    (a masked copy made before Waterbirds' metadata was there), the original release's file is used; without any,
    the run warns and results.json says that group metrics are absent.
    """
    if args.skip_ood_eval or not ood_sub:
        warnings.warn("Waterbirds (OOD) evaluation is skipped (--skip_ood_eval); results.json records it.",
                      stacklevel=2)
        return None
    root = Path(args.data_path)
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


def build_criterion(args, mixup_active: bool) -> nn.Module:
    if mixup_active:
        return SoftTargetCrossEntropy()  # mixup targets already carry the label smoothing
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(args, num_classes: int) -> MaskMixup | None:
    """timm mixup/cutmix (masks, when the batch has them, are mixed alike), or None."""
    if not args.turn_on_mixup_or_cutmix:
        return None
    return MaskMixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                     prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                     label_smoothing=args.smoothing, num_classes=num_classes)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_cpu_threads(info, num_workers: int) -> None:
    """On CPU, leave one core per data-loader worker: OpenMP threads spinning against busy workers slow training
    down by an order of magnitude. An explicit OMP_NUM_THREADS always wins."""
    if info.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores_per_process = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(max(1, cores_per_process - num_workers))


def check_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --snapshot_dir {path} ({e.strerror}); choose a writable folder.") from None


def run(args: argparse.Namespace, strategy: Strategy) -> dict | None:
    """Train (or with ``--eval_only`` evaluate) and write results.json. Returns the results on rank 0."""
    check_classifier_args(args, torch.cuda.is_available())
    snapshot_dir = Path(args.snapshot_dir)
    info = distributed.init_distributed(args.device)
    if info.is_main:
        check_writable_dir(snapshot_dir)
    distributed.barrier()
    set_cpu_threads(info, args.num_workers)
    seed_everything(args.seed + info.rank)
    image_size = resolve_image_size(args)
    data = strategy.build_data(args, image_size)
    classifier = create_classifier(model_spec(args, data.num_classes))
    weights = classifier.backbone.weights_source
    if info.is_main:
        print(f"weights: {weights['source']}" + (f" ({weights['location']})" if weights["location"] else "")
              + (f", resampled: {weights['resampled']}" if weights["resampled"] else ""), flush=True)
    model = strategy.build_model(args, classifier).to(info.device)
    if info.distributed and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp_model = model
    if info.distributed and any(p.requires_grad for p in model.parameters()):
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    amp = AmpSettings(info.device.type, {"float16": torch.float16, "bfloat16": torch.bfloat16}[args.amp_dtype]
                      if args.use_amp else None)
    scaler = NativeScaler(info.device.type) if args.use_amp and args.amp_dtype == "float16" else None
    optim_cfg = OptimConfig.from_args(args)
    try:
        optimizer = build_optimizer(model, optim_cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    ckpt = CheckpointManager(snapshot_dir, args.save_every_n_epochs, enabled=info.is_main)
    # A private generator: creating a loader iterator must not consume the global RNG (exact resume).
    loader_kwargs = {"batch_size": args.batch_size, "num_workers": args.num_workers,
                     "pin_memory": info.device.type == "cuda", "persistent_workers": False,
                     "generator": torch.Generator().manual_seed(args.seed)}

    def eval_loader(ds):
        return DataLoader(IndexedDataset(ds), sampler=ShardSampler(len(ds), info.rank, info.world_size),
                          shuffle=False, drop_last=False, **loader_kwargs)

    eval_sets = {"cub_test": data.cub_test}
    if data.waterbirds is not None:
        eval_sets["waterbirds"] = data.waterbirds
    ood_note = {} if data.waterbirds is not None else {"waterbirds": {"skipped": "--skip_ood_eval"}}

    def run_eval(sets: dict) -> dict:
        out = {}
        for name, ds in sets.items():
            out[name] = evaluate(ddp_model, eval_loader(ds), info.device, amp,
                                 places=getattr(ds, "places", None), waterbird_y=getattr(ds, "waterbird_y", None),
                                 progress=info.is_main, desc=f"eval {name}")
            if getattr(ds, "skipped", None):
                out[name]["skipped_missing_files"] = len(ds.skipped)
            if name == "waterbirds" and ds.places is None:
                out[name]["group_metrics"] = f"absent: no metadata.csv in {ds.image_root} or the Waterbirds release"
        return out

    results_base = {"model_arch": args.model_arch, "masking": strategy.masking, "image_size": image_size,
                    "num_classes": data.num_classes, "world_size": info.world_size, "weights": weights, **ood_note,
                    **strategy.extra_results}

    if args.eval_only:
        path = Path(args.checkpoint) if args.checkpoint else ckpt.best_path if ckpt.best_path.is_file() \
            else ckpt.last_path
        if not path.is_file():
            raise UsageError(f"--eval_only found no checkpoint: neither {ckpt.best_path} nor {ckpt.last_path} "
                             f"exists; pass --checkpoint FILE.")
        state = load_checkpoint(path)
        load_model_state(model, state["model"], path)
        metrics = run_eval(eval_sets)
        results = {**metrics, "epoch": state["epoch"], "checkpoint": str(path), **results_base,
                   "diagnostics": run_diagnostics(args, model, strategy.masking, data, info, amp, loader_kwargs)}
        if info.is_main:
            write_json_atomic(results, snapshot_dir / "results.json")
        distributed.cleanup()
        return results if info.is_main else None

    start_epoch, start_step, best_top1, best_epoch, history_best = 0, 0, -1.0, 0, None
    if info.is_main:
        check_same_run(args, snapshot_dir)
    resumed = ckpt.resume_state()
    if resumed is not None:
        load_model_state(model, resumed["model"], ckpt.last_path)
        optimizer.load_state_dict(resumed["optimizer"])
        if scaler is not None and resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        start_epoch, best_top1, best_epoch = resumed["epoch"], resumed["best_top1"], resumed["best_epoch"]
        start_step = resumed.get("step", 0)  # optimizer steps already done in epoch start_epoch + 1
        history_best = resumed.get("best_metrics")
        rng = resumed["rng"] if isinstance(resumed["rng"], list) else [resumed["rng"]]
        if len(rng) == info.world_size:
            set_rng_state(rng[info.rank])
        elif info.is_main:
            warnings.warn(f"{ckpt.last_path} was written by {len(rng)} process(es), this run has "
                          f"{info.world_size}: training continues, but not bit-identically to an uninterrupted run.",
                          stacklevel=2)
        if info.is_main:
            where = f" + {start_step} steps" if start_step else ""
            print(f"Resumed from {ckpt.last_path} after epoch {start_epoch}/{args.epochs}{where}", flush=True)
    if info.is_main:
        save_args(args, snapshot_dir / "args.yaml")

    # Data order comes from the sampler (seed, epoch) and augmentation from (seed, epoch, image): both are
    # independent of the worker count, and a run stopped mid-epoch resumes at the exact batch.
    train_set = SeededAugmentation(data.train, args.seed)
    train_sampler = ResumableDistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank,
                                                shuffle=True, seed=args.seed, drop_last=False)
    batch_transform = build_mixup(args, data.num_classes)
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=batch_transform is not None
                              and len(data.train) // info.world_size >= args.batch_size, **loader_kwargs)
    criterion = build_criterion(args, batch_transform is not None)
    updates_per_epoch = min(len(train_loader), args.max_train_batches or len(train_loader))
    scheduler = build_scheduler(optimizer, optim_cfg, updates_per_epoch)
    num_updates = start_epoch * updates_per_epoch + start_step
    set_schedule_position(scheduler, start_epoch, num_updates)

    def on_update():
        nonlocal num_updates
        num_updates += 1
        scheduler.step_update(num_updates)
    logger = RunLogger(snapshot_dir, enabled=info.is_main, use_wandb=args.wandb,
                       wandb_kwargs={"project": args.wandb_project, "entity": args.wandb_entity,
                                     "group": args.group, "job_type": args.job_type, "config": vars(args),
                                     "name": snapshot_dir.name})
    if info.is_main:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{strategy.masking} | {args.model_arch} @ {image_size}px | {len(data.train)} train images, "
              f"{len(data.cub_test)} CUB test, {len(data.waterbirds) if data.waterbirds else 0} Waterbirds | "
              f"{n_train / 1e6:.2f}M trainable params | {info.world_size} process(es) on {info.device}", flush=True)

    metrics = history_best or {}
    last_metrics = None
    preemption = PreemptionFlag(distributed=info.distributed, device=info.device)

    def training_state(epoch_done: int, step: int, best_metrics) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch_done, "step": step, "best_top1": best_top1, "best_epoch": best_epoch,
                "best_metrics": best_metrics, "rng": gather_rng_states(info), "args": vars(args),
                "model_arch": args.model_arch, "num_classes": data.num_classes}

    for epoch in range(start_epoch, args.epochs):
        train_set.set_epoch(epoch)
        train_sampler.set_epoch(epoch)
        skip = start_step if epoch == start_epoch else 0
        train_sampler.set_start(skip * args.batch_size)
        max_batches = max(0, args.max_train_batches - skip) if args.max_train_batches else 0
        try:
            stats = train_one_epoch(ddp_model, train_loader, optimizer, criterion, info.device, amp, scaler,
                                    batch_transform, args.grad_norm_clip, max_batches,
                                    progress=info.is_main, desc=f"epoch {epoch + 1}/{args.epochs}",
                                    should_stop=preemption.requested, on_update=on_update)
        except NonFiniteLossError as e:
            logger.close()
            raise SystemExit(f"error: {e} ({ckpt.last_path} holds the last completed epoch)") from None
        if not stats["completed"]:  # preempted: save the exact position and ask to be requeued
            ckpt.save_last(training_state(epoch, skip + stats["steps"], metrics))
            distributed.barrier()
            if info.is_main:
                print(f"Preempted (signal {preemption.signal_received}) in epoch {epoch + 1} after "
                      f"{skip + stats['steps']} steps: saved {ckpt.last_path}; exiting with code "
                      f"{REQUEUE_EXIT_CODE} so the job can be requeued.", flush=True)
            logger.close()
            distributed.cleanup()
            raise SystemExit(REQUEUE_EXIT_CODE)
        done = epoch + 1
        record = {"epoch": done, "train_loss": stats["loss"], "train_images_per_s": stats["images_per_s"],
                  "lr": optimizer.param_groups[0]["lr"], "time": time.time()}
        scheduler.step(done)
        is_best = False
        if done % args.eval_every == 0 or done == args.epochs:
            sets = dict(eval_sets)
            if args.eval_mode == "val":
                sets = {"val": data.val, **({} if done < args.epochs else eval_sets)}
            last_metrics = run_eval(sets)
            key = "val" if args.eval_mode == "val" else "cub_test"
            top1 = last_metrics[key]["top1"]
            is_best = top1 > best_top1
            if is_best:
                best_top1, best_epoch, metrics = top1, done, last_metrics
            record.update({name: _brief(m) for name, m in last_metrics.items()})
            if info.is_main:
                summary = ", ".join(f"{n} {m['top1']:.2f}%" for n, m in last_metrics.items())
                print(f"epoch {done}/{args.epochs}: loss {stats['loss']:.4f}, {summary}", flush=True)
        logger.log(record, step=done)
        ckpt.save(training_state(done, 0, metrics), done, is_best)
        distributed.barrier()
    preemption.restore()

    if last_metrics is None:  # resumed after the final epoch: evaluate the final weights again
        last_metrics = run_eval(eval_sets)
    results = {**{k: v for k, v in last_metrics.items()}, "epoch": args.epochs,
               "best": {"epoch": best_epoch, "top1": best_top1,
                        "selected_on": "val" if args.eval_mode == "val" else "cub_test"},
               **results_base,
               "diagnostics": run_diagnostics(args, model, strategy.masking, data, info, amp, loader_kwargs)}
    if info.is_main:
        write_json_atomic(results, snapshot_dir / "results.json")
    logger.close()
    distributed.cleanup()
    return results if info.is_main else None


GALLERY_IMAGES = 6  # attribution maps kept per run for collect_results' gallery


def run_diagnostics(args, model: nn.Module, masking: str, data: DataBundle, info, amp, loader_kwargs) -> dict:
    """Background-reliance diagnostics of the final weights (:mod:`bgmask.diagnostics`), or why they are absent.

    Every test image is scored once per view on any number of processes; rank 0 keeps a few attribution maps in
    ``attribution_gallery.pt`` for ``collect_results``.
    """
    if args.diagnostics == "none":
        return {"skipped": "--diagnostics none"}
    root = Path(args.data_path)
    if not (root / args.diagnostics_mask_sub_path).is_dir():
        hint = missing_folder_hint(root, args.diagnostics_mask_sub_path)
        warnings.warn(f"background diagnostics skipped: no bird masks in {root / args.diagnostics_mask_sub_path}. "
                      f"{hint}", stacklevel=2)
        return {"skipped": f"no masks in {root / args.diagnostics_mask_sub_path}"}
    from bgmask import diagnostics

    strategy = masking if masking in ("early", "late") else "none"
    layout = getattr(model, "classifier", model).adapter.layout
    eval_tf, out = data.cub_test.transform, {}
    for view in diagnostics.VIEWS:
        ds = diagnostics.DiagnosticViews(root, args.diagnostics_mask_sub_path, view, strategy, eval_tf, args.seed)
        loader = DataLoader(IndexedDataset(ds), sampler=ShardSampler(len(ds), info.rank, info.world_size),
                            **loader_kwargs)
        metrics = evaluate(model, loader, info.device, amp, progress=info.is_main, desc=f"diagnostics {view}")
        out[view] = {"top1": metrics["top1"], "num_images": metrics["num_images"]}
    out["bg_gap"] = out["mixed_same"]["top1"] - out["mixed_rand"]["top1"]
    ds = diagnostics.DiagnosticViews(root, args.diagnostics_mask_sub_path, "original", strategy, eval_tf, args.seed,
                                     with_mask=True)
    loader = DataLoader(IndexedDataset(ds), sampler=ShardSampler(len(ds), info.rank, info.world_size),
                        **loader_kwargs)
    share, counted, gallery = diagnostics.fg_attribution(model, loader, info.device, strategy, layout,
                                                         gallery=GALLERY_IMAGES if info.is_main else 0,
                                                         progress=info.is_main)
    out["fg_attribution"] = share
    out["fg_attribution_images"] = counted
    out["attribution"] = "|gradient x input|" if layout == "tokens" else "Grad-CAM on the pooled feature map"
    if info.is_main:
        gallery["paths"] = [ds.base.paths[i] for i in gallery["index"]]
        atomic_torch_save(gallery, diagnostics.gallery_path(Path(args.snapshot_dir)))
    return out


# Flags that change how a run is executed or logged, not what it computes.
RUN_ONLY_FLAGS = frozenset({"config", "snapshot_dir", "num_workers", "device", "resume_training", "eval_only",
                            "checkpoint", "save_every_n_epochs", "log_interval", "wandb", "wandb_project",
                            "wandb_entity", "job_type", "group", "diagnostics", "diagnostics_mask_sub_path"})


def check_same_run(args, snapshot_dir: Path) -> None:
    """Refuse to continue a run in ``snapshot_dir`` that was started with other settings (it would silently resume
    or overwrite it). Only flags that change the result count; a flag unknown to the older run is not compared."""
    previous_args = snapshot_dir / "args.yaml"
    started = (snapshot_dir / "last.pt").is_file() or (snapshot_dir / "results.json").is_file()
    if not (started and previous_args.is_file()):
        return
    import yaml

    try:
        previous = yaml.safe_load(previous_args.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{previous_args} is unreadable ({e}); it describes the run in {snapshot_dir}. Delete the "
                         f"folder to start over, or use another --snapshot_dir.") from None
    current = vars(args)
    changed = [f"--{k} {previous[k]!r} -> {current[k]!r}" for k in sorted(set(previous) & set(current) - RUN_ONLY_FLAGS)
               if _normalise(previous[k]) != _normalise(current[k])]
    if changed:
        raise UsageError(f"--snapshot_dir {snapshot_dir} holds a run started with other settings, which this run "
                         f"would resume or overwrite:\n    " + "\n    ".join(changed) + "\n  Use a new --snapshot_dir, "
                         f"or delete {snapshot_dir} to start over. (Same settings resume the run.)")


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def _brief(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in ("top1", "num_images", "worst_group", "per_place")}


def gather_rng_states(info) -> list | dict:
    """RNG states of every rank (each rank restores its own on resume)."""
    state = rng_state()
    if not info.distributed:
        return state
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def load_model_state(model: nn.Module, state: dict, path) -> None:
    """Load weights, with an error that says which checkpoint does not fit and why."""
    target = model.state_dict()
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
        raise UsageError(f"checkpoint {path} does not match this model: {'; '.join(details)}. It was saved for "
                         f"another --model_arch, head or class count; use a matching checkpoint or a new "
                         f"--snapshot_dir.")
    model.load_state_dict(state)


def main_guard(fn: Callable[[], object]) -> int:
    """Run an entry point, turning user errors into a one-paragraph message and exit code 2."""
    try:
        fn()
    except (UsageError, DatasetError, CheckpointError, ModelError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
