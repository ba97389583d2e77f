"""This process's part of a run: process group, device, seeds, CPU threads, mixed precision and the loaders' settings.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import yaml
from torch.utils.data import DataLoader

from bgmask.config import RUN_ONLY_SETTINGS, ModelConfig, TrainConfig
from bgmask.errors import ConfigError
from bgmask.infra import distributed
from bgmask.infra.distributed import DistInfo
from bgmask.infra.preemption import ignore_preemption_signals
from bgmask.training.engine import AmpSettings, IndexedDataset, ShardSampler

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


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
                     "pin_memory": info.device.type == "cuda", "worker_init_fn": ignore_preemption_signals,
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


def resolve_image_size(model: ModelConfig) -> int:
    """``--image_size`` or the model's pretrained default input size."""
    if model.image_size:
        return model.image_size
    try:
        cfg = timm.get_pretrained_cfg(model.model_arch)
    except Exception:  # noqa: BLE001 - unknown names are reported by the model factory
        cfg = None
    size = cfg.input_size[-1] if cfg is not None and getattr(cfg, "input_size", None) else 224
    return int(size)


def check_run_folder(session: Session) -> None:
    """Before a run writes anything into its folder: refuse one that holds another run (:func:`check_same_run`,
    checked by rank 0); every process stops together, rank 0 with the message."""
    error = None
    if session.info.is_main and not session.cfg.run.eval_only:
        try:
            check_same_run(session.cfg.flat(), session.snapshot_dir)
        except ConfigError as e:
            error = e
    if session.info.distributed:
        try:
            distributed.agree(error, session.info.device)
        except distributed.PeerFailure:
            if error is None:
                raise
    if error is not None:
        raise error


def check_same_run(settings: dict, snapshot_dir: Path) -> None:
    """Refuse to continue a run in ``snapshot_dir`` that was started with other settings (it would silently resume
    or overwrite it). Only settings that change the result count; one unknown to the older run is not compared."""
    previous_args = snapshot_dir / "args.yaml"
    started = (snapshot_dir / "last.pt").is_file() or (snapshot_dir / "results.json").is_file()
    if not (started and previous_args.is_file()):
        return
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
