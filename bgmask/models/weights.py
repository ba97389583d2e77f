"""Backbones from timm with their weights: hub or local files, where they came from, what identifies them, and a clear
error when a weights file belongs to another model."""

from __future__ import annotations

import os
from dataclasses import dataclass

import timm
import torch
from torch import nn

from bgmask.errors import ModelError, WeightsError, timm_name_hint
from bgmask.io import file_digest
from bgmask.models.backbones import takes_img_size


@dataclass(frozen=True)
class ModelSpec:
    """What to build (mirrors the CLI flags)."""

    arch: str
    num_classes: int
    image_size: int | None = None
    pretrained: bool = False  # timm hub weights (``--start_weights DEFAULT``)
    pretrained_path: str | None = None  # local weights file (offline)
    drop_path: float = 0.0
    vit_head: str = "cls_mean"  # cls_mean | cls | mean
    freeze_backbone: bool = False
    head_norm: str = "head"  # head | backbone: where the norm inside timm's CNN head module belongs
    head_init: str = "upstream"  # upstream | timm | torch: how the new linear layer starts


def create_backbone(spec: ModelSpec) -> nn.Module:
    """A timm backbone without classifier, with hub or local weights when asked.

    The backbone's ``weights_source`` attribute says where its weights came from (see :func:`weights_source`).
    """
    kwargs = {"num_classes": 0, "drop_path_rate": spec.drop_path}
    if spec.image_size is not None and takes_img_size(spec.arch):
        kwargs["img_size"] = spec.image_size
    if spec.pretrained_path:
        if not os.path.isfile(spec.pretrained_path):
            raise FileNotFoundError(f"--pretrained_path {spec.pretrained_path} does not exist.")
        kwargs["pretrained_cfg_overlay"] = {"file": spec.pretrained_path}
    source = weights_source(spec)  # before loading: whether the hub weights were already cached
    try:
        backbone = timm.create_model(spec.arch, pretrained=spec.pretrained or bool(spec.pretrained_path), **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ModelError(f"--model_arch {spec.arch!r} is not a timm model.{timm_name_hint(spec.arch)} "
                             f"See timm.list_models('convnext*') or timm.list_models('*dinov2*').") from None
        if spec.pretrained_path:
            raise WeightsError(_mismatch_message(spec, kwargs, e)) from None
        raise
    except KeyError as e:
        if spec.pretrained_path:
            raise WeightsError(_mismatch_message(spec, kwargs, e)) from None
        raise
    except Exception as e:  # noqa: BLE001 - hub and network errors come from several libraries
        if spec.pretrained and not spec.pretrained_path:
            raise WeightsError(_hub_message(spec, e)) from None
        raise
    backbone.weights_source = source
    return backbone


def weights_source(spec: ModelSpec) -> dict:
    """Where the weights of ``spec`` come from: ``{"source": "none" | "file" | "hub" | "cache", "location": ...,
    "resampled": ...}``; ``resampled`` names the position-embedding resampling timm does for another image size."""
    if not (spec.pretrained or spec.pretrained_path):
        return {"source": "none", "location": None, "resampled": None}
    cfg = _pretrained_cfg(spec.arch)
    resampled = None
    pretrained_size = cfg.input_size[-1] if cfg is not None and cfg.input_size else None
    if spec.pretrained_path:  # a timm weights folder says its own size in config.json
        pretrained_size = _file_input_size(spec.pretrained_path) or pretrained_size
    if spec.image_size and pretrained_size and takes_img_size(spec.arch) and spec.image_size != pretrained_size:
        resampled = f"position embeddings {pretrained_size} px -> {spec.image_size} px"
    if spec.pretrained_path:
        return {"source": "file", "location": os.path.abspath(spec.pretrained_path), "resampled": resampled}
    cached = _cached_hub_file(cfg)
    return {"source": "cache" if cached else "hub",
            "location": cached or (cfg.hf_hub_id or cfg.url if cfg is not None else None), "resampled": resampled}


def weights_identity(spec: ModelSpec, weights: dict, seed: int) -> dict:
    """What identifies the weights a backbone was built from, after building it: the file's sha256 for local or
    hub-cached weights, the seed for a random initialisation (models are built after seeding). A checkpoint
    without its frozen backbone records it; resuming from it checks it."""
    identity = {"arch": spec.arch, "image_size": spec.image_size, "resampled": weights.get("resampled")}
    if spec.pretrained_path:
        return {**identity, "sha256": file_digest(spec.pretrained_path)}
    if not spec.pretrained:
        return {**identity, "random_init_seed": seed}
    cached = _cached_hub_file(_pretrained_cfg(spec.arch))
    return {**identity, "sha256": file_digest(cached)} if cached else {**identity, "hub": weights.get("location")}


def _file_input_size(path: str) -> int | None:
    """The input size in the ``config.json`` beside a weights file (timm / Hugging Face layout), if any."""
    import json

    config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    try:
        with open(config) as f:
            return int(json.load(f)["pretrained_cfg"]["input_size"][-1])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _pretrained_cfg(arch: str):
    try:
        return timm.models.get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001 - unknown names are reported by create_model
        return None


def _cached_hub_file(cfg) -> str | None:
    """The local copy of a hub weights file, if the Hugging Face (or torch hub) cache already holds it."""
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for filename in (cfg.hf_hub_filename, "model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename) if filename else None
            if isinstance(found, str):
                return found
        return None
    if cfg.url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))
        return path if os.path.isfile(path) else None
    return None


def _hub_message(spec: ModelSpec, error: Exception) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (f"could not load timm's pretrained weights for {spec.arch} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). timm takes them from the Hugging Face Hub and keeps "
            f"them in {HF_HUB_CACHE} (set HF_HOME to move it). Offline: copy a populated cache there and set "
            f"HF_HUB_OFFLINE=1 (it also avoids a minute of network retries), or download the weights file once and "
            f"pass --pretrained_path FILE instead of --start_weights DEFAULT.")


def _mismatch_message(spec: ModelSpec, kwargs: dict, error: Exception) -> str:
    """Which model a weights file seems to hold, against the model ``spec`` asks for."""
    from timm.models import load_state_dict

    try:
        held = describe_state_dict(load_state_dict(spec.pretrained_path))
    except Exception as e:  # noqa: BLE001 - a file that is no checkpoint at all
        held = f"no readable state dict ({type(e).__name__}: {e})"
    fresh = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
    expected = describe_state_dict(timm.create_model(spec.arch, pretrained=False, **fresh).state_dict())
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"--pretrained_path {spec.pretrained_path} does not fit --model_arch {spec.arch}: the file seems to hold "
            f"{held}; {spec.arch} is {expected}. Pass the weights of {spec.arch}, or the --model_arch they belong "
            f"to. (timm: {type(error).__name__}: {first_line[:300]})")


def describe_state_dict(state: dict) -> str:
    """A short description of the architecture a state dict belongs to (ViT width/depth/patch, staged CNN widths)."""
    keys = list(state)
    patch = next((k for k in keys if k.endswith("patch_embed.proj.weight")), None)
    if patch is not None:
        prefix = patch[: -len("patch_embed.proj.weight")]
        depth = len({k[len(prefix):].split(".")[1] for k in keys if k.startswith(prefix + "blocks.")})
        width, _, ph, pw = state[patch].shape
        return f"a ViT of width {width}, {depth} blocks, {ph}x{pw} patches"
    stem = next((k for k in keys if k.endswith("stem.0.weight")), None)
    if stem is not None:
        prefix = stem[: -len("stem.0.weight")]
        widths = [state[k].shape[0] for k in keys
                  if k.startswith(prefix + "stages.") and k.endswith(".downsample.1.weight")]
        depth = len({k[len(prefix):].split(".")[3] for k in keys if k.startswith(prefix + "stages.0.blocks.")})
        return (f"a staged CNN with stem width {state[stem].shape[0]}, {depth} blocks in stage 0"
                + (f", later stage widths {widths}" if widths else ""))
    return f"an unrecognised layout (first keys: {', '.join(keys[:3])})"
