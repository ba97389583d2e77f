"""timm classifier factory: ConvNeXt / DINOv2 ViT backbones, ViT head variants, freezing and parameter groups.

Every classifier is split the same way so masking strategies can hook in between the parts:
``features(x)`` (spatial feature map ``B,C,H,W`` or token sequence ``B,N,D``) → ``pool(features)`` (``B,F``) →
``head`` (a freshly initialised linear layer). As upstream, the classifier head of a CNN family is all of timm's
``head`` module: ConvNeXt's holds the final LayerNorm before the classifier, and it trains with the new linear layer
(in probes too, at the scratch learning rate), unless ``head_norm="backbone"``.
"""

from __future__ import annotations

import torch
from torch import nn

from bgmask.models import heads
from bgmask.models.backbones import adapter_for
from bgmask.models.masking import NEAREST, MaskGrid
from bgmask.models.weights import ModelSpec, create_backbone

HEAD_NORM_RULES = ("head", "backbone")
HEAD_INITS = ("upstream", "timm", "torch")


class Classifier(nn.Module):
    """A timm backbone plus a linear head, with the feature map exposed for late masking.

    Args:
        backbone: a timm model created with ``num_classes=0``.
        num_classes: output classes.
        vit_head: for ViTs, what the head sees: ``cls_mean`` = concat(CLS, mean of patch tokens), ``cls``, or
            ``mean`` (GAP-pooled patch tokens). Ignored for CNNs (timm's own pooling + norm: the ``pool`` head).
        freeze_backbone: train the head only; the backbone also stays in eval mode (frozen norm statistics, no
            dropout/drop-path), as in a linear probe.
        head_norm: ``head`` (upstream): the parameters inside the CNN backbone's timm ``head`` module (ConvNeXt's
            final LayerNorm; the classifier layer itself is gone with ``num_classes=0``) belong to the head: they
            train with a frozen backbone and at the scratch learning rate. ``backbone``: they belong to the backbone.
            ViTs' DINOv2 heads hold no parameters before the classifier, so this changes nothing for them.
        head_init: how the new linear layer starts, see :func:`init_head`.
        pool_module: CNNs: pool through this copy of timm's head module instead of the backbone's own (a probe
            head's view of a shared backbone, :meth:`bgmask.models.probes.ProbeHeads.single_head_model`).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, vit_head: str = "cls_mean",
                 freeze_backbone: bool = False, head_norm: str = "head", head_init: str = "upstream",
                 pool_module: nn.Module | None = None):
        super().__init__()
        if vit_head not in heads.VIT_HEADS:
            raise ValueError(f"vit_head must be one of {heads.VIT_HEADS}, got {vit_head!r}")
        if head_norm not in HEAD_NORM_RULES:
            raise ValueError(f"head_norm must be one of {HEAD_NORM_RULES}, got {head_norm!r}")
        self.backbone = backbone
        self.adapter = adapter_for(backbone)
        self.head_kind = self.adapter.head_for(vit_head)  # how the head pools (bgmask.models.heads); a CNN's: pool
        # The RNG state the head's init starts from: probe heads (bgmask.models.probes) draw theirs from it too.
        self.head_rng_state = torch.get_rng_state()
        self.head_init = head_init
        self.head = self.new_head(self.head_kind, num_classes)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.head_norm = head_norm
        for p in self.head_norm_parameters():
            p.requires_grad_(True)
        self.pool_module = pool_module

    @property
    def head_names(self) -> list[str]:
        return [self.head_kind]

    @property
    def num_prefix_tokens(self) -> int:
        return self.adapter.num_prefix_tokens

    @property
    def layout(self) -> str:
        """The backbone's feature layout (``NCHW``, ``NHWC`` or ``tokens``, :mod:`bgmask.models.backbones`)."""
        return self.adapter.layout

    def new_head(self, kind: str, num_classes: int) -> nn.Linear:
        """A new linear layer for a head of ``kind`` on this backbone, initialised by ``head_init``."""
        return new_head(heads.head_width(kind, self.adapter.width), num_classes, self.head_init,
                        self.adapter.upstream_head_init)

    def head_norm_module(self) -> nn.Module | None:
        """The CNN backbone's timm ``head`` module when it holds parameters (ConvNeXt: its final LayerNorm), else
        None. It pools the feature map for the linear head (``forward_head(pre_logits=True)``)."""
        module = getattr(self.backbone, "head", None) if self.head_kind in heads.CNN_HEADS else None
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

    def pool(self, feats: torch.Tensor, masks: torch.Tensor | None = None, kind: str | None = None,
             cnn_pool: nn.Module | None = None, to_grid: MaskGrid = NEAREST) -> torch.Tensor:
        """Features -> the input of a head of ``kind`` (default: this classifier's), pooled by the adapter
        (:meth:`bgmask.models.backbones.BackboneAdapter.pool`). ``cnn_pool`` replaces the CNN's own timm head module (a
        probe head's copy); ``to_grid`` brings the masks of a foreground-mean head to the token grid."""
        cnn_pool = cnn_pool if cnn_pool is not None else self.pool_module
        return self.adapter.pool(kind or self.head_kind, feats, masks=masks, cnn_pool=cnn_pool, to_grid=to_grid)

    # What the diagnostics ask of every model (bgmask.run.bias_report): the features an attribution is taken on, and the
    # rest of the forward from them.
    def attribution_features(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.features(images)

    def head_from_features(self, feats: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.pool(feats))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input for images ``x`` (what DFR refits the head on)."""
        return self.pool(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def new_head(width: int, num_classes: int, init: str = "upstream", upstream: str = "kaiming") -> nn.Linear:
    """The new linear head, initialised by ``init`` (see :func:`init_head`)."""
    head = nn.Linear(width, num_classes)
    init_head(head, init, upstream)
    return head


def init_head(head: nn.Linear, init: str, upstream: str = "kaiming") -> None:
    """Initialise a new linear head.

    ``upstream``: what the official trainers do for the family, its adapter's ``upstream_head_init`` (passed as
    ``upstream``): ``kaiming`` for CNN heads, ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` weights (std
    sqrt(2 / num_classes)) and zero bias; ``torch`` for its ViT trainers, which keep ``nn.Linear``'s default.
    ``timm``: truncated normal weights (std 0.02) and zero bias, as timm initialises the classifier of a new ConvNeXt
    or ViT. ``torch``: ``nn.Linear``'s default (Kaiming-uniform weights, uniform bias), untouched.
    """
    if init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {init!r}")
    if init == "upstream" and upstream == "kaiming":
        nn.init.kaiming_normal_(head.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(head.bias)
    elif init == "timm":
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)


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
