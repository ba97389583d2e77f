"""timm classifier factory: ConvNeXt / DINOv2 ViT backbones, ViT head variants, freezing and parameter groups.

Every classifier is split the same way so masking strategies can hook in between the parts:
``features(x)`` (spatial feature map ``B,C,H,W`` or token sequence ``B,N,D``) → ``pool(features)`` (``B,F``) →
``head`` (a freshly initialised linear layer, the only part trained from scratch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

VIT_HEADS = ("cls_mean", "cls", "mean")


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


def vit_head_from_flags(class_token_only: bool, patch_tokens_only: bool) -> str:
    if class_token_only and patch_tokens_only:
        raise ValueError("--class_token_only and --patch_tokens_only are mutually exclusive; pick one head (or none "
                         "for the default concat(CLS, mean patch tokens)).")
    return "cls" if class_token_only else "mean" if patch_tokens_only else "cls_mean"


class Classifier(nn.Module):
    """A timm backbone plus a linear head, with the feature map exposed for late masking.

    Args:
        backbone: a timm model created with ``num_classes=0``.
        num_classes: output classes.
        vit_head: for ViTs, what the head sees: ``cls_mean`` = concat(CLS, mean of patch tokens), ``cls``, or
            ``mean`` (GAP-pooled patch tokens). Ignored for CNNs (timm's own pooling + norm).
        freeze_backbone: train the head only; the backbone also stays in eval mode (frozen norm statistics, no
            dropout/drop-path), as in a linear probe.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, vit_head: str = "cls_mean",
                 freeze_backbone: bool = False):
        super().__init__()
        if vit_head not in VIT_HEADS:
            raise ValueError(f"vit_head must be one of {VIT_HEADS}, got {vit_head!r}")
        self.backbone = backbone
        self.is_vit = isinstance(backbone, VisionTransformer)
        self.vit_head = vit_head if self.is_vit else None
        self.num_prefix_tokens = getattr(backbone, "num_prefix_tokens", 0)
        width = backbone.num_features
        if self.is_vit and vit_head == "cls_mean":
            width *= 2
        self.head = nn.Linear(width, num_classes)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters trained from scratch (they get ``--scratch_lr_factor``): the head."""
        return list(self.head.parameters())

    @property
    def head_input_width(self) -> int:
        return self.head.in_features

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output before pooling: ``B,C,H,W`` for CNNs, ``B,N,D`` tokens (prefix tokens first) for ViTs."""
        return self.backbone.forward_features(x)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Features → head input."""
        if not self.is_vit:
            return self.backbone.forward_head(feats, pre_logits=True)
        cls_token, patches = feats[:, 0], feats[:, self.num_prefix_tokens:]
        if self.vit_head == "cls":
            return cls_token
        mean = patches.mean(dim=1)
        return mean if self.vit_head == "mean" else torch.cat([cls_token, mean], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def create_backbone(spec: ModelSpec) -> nn.Module:
    """A timm backbone without classifier, with hub or local weights when asked."""
    kwargs = {"num_classes": 0, "drop_path_rate": spec.drop_path}
    if spec.image_size is not None and _takes_img_size(spec.arch):
        kwargs["img_size"] = spec.image_size
    if spec.pretrained_path:
        if not os.path.isfile(spec.pretrained_path):
            raise FileNotFoundError(f"--pretrained_path {spec.pretrained_path} does not exist.")
        kwargs["pretrained_cfg_overlay"] = {"file": spec.pretrained_path}
    try:
        return timm.create_model(spec.arch, pretrained=spec.pretrained or bool(spec.pretrained_path), **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"--model_arch {spec.arch!r} is not a timm model; see timm.list_models('convnext*') or "
                             f"timm.list_models('*dinov2*').") from None
        raise


def _takes_img_size(arch: str) -> bool:
    """Transformers fix their position embeddings at build time; CNNs take any input size."""
    try:
        module = timm.models.model_entrypoint(arch).__module__
    except RuntimeError:
        return False  # unknown name: create_model reports it
    return module.rsplit(".", 1)[-1] in ("vision_transformer", "vision_transformer_hybrid", "deit", "eva", "beit")


def create_classifier(spec: ModelSpec) -> Classifier:
    return Classifier(create_backbone(spec), spec.num_classes, vit_head=spec.vit_head,
                      freeze_backbone=spec.freeze_backbone)


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
