"""Backbone adapters: the one place that knows each timm family's feature layout and its last stage or block.

Three layouts cover the timm families the project supports:

* ``NCHW`` — CNNs (ConvNeXt, ResNet, ...): ``forward_features`` returns ``B,C,H,W``; staged CNNs (``.stages``) also
  split into "up to the second-last stage" and "last stage + ``norm_pre``".
* ``NHWC`` — Swin-style hierarchical transformers (``output_fmt == 'NHWC'``, ``.layers``, final ``.norm``).
* ``tokens`` — ViTs (DINOv2, DeiT, EVA...): ``B,N,D`` with ``num_prefix_tokens`` CLS/register tokens first and the
  patch tokens on ``patch_embed.grid_size``.

An adapter does the work its layout decides: it names the heads a family has and pools them (:meth:`pool`), masks
its features, brings them to an ``NCHW`` map (:meth:`feature_map`), says how attributions are taken, how a new head
starts (upstream's rule per family) and what late masking adds before a mask. Nothing outside this module asks which
layout a backbone has. The adapters are a registry: a new family is an adapter class with :func:`register` (in any
module imported before the run), which names the timm modules its models live in and recognises a built backbone
(``tests/toy_backbone.py``: an NCHW family and a token family, each in one file).
"""

from __future__ import annotations

import timm
import torch
from timm.models import checkpoint_seq
from torch import nn

from bgmask.errors import UnsupportedBackbone
from bgmask.models.heads import CNN_HEADS, LATE, LATE_ONLY_HEADS, VIT_HEADS
from bgmask.models.masking import NEAREST, MaskGrid, mask_features, mask_to_feature_grid

LAYOUTS = ("NCHW", "NHWC", "tokens")
# How the diagnostics attribute a prediction to input pixels (bgmask.diagnostics.attribution.attribution_maps).
GRAD_CAM = "Grad-CAM on the pooled feature map"
INPUT_GRADIENT = "|gradient x input|"


_ADAPTERS: list[type[BackboneAdapter]] = []


def register(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator: make an adapter known. Adapters registered later are asked first, so a family can refine a
    more general one (the generic NCHW adapter is asked last)."""
    if cls in _ADAPTERS:
        _ADAPTERS.remove(cls)
    _ADAPTERS.insert(0, cls)
    return cls


def _timm_module(arch: str) -> str | None:
    try:
        return timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
    except (RuntimeError, KeyError):
        return None


def arch_adapter(arch: str) -> type[BackboneAdapter] | None:
    """The adapter class of a timm model name, without building it (None for an unknown name): its class attributes
    (``heads``, ``late_only_heads``, ``layout``, ``recipe_family``...) answer questions asked before a model exists."""
    module = _timm_module(arch)
    if module is None:
        return None
    return next(cls for cls in _ADAPTERS if cls.claims_module(module))


def arch_layout(arch: str) -> str | None:
    """The layout of a timm model name, without building it (None for an unknown name); for messages."""
    adapter = arch_adapter(arch)
    return adapter.layout if adapter else None


def takes_img_size(arch: str) -> bool:
    """Transformers fix their position embeddings (or windows) at build time; CNNs take any input size."""
    module = _timm_module(arch)
    return module is not None and next(cls.fixed_input_size for cls in _ADAPTERS if cls.claims_module(module))


class BackboneAdapter:
    """Feature access for one backbone in its native layout, with masking and the second-last split."""

    layout = "NCHW"  # a description, for messages and docs: behaviour lives in the methods
    timm_modules: tuple[str, ...] = ()  # the timm modules whose models this adapter serves (empty: any)
    fixed_input_size = False  # the model is built for one input size (``img_size``)
    heads: tuple[str, ...] = CNN_HEADS  # the heads a classifier can have (bgmask.models.heads); the first: default
    late_only_heads: tuple[str, ...] = ()  # heads only late masking trains (they average the kept features)
    upstream_head_init = "kaiming"  # --head_init upstream: the official CNN trainers' kaiming_normal_ (fan_out)
    attribution = GRAD_CAM  # how the diagnostics attribute a prediction
    recipe_family = "convnext_atto"  # whose demo recipe a model of this family borrows (bgmask.pretraining.pretrain)
    num_prefix_tokens = 0  # token layouts: CLS/register tokens before the patch tokens
    grid_size = None  # token layouts: the patch grid

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone

    @classmethod
    def claims_module(cls, module: str) -> bool:
        """Whether the models of timm module ``module`` are this adapter's (by name, before building)."""
        return not cls.timm_modules or module in cls.timm_modules

    @classmethod
    def accepts(cls, backbone: nn.Module) -> bool:
        """Whether a built backbone has what this adapter reads."""
        if getattr(backbone, "output_fmt", "NCHW") != "NCHW" or not hasattr(backbone, "forward_features"):
            return False
        return not cls.timm_modules or type(backbone).__module__.rsplit(".", 1)[-1] in cls.timm_modules

    @classmethod
    def head_for(cls, requested: str) -> str:
        """``requested`` (the ViT head flags) where the family has it, else its default (a CNN's one head, pool)."""
        return requested if requested in cls.heads else cls.heads[0]

    @property
    def width(self) -> int:  # channels of the features the heads pool
        return self.backbone.num_features

    def pool(self, head: str, feats: torch.Tensor, masks: torch.Tensor | None = None, cnn_pool=None,
             to_grid: MaskGrid = NEAREST) -> torch.Tensor:
        """Features (native layout) -> the input of ``head``'s linear layer. CNN families have the ``pool`` head:
        timm's pooling and pre-logits (``forward_head(pre_logits=True)``, ConvNeXt's final norm included), or
        ``cnn_pool`` (a probe head's copy of timm's head module)."""
        if head.removeprefix(LATE) not in self.heads:
            raise ValueError(f"unknown head {head!r} for {type(self.backbone).__name__}; heads: {self.heads}")
        return (cnn_pool if cnn_pool is not None else self.head_pool)(feats, pre_logits=True)

    def feature_map(self, feats: torch.Tensor) -> torch.Tensor:
        """Features (native layout) as a ``B,C,H,W`` map (Grad-CAM, masking)."""
        return feats

    def from_feature_map(self, fmap: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`feature_map` (``like``: features of the native layout it came from)."""
        return fmap

    def new_pre_mask_norm(self) -> nn.Module | None:
        """What late masking's second-last variant puts before the mask (upstream: nothing for CNNs)."""
        return None

    def timm_head_args(self, head: str, image_size: int) -> dict:
        """``timm.create_model`` arguments for a timm classifier with this family's ``head`` (export)."""
        return {}

    @property
    def supports_second_last(self) -> bool:
        return hasattr(self.backbone, "stages")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def head_pool(self, feats: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        """A feature map -> the ``pool`` head's input (timm's ``forward_head(pre_logits=True)``: pooling and, for
        ConvNeXt, the final norm)."""
        return self.backbone.forward_head(feats, pre_logits=pre_logits)

    def mask(self, feats: torch.Tensor, masks: torch.Tensor, to_grid: MaskGrid = NEAREST) -> torch.Tensor:
        """Zero the background positions of ``feats`` (native layout) and block their gradient; ``to_grid`` brings
        the masks to the feature grid."""
        return self.from_feature_map(mask_features(self.feature_map(feats), masks, to_grid), feats)

    def before_last(self, x: torch.Tensor, after: int = 1) -> torch.Tensor:
        """Features after every stage but the last ``after`` (native layout)."""
        self._check_second_last(after)
        x = self.backbone.stem(x)
        for stage in self.backbone.stages[:-after]:
            x = stage(x)
        return x

    def last(self, x: torch.Tensor, after: int = 1) -> torch.Tensor:
        """The last ``after`` stages and the final norm, on features from :meth:`before_last`."""
        for stage in self.backbone.stages[-after:]:
            x = stage(x)
        return self.backbone.norm_pre(x) if hasattr(self.backbone, "norm_pre") else x

    def last_modules(self, after: int = 1) -> list[nn.Module]:
        """What :meth:`last` runs (it learns on masked features when the mask comes before it)."""
        return [*self.backbone.stages[-after:], *([self.backbone.norm_pre] if hasattr(self.backbone, "norm_pre")
                                                 else [])]

    def _stages(self) -> nn.Module:
        return self.backbone.stages

    def _check_second_last(self, after: int = 1) -> None:
        if not self.supports_second_last:
            raise UnsupportedBackbone(f"{type(self.backbone).__name__} has no stages to split; the second-last "
                                      f"variant needs a staged CNN (ConvNeXt), a Swin or a ViT.")
        count = len(self._stages())
        if not 1 <= after < count:
            raise UnsupportedBackbone(f"{type(self.backbone).__name__} has {count} stages/blocks: the mask can come "
                                      f"before 1 to {count - 1} of them, not {after}.")


register(BackboneAdapter)  # the generic CNN adapter: registered first, asked last


@register
class NHWCAdapter(BackboneAdapter):
    """Swin-style backbones: ``B,H,W,C`` features, stages in ``.layers``, a final ``.norm``."""

    layout = "NHWC"
    timm_modules = ("swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr")
    fixed_input_size = True

    @classmethod
    def accepts(cls, backbone):
        return getattr(backbone, "output_fmt", "NCHW") == "NHWC"

    @property
    def supports_second_last(self) -> bool:
        return hasattr(self.backbone, "layers")

    def feature_map(self, feats):
        return feats.permute(0, 3, 1, 2)

    def from_feature_map(self, fmap, like):
        return fmap.permute(0, 2, 3, 1)

    def before_last(self, x, after=1):
        self._check_second_last(after)
        x = self.backbone.patch_embed(x)
        for layer in self.backbone.layers[:-after]:
            x = layer(x)
        return x

    def last(self, x, after=1):
        for layer in self.backbone.layers[-after:]:
            x = layer(x)
        return self.backbone.norm(x)

    def last_modules(self, after=1):
        return [*self.backbone.layers[-after:], self.backbone.norm]

    def _stages(self):
        return self.backbone.layers


@register
class TokenAdapter(BackboneAdapter):
    """ViTs: ``B,N,D`` tokens, prefix (CLS/register) tokens first, patch tokens on ``patch_embed.grid_size``."""

    layout = "tokens"
    timm_modules = ("vision_transformer", "vision_transformer_hybrid", "deit", "eva", "beit")
    fixed_input_size = True
    heads = VIT_HEADS
    late_only_heads = LATE_ONLY_HEADS
    upstream_head_init = "torch"  # the official ViT trainers keep nn.Linear's default
    attribution = INPUT_GRADIENT  # token maps mix CLS and patches: the input is where heads compare
    recipe_family = "vit_small_patch14_dinov2"

    @classmethod
    def accepts(cls, backbone):
        return all(hasattr(backbone, a) for a in ("patch_embed", "blocks", "num_prefix_tokens"))

    @property
    def supports_second_last(self) -> bool:
        return True

    @property
    def num_prefix_tokens(self) -> int:
        return getattr(self.backbone, "num_prefix_tokens", 1)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.backbone.patch_embed.grid_size)

    # How this family lays out its tokens: a subclass with another layout overrides these three.
    def summary_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``B,D`` token the ``cls`` heads read (the CLS token, first)."""
        return tokens[:, 0]

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``B,N,D`` patch tokens, row-major on :attr:`grid_size` (after the CLS/register tokens)."""
        return tokens[:, self.num_prefix_tokens:]

    def with_patch_tokens(self, tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """``tokens`` with its patch tokens replaced (the CLS and register tokens kept)."""
        return torch.cat([tokens[:, :self.num_prefix_tokens], patches], dim=1)

    def pool(self, head, feats, masks=None, cnn_pool=None, to_grid=NEAREST):
        """The token heads (:mod:`bgmask.models.heads`): ``cls``, ``mean`` (GAP over the patch tokens),
        ``cls_mean``, and late masking's ``masked_mean``/``cls_masked_mean`` (the mean over the bird's tokens:
        they need ``masks``)."""
        base = head.removeprefix(LATE)
        if base == "cls":
            return self.summary_token(feats)
        patches = self.patch_tokens(feats)
        if base in ("masked_mean", "cls_masked_mean"):
            if masks is None:
                raise ValueError(f"head {head} averages the foreground tokens: it needs the masks")
            weights = mask_to_feature_grid(masks, self.grid_size, to_grid).flatten(1)[..., None]  # B, N, 1
            mean = (patches * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # all background: zeros
        elif base in ("mean", "cls_mean"):
            mean = patches.mean(dim=1)
        else:
            raise ValueError(f"unknown head {head!r}; heads: {(*self.heads, *self.late_only_heads)}")
        return mean if base in ("mean", "masked_mean") else torch.cat([self.summary_token(feats), mean], dim=1)

    def feature_map(self, tokens):
        """The patch tokens as a ``B,D,H,W`` map (the CLS and register tokens left out)."""
        patches = self.patch_tokens(tokens)
        (h, w), (b, _, d) = self.grid_size, patches.shape
        return patches.transpose(1, 2).reshape(b, d, h, w)

    def from_feature_map(self, fmap, like):
        """Patch tokens from the map, the CLS and register tokens of ``like`` kept (masking keeps them)."""
        return self.with_patch_tokens(like, fmap.flatten(2).transpose(1, 2))

    def new_pre_mask_norm(self):
        """Upstream's ViT late masking (second-last block) adds a LayerNorm before the mask."""
        return nn.LayerNorm(self.width)

    def timm_head_args(self, head, image_size):
        return {"global_pool": "token" if head == "cls" else "avg", "fc_norm": False, "img_size": image_size}

    def before_last(self, x, after=1):
        self._check_second_last(after)
        backbone = self.backbone
        x = backbone.patch_embed(x)
        x = backbone._pos_embed(x)
        x = backbone.patch_drop(x)
        x = backbone.norm_pre(x)
        if getattr(backbone, "grad_checkpointing", False) and torch.is_grad_enabled():
            return checkpoint_seq(backbone.blocks[:-after], x)  # as timm's forward_features does
        for block in backbone.blocks[:-after]:
            x = block(x)
        return x

    def last(self, x, after=1):
        for block in self.backbone.blocks[-after:]:
            x = block(x)
        return self.backbone.norm(x)

    def last_modules(self, after=1):
        return [*self.backbone.blocks[-after:], self.backbone.norm]

    def _stages(self):
        return self.backbone.blocks


def adapter_for(backbone: nn.Module) -> BackboneAdapter:
    """The adapter of a timm backbone; an architecture of unknown layout is refused with a clear message."""
    for cls in _ADAPTERS:
        if cls.accepts(backbone):
            adapter = cls(backbone)
            if isinstance(adapter, NHWCAdapter) and not hasattr(backbone, "layers"):
                raise UnsupportedBackbone(f"{type(backbone).__name__} returns NHWC features but has no .layers; "
                                          f"supported: CNNs (NCHW), Swin-style NHWC models and ViTs.")
            return adapter
    raise UnsupportedBackbone(f"{type(backbone).__name__} has an unknown feature layout "
                              f"({getattr(backbone, 'output_fmt', '?')}); supported: CNNs (NCHW), Swin-style NHWC "
                              f"models and ViTs (tokens), and any family with a registered adapter "
                              f"(bgmask.models.backbones.register).")
