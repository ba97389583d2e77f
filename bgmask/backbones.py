"""Backbone adapters: the one place that knows each timm family's feature layout and its last stage or block.

Three layouts cover the timm families the project supports:

* ``NCHW`` — CNNs (ConvNeXt, ResNet, ...): ``forward_features`` returns ``B,C,H,W``; staged CNNs (``.stages``) also
  split into "up to the second-last stage" and "last stage + ``norm_pre``".
* ``NHWC`` — Swin-style hierarchical transformers (``output_fmt == 'NHWC'``, ``.layers``, final ``.norm``).
* ``tokens`` — ViTs (DINOv2, DeiT, EVA...): ``B,N,D`` with ``num_prefix_tokens`` CLS/register tokens first and the
  patch tokens on ``patch_embed.grid_size``.

Late masking, the heads and every "is this a ViT?" question go through :func:`adapter_for` / :func:`arch_layout`.
"""

from __future__ import annotations

import timm
import torch
from timm.models import checkpoint_seq
from torch import nn

from bgmask.errors import BgmaskError
from bgmask.masking import mask_features

LAYOUTS = ("NCHW", "NHWC", "tokens")
_TOKEN_MODULES = ("vision_transformer", "vision_transformer_hybrid", "deit", "eva", "beit")
_NHWC_MODULES = ("swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr")


class UnsupportedBackbone(BgmaskError, ValueError):
    """A backbone whose feature layout the project does not know; the message lists what is supported."""


def arch_layout(arch: str) -> str | None:
    """The layout of a timm model name, without building it (None for an unknown name)."""
    try:
        module = timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
    except (RuntimeError, KeyError):
        return None
    return "tokens" if module in _TOKEN_MODULES else "NHWC" if module in _NHWC_MODULES else "NCHW"


def takes_img_size(arch: str) -> bool:
    """Transformers fix their position embeddings (or windows) at build time; CNNs take any input size."""
    return arch_layout(arch) in ("tokens", "NHWC")


class BackboneAdapter:
    """Feature access for one backbone in its native layout, with masking and the second-last split."""

    layout = "NCHW"

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone

    @property
    def is_vit(self) -> bool:
        return self.layout == "tokens"

    @property
    def supports_second_last(self) -> bool:
        return hasattr(self.backbone, "stages")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def mask(self, feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Zero the background positions of ``feats`` (native layout) and block their gradient."""
        return mask_features(feats, masks)

    def before_last(self, x: torch.Tensor) -> torch.Tensor:
        """Features after every stage but the last (native layout)."""
        self._check_second_last()
        x = self.backbone.stem(x)
        for stage in self.backbone.stages[:-1]:
            x = stage(x)
        return x

    def last(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage and the final norm, on features from :meth:`before_last`."""
        x = self.backbone.stages[-1](x)
        return self.backbone.norm_pre(x) if hasattr(self.backbone, "norm_pre") else x

    def last_modules(self) -> list[nn.Module]:
        """What :meth:`last` runs (it learns on masked features in the second-last variant)."""
        return [self.backbone.stages[-1], *([self.backbone.norm_pre] if hasattr(self.backbone, "norm_pre") else [])]

    def _check_second_last(self) -> None:
        if not self.supports_second_last:
            raise UnsupportedBackbone(f"{type(self.backbone).__name__} has no stages to split; the second-last "
                                      f"variant needs a staged CNN (ConvNeXt), a Swin or a ViT.")


class NHWCAdapter(BackboneAdapter):
    """Swin-style backbones: ``B,H,W,C`` features, stages in ``.layers``, a final ``.norm``."""

    layout = "NHWC"

    @property
    def supports_second_last(self) -> bool:
        return hasattr(self.backbone, "layers")

    def mask(self, feats, masks):
        return mask_features(feats.permute(0, 3, 1, 2), masks).permute(0, 2, 3, 1)

    def before_last(self, x):
        self._check_second_last()
        x = self.backbone.patch_embed(x)
        for layer in self.backbone.layers[:-1]:
            x = layer(x)
        return x

    def last(self, x):
        return self.backbone.norm(self.backbone.layers[-1](x))

    def last_modules(self):
        return [self.backbone.layers[-1], self.backbone.norm]


class TokenAdapter(BackboneAdapter):
    """ViTs: ``B,N,D`` tokens, prefix (CLS/register) tokens first, patch tokens on ``patch_embed.grid_size``."""

    layout = "tokens"

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

    def mask(self, tokens, masks):
        """Patch tokens on the background are zeroed; CLS and register tokens are kept."""
        n_prefix = self.num_prefix_tokens
        prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
        (h, w), (b, n, d) = self.grid_size, patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, h, w)
        masked = mask_features(grid, masks).reshape(b, d, n).transpose(1, 2)
        return torch.cat([prefix, masked], dim=1)

    def before_last(self, x):
        backbone = self.backbone
        x = backbone.patch_embed(x)
        x = backbone._pos_embed(x)
        x = backbone.patch_drop(x)
        x = backbone.norm_pre(x)
        if getattr(backbone, "grad_checkpointing", False) and torch.is_grad_enabled():
            return checkpoint_seq(backbone.blocks[:-1], x)  # as timm's forward_features does
        for block in backbone.blocks[:-1]:
            x = block(x)
        return x

    def last(self, x):
        return self.backbone.norm(self.backbone.blocks[-1](x))

    def last_modules(self):
        return [self.backbone.blocks[-1], self.backbone.norm]


def adapter_for(backbone: nn.Module) -> BackboneAdapter:
    """The adapter of a timm backbone; an architecture of unknown layout is refused with a clear message."""
    if hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks") and hasattr(backbone, "num_prefix_tokens"):
        return TokenAdapter(backbone)
    if getattr(backbone, "output_fmt", "NCHW") == "NHWC":
        if not hasattr(backbone, "layers"):
            raise UnsupportedBackbone(f"{type(backbone).__name__} returns NHWC features but has no .layers; "
                                      f"supported: CNNs (NCHW), Swin-style NHWC models and ViTs.")
        return NHWCAdapter(backbone)
    if getattr(backbone, "output_fmt", "NCHW") != "NCHW" or not hasattr(backbone, "forward_features"):
        raise UnsupportedBackbone(f"{type(backbone).__name__} has an unknown feature layout "
                                  f"({getattr(backbone, 'output_fmt', '?')}); supported: CNNs (NCHW), Swin-style "
                                  f"NHWC models and ViTs (tokens).")
    return BackboneAdapter(backbone)
