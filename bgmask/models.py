"""timm classifier factory: ConvNeXt / DINOv2 ViT backbones, ViT head variants, freezing and parameter groups.

Every classifier is split the same way so masking strategies can hook in between the parts:
``features(x)`` (spatial feature map ``B,C,H,W`` or token sequence ``B,N,D``) → ``pool(features)`` (``B,F``) →
``head`` (a freshly initialised linear layer). As upstream, the classifier head of a CNN family is all of timm's
``head`` module: ConvNeXt's holds the final LayerNorm before the classifier, and it trains with the new linear layer
(in probes too, at the scratch learning rate), unless ``head_norm="backbone"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import timm
import torch
from torch import nn

from bgmask.backbones import adapter_for, takes_img_size
from bgmask.errors import BgmaskError
from bgmask.io import file_digest
from bgmask.masking import mask_to_feature_grid

VIT_HEADS = ("cls_mean", "cls", "mean")
HEAD_NORM_RULES = ("head", "backbone")
HEAD_INITS = ("upstream", "timm", "torch")


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


class Classifier(nn.Module):
    """A timm backbone plus a linear head, with the feature map exposed for late masking.

    Args:
        backbone: a timm model created with ``num_classes=0``.
        num_classes: output classes.
        vit_head: for ViTs, what the head sees: ``cls_mean`` = concat(CLS, mean of patch tokens), ``cls``, or
            ``mean`` (GAP-pooled patch tokens). Ignored for CNNs (timm's own pooling + norm).
        freeze_backbone: train the head only; the backbone also stays in eval mode (frozen norm statistics, no
            dropout/drop-path), as in a linear probe.
        head_norm: ``head`` (upstream): the parameters inside the CNN backbone's timm ``head`` module (ConvNeXt's
            final LayerNorm; the classifier layer itself is gone with ``num_classes=0``) belong to the head: they
            train with a frozen backbone and at the scratch learning rate. ``backbone``: they belong to the backbone.
            ViTs' DINOv2 heads hold no parameters before the classifier, so this changes nothing for them.
        head_init: how the new linear layer starts, see :func:`init_head`.
        pool_module: CNNs: pool through this copy of timm's head module instead of the backbone's own (a probe
            head's view of a shared backbone, :meth:`bgmask.probes.ProbeHeads.single_head_model`).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, vit_head: str = "cls_mean",
                 freeze_backbone: bool = False, head_norm: str = "head", head_init: str = "upstream",
                 pool_module: nn.Module | None = None):
        super().__init__()
        if vit_head not in VIT_HEADS:
            raise ValueError(f"vit_head must be one of {VIT_HEADS}, got {vit_head!r}")
        if head_norm not in HEAD_NORM_RULES:
            raise ValueError(f"head_norm must be one of {HEAD_NORM_RULES}, got {head_norm!r}")
        self.backbone = backbone
        self.adapter = adapter_for(backbone)
        self.vit_head = vit_head if self.is_vit else None
        width = backbone.num_features
        if self.is_vit and vit_head == "cls_mean":
            width *= 2
        # The RNG state the head's init starts from: probe heads (bgmask.probes) draw theirs from it too.
        self.head_rng_state = torch.get_rng_state()
        self.head_init = head_init
        self.head = new_head(width, num_classes, head_init, self.is_vit)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.head_norm = head_norm
        for p in self.head_norm_parameters():
            p.requires_grad_(True)
        self.pool_module = pool_module

    @property
    def is_vit(self) -> bool:
        return self.adapter.is_vit

    @property
    def num_prefix_tokens(self) -> int:
        return self.adapter.num_prefix_tokens if self.is_vit else 0

    def head_norm_module(self) -> nn.Module | None:
        """The CNN backbone's timm ``head`` module when it holds parameters (ConvNeXt: its final LayerNorm), else
        None. It pools the feature map for the linear head (``forward_head(pre_logits=True)``)."""
        module = None if self.is_vit else getattr(self.backbone, "head", None)
        return module if isinstance(module, nn.Module) and any(True for _ in module.parameters()) else None

    def head_norm_parameters(self) -> list[nn.Parameter]:
        """What ``head_norm="head"`` adds to the head (upstream's ``head.*`` rule); empty otherwise."""
        module = self.head_norm_module() if self.head_norm == "head" else None
        return list(module.parameters()) if module is not None else []

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters in the head's group (they get ``--scratch_lr_factor``): the linear head and, with
        ``head_norm="head"``, the norm inside timm's CNN head module, as upstream's ``head.*`` rule."""
        return list(self.head.parameters()) + self.head_norm_parameters()

    @property
    def head_input_width(self) -> int:
        return self.head.in_features

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
            if self.head_norm_parameters():  # trained with the head
                self.head_norm_module().train(mode)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output before pooling, in the backbone's layout (``B,C,H,W``, ``B,H,W,C`` or ``B,N,D`` tokens)."""
        return self.adapter.features(x)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Features → head input."""
        if not self.is_vit:
            if self.pool_module is not None:
                return self.pool_module(feats, pre_logits=True)
            return self.backbone.forward_head(feats, pre_logits=True)
        return vit_pool(feats, self.vit_head, self.num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def new_head(width: int, num_classes: int, init: str = "upstream", is_vit: bool = False) -> nn.Linear:
    """The new linear head, initialised by ``init`` (see :func:`init_head`)."""
    head = nn.Linear(width, num_classes)
    init_head(head, init, is_vit)
    return head


def init_head(head: nn.Linear, init: str, is_vit: bool) -> None:
    """Initialise a new linear head.

    ``upstream``: what the official trainers do: CNN heads get ``kaiming_normal_(mode="fan_out",
    nonlinearity="relu")`` weights (std sqrt(2 / num_classes)) and zero bias; its ViT trainers keep ``nn.Linear``'s
    default. ``timm``: truncated normal weights (std 0.02) and zero bias, as timm initialises the classifier of a new
    ConvNeXt or ViT. ``torch``: ``nn.Linear``'s default (Kaiming-uniform weights, uniform bias), untouched.
    """
    if init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {init!r}")
    if init == "upstream" and not is_vit:
        nn.init.kaiming_normal_(head.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(head.bias)
    elif init == "timm":
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)


def vit_pool(feats: torch.Tensor, head: str, num_prefix_tokens: int) -> torch.Tensor:
    """ViT tokens ``B,N,D`` -> head input: CLS token (``cls``), mean of the patch tokens (``mean``), or both
    concatenated (``cls_mean``)."""
    cls_token = feats[:, 0]
    if head == "cls":
        return cls_token
    mean = feats[:, num_prefix_tokens:].mean(dim=1)
    return mean if head == "mean" else torch.cat([cls_token, mean], dim=1)


def foreground_mean(feats: torch.Tensor, masks: torch.Tensor, num_prefix_tokens: int,
                    grid_size: tuple[int, int]) -> torch.Tensor:
    """Mean of the foreground patch tokens only (masks ``B,H,W``, 1 = bird; an all-background image gives zeros)."""
    weights = mask_to_feature_grid(masks, grid_size).flatten(1)[..., None]  # B, N, 1
    patches = feats[:, num_prefix_tokens:]
    return (patches * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class ModelError(BgmaskError, ValueError):
    """The model asked for does not exist or cannot take the given options; says what to use instead."""


class WeightsError(BgmaskError, RuntimeError):
    """Pretrained weights cannot be loaded (offline without a cache, or a file of another model); says how to fix."""


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
            short = {"vit_small", "vit_base", "vit_large", "vit_giant"}
            hint = f" Upstream's short name {spec.arch!r} is {spec.arch}_patch14_dinov2.lvd142m here." \
                if spec.arch in short else ""
            raise ModelError(f"--model_arch {spec.arch!r} is not a timm model; see timm.list_models('convnext*') or "
                             f"timm.list_models('*dinov2*').{hint}") from None
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


def create_classifier(spec: ModelSpec) -> Classifier:
    return Classifier(create_backbone(spec), spec.num_classes, vit_head=spec.vit_head,
                      freeze_backbone=spec.freeze_backbone, head_norm=spec.head_norm, head_init=spec.head_init)


WEIGHT_DECAY_RULES = ("all", "timm")


def param_groups(model: nn.Module, lr: float, weight_decay: float, scratch_lr_factor: float,
                 weight_decay_rule: str = "all") -> list[dict]:
    """Optimizer groups: pretrained parts at ``lr``, parts trained from scratch (``model.new_parameters()``: the
    head, and e.g. late masking's extra LayerNorm) at ``lr * scratch_lr_factor``. Frozen parameters are left out.

    timm's ``create_optimizer_v2`` builds weight-decay groups but has no notion of a scratch learning rate, so the
    groups are built here and handed to it.

    Args:
        weight_decay_rule: ``all`` decays every parameter (upstream); ``timm`` exempts biases, 1-D tensors (norms)
            and every name a submodule lists in ``no_weight_decay()`` (position embeddings, CLS and register tokens
            of timm ViTs), as ``timm.optim.param_groups_weight_decay`` does.
    """
    if weight_decay_rule not in WEIGHT_DECAY_RULES:
        raise ValueError(f"weight_decay_rule must be one of {WEIGHT_DECAY_RULES}, got {weight_decay_rule!r}")
    new = {id(p) for p in model.new_parameters()} if hasattr(model, "new_parameters") else set()
    exempt = no_weight_decay_names(model) if weight_decay_rule == "timm" else set()
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if id(p) in new else "backbone"
        decay = "decay" if weight_decay_rule == "all" or not (
            p.ndim <= 1 or name.endswith(".bias") or name in exempt) else "no_decay"
        key = (part, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * (scratch_lr_factor if part == "head" else 1.0),
                           "weight_decay": 0.0 if decay == "no_decay" else weight_decay, "name": f"{part}_{decay}"}
        groups[key]["params"].append(p)
    return list(groups.values())


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names that submodules exempt from weight decay through timm's ``no_weight_decay()``."""
    names = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{n}" if prefix else n for n in listed()}
    return names
