"""Backbone adapters: the one place that knows each timm family's feature layout and its last stage or block.

Three layouts cover the timm families the project supports:

* ``NCHW`` — CNNs (ConvNeXt, ResNet, ...): ``forward_features`` returns ``B,C,H,W``; staged CNNs (``.stages``) also
  split into "up to the second-last stage" and "last stage + ``norm_pre``".
* ``NHWC`` — Swin-style hierarchical transformers (``output_fmt == 'NHWC'``, ``.layers``, final ``.norm``).
* ``tokens`` — ViTs (DINOv2, DeiT, EVA...): ``B,N,D`` with ``num_prefix_tokens`` CLS/register tokens first and the
  patch tokens on ``patch_embed.grid_size``.

Late masking, the heads and every "is this a ViT?" question go through :func:`adapter_for` / :func:`arch_layout`.
The adapters are a registry: a new family is an adapter class with :func:`register` (in any module imported before
the run), which names the timm modules its models live in and recognises a built backbone; the rest of the project
asks it, never the family.
"""

from __future__ import annotations

import timm
import torch
from timm.models import checkpoint_seq
from torch import nn

from bgmask.errors import BgmaskError
from bgmask.masking import NEAREST, MaskGrid, mask_features

LAYOUTS = ("NCHW", "NHWC", "tokens")


class UnsupportedBackbone(BgmaskError, ValueError):
    """A backbone whose feature layout the project does not know; the message lists what is supported."""


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


def arch_layout(arch: str) -> str | None:
    """The layout of a timm model name, without building it (None for an unknown name)."""
    module = _timm_module(arch)
    if module is None:
        return None
    return next(cls.layout for cls in _ADAPTERS if cls.claims_module(module))


def takes_img_size(arch: str) -> bool:
    """Transformers fix their position embeddings (or windows) at build time; CNNs take any input size."""
    module = _timm_module(arch)
    return module is not None and next(cls.fixed_input_size for cls in _ADAPTERS if cls.claims_module(module))


class BackboneAdapter:
    """Feature access for one backbone in its native layout, with masking and the second-last split."""

    layout = "NCHW"
    timm_modules: tuple[str, ...] = ()  # the timm modules whose models this adapter serves (empty: any)
    fixed_input_size = False  # the model is built for one input size (``img_size``)
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

    @property
    def is_vit(self) -> bool:
        return self.layout == "tokens"

    def pool_geometry(self) -> dict:
        """What :func:`bgmask.heads.pool` needs to read this backbone's features (token layouts)."""
        return {"num_prefix_tokens": self.num_prefix_tokens, "grid_size": self.grid_size}

    @property
    def supports_second_last(self) -> bool:
        return hasattr(self.backbone, "stages")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def head_pool(self, feats: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        """A feature map -> the input of the linear head (timm's ``forward_head(pre_logits=True)``: pooling and,
        for ConvNeXt, the final norm). Token layouts pool by head name instead (:func:`bgmask.heads.pool`)."""
        return self.backbone.forward_head(feats, pre_logits=pre_logits)

    def mask(self, feats: torch.Tensor, masks: torch.Tensor, to_grid: MaskGrid = NEAREST) -> torch.Tensor:
        """Zero the background positions of ``feats`` (native layout) and block their gradient; ``to_grid`` brings
        the masks to the feature grid."""
        return mask_features(feats, masks, to_grid)

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

    def mask(self, feats, masks, to_grid=NEAREST):
        return mask_features(feats.permute(0, 3, 1, 2), masks, to_grid).permute(0, 2, 3, 1)

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

    @property
    def width(self) -> int:
        return self.backbone.embed_dim

    def mask(self, tokens, masks, to_grid=NEAREST):
        """Patch tokens on the background are zeroed; CLS and register tokens are kept."""
        n_prefix = self.num_prefix_tokens
        prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
        (h, w), (b, n, d) = self.grid_size, patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, h, w)
        masked = mask_features(grid, masks, to_grid).reshape(b, d, n).transpose(1, 2)
        return torch.cat([prefix, masked], dim=1)

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
                              f"(bgmask.backbones.register).")
