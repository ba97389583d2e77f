"""A toy backbone family, all in this one file: a timm model and its adapter.

It is the proof that a backbone family is one module (tests/test_architecture.py trains the baseline, early and
late masking on it, with diagnostics). ``toy_gridnet`` keeps its feature map in ``trunk`` (no
``forward_features``), pools by the maximum (no ``forward_head``) and has two stages, so the second-last late
masking variant works too. Everything the project asks of a family goes through :class:`GridNetAdapter`.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from bgmask.models.backbones import BackboneAdapter, register


class GridNet(nn.Module):
    """Two convolution stages to a ``B,C,H/4,W/4`` map."""

    def __init__(self, width: int = 16, **_):
        super().__init__()
        self.num_features = width
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.stages = nn.ModuleList([nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 3, padding=1)),
                                     nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 3, stride=2, padding=1))])

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).amax(dim=(2, 3))


@register_model
def toy_gridnet(pretrained: bool = False, **kwargs) -> GridNet:
    return GridNet(**kwargs)


@register
class GridNetAdapter(BackboneAdapter):
    layout = "NCHW"
    timm_modules = ("toy_backbone",)  # the module toy_gridnet is registered from

    @classmethod
    def accepts(cls, backbone: nn.Module) -> bool:
        return isinstance(backbone, GridNet)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.trunk(x)

    def head_pool(self, feats: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return feats.amax(dim=(2, 3))

    def before_last(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.stages[0](self.backbone.stem(x))

    def last(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.stages[-1](x)

    def last_modules(self) -> list[nn.Module]:
        return [self.backbone.stages[-1]]
