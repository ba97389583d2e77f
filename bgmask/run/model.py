"""The run's model: the strategy's model (or probe heads) on the device, with DDP, SyncBatchNorm, channels-last and
torch.compile as configured, and how its checkpoints are saved and loaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bgmask.config import TrainConfig
from bgmask.data.needs import DataNeeds
from bgmask.errors import ConfigError
from bgmask.infra.checkpoint import model_state, trained_state_keys
from bgmask.models import create_classifier
from bgmask.models.heads import needs_masks, parse_heads
from bgmask.models.probes import ProbeHeads
from bgmask.models.weights import weights_identity
from bgmask.run.session import Session
from bgmask.strategies import Strategy


@dataclass
class RunModel:
    """The strategy's model (``module``, what is saved) and what runs the forward (``ddp``: the same module, or its
    DistributedDataParallel wrapper when several processes train it)."""

    module: nn.Module
    ddp: nn.Module
    frozen_backbone: bool = False
    weights_identity: dict | None = None  # with a frozen backbone: what checkpoints (which omit it) build on

    @property
    def for_eval(self) -> nn.Module:
        """What evaluation runs: the forward without the DDP wrapper, whose forward may broadcast buffers (a
        collective that ranks with different numbers of evaluation batches would not all join)."""
        inner = getattr(self.ddp, "_orig_mod", self.ddp)
        return self.module if isinstance(inner, nn.parallel.DistributedDataParallel) else self.ddp

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
    model = strategy.wrap_model(session.cfg, classifier)
    if session.cfg.model.probe_heads is not None:  # the heads read the strategy's model's backbone and mask rule
        model = ProbeHeads.around(model, parse_heads(session.cfg.model.probe_heads), num_classes)
    model = model.to(info.device)
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
        # Gradients as views of the all-reduce buckets (no second copy of every gradient); a frozen backbone's
        # buffers never change, so there is nothing to broadcast before each forward.
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            gradient_as_bucket_view=True, broadcast_buffers=not session.cfg.model.freeze_backbone)
    if run_cfg.compile:
        ddp = torch.compile(ddp)
    frozen = session.cfg.model.freeze_backbone
    identity = weights_identity(session.cfg.model.spec(num_classes, image_size), weights, session.cfg.run.seed) \
        if frozen else None
    return RunModel(model, ddp, frozen, identity), weights


def load_model_state(model: nn.Module, state: dict, path, partial: bool = False) -> None:
    """Load weights, with an error that says which checkpoint does not fit and why. A ``partial`` state holds
    exactly what training changes (:func:`~bgmask.infra.checkpoint.trained_state_keys`); the rest stays as built."""
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


def reports_every_head(cfg: TrainConfig) -> bool:
    """A probe-heads run (bgmask.models.probes) reports every head (``probes`` in results.json) and has no one best
    epoch; any other run, its one head."""
    return cfg.model.probe_heads is not None


def check_probe_masks(cfg: TrainConfig, needs: DataNeeds) -> None:
    """``late:`` probe heads need masks loaded with the images, which only a strategy that loads masks provides."""
    if cfg.model.probe_heads is not None and needs_masks(parse_heads(cfg.model.probe_heads)) and needs.masks is None:
        raise ConfigError(f"--probe_heads {cfg.model.probe_heads} has late: heads, which need masks loaded with the "
                          f"images: run them with late_masking/train.py (--mask_source precomputed or gt); its "
                          f"heads without late: are the baseline's.")
