"""A toy backbone family with a token layout, all in this one file: a timm model and its adapter.

It is the proof that a token family is one module too (tests/test_architecture.py trains every strategy, probe
heads and diagnostics on it). ``toy_tokennet`` lays its tokens out unlike timm's ViTs: the patch tokens come first
and its one summary token last, and it has none of their attribute names (no ``patch_embed``, ``blocks``,
``num_prefix_tokens``). Its adapter reads that layout in three methods and inherits the token heads, masking, the
second-last split's pre-mask norm and the attribution from :class:`bgmask.models.backbones.TokenAdapter`.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from bgmask.models.backbones import TokenAdapter, register

PATCH = 8


class TokenNet(nn.Module):
    """8-pixel patches -> ``width``-wide tokens, a summary token appended, two transformer layers, a final norm."""

    def __init__(self, img_size: int = 32, width: int = 16, **_):
        super().__init__()
        self.num_features = width
        self.grid = (img_size // PATCH, img_size // PATCH)
        self.embed = nn.Conv2d(3, width, PATCH, stride=PATCH)
        self.summary = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1] + 1, width) * 0.02)
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True)
                                     for _ in range(2)])
        self.final_norm = nn.LayerNorm(width)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2)  # B, N, D, row-major on the grid
        return torch.cat([patches, self.summary.expand(len(x), -1, -1)], dim=1) + self.position

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[:, -1]


@register_model
def toy_tokennet(pretrained: bool = False, **kwargs) -> TokenNet:
    return TokenNet(**kwargs)


@register
class TokenNetAdapter(TokenAdapter):
    timm_modules = ("toy_tokens",)  # the module toy_tokennet is registered from

    @classmethod
    def accepts(cls, backbone: nn.Module) -> bool:
        return isinstance(backbone, TokenNet)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.backbone.grid

    @property
    def num_prefix_tokens(self) -> int:
        return 0  # its summary token comes last

    # The layout: patch tokens first, the summary token last.
    def summary_token(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, -1]

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, :-1]

    def with_patch_tokens(self, tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return torch.cat([patches, tokens[:, -1:]], dim=1)

    # Its parts.
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(x)

    def before_last(self, x: torch.Tensor, after: int = 1) -> torch.Tensor:
        self._check_second_last(after)
        x = self.backbone.tokens(x)
        for layer in self.backbone.layers[:-after]:
            x = layer(x)
        return x

    def last(self, x: torch.Tensor, after: int = 1) -> torch.Tensor:
        for layer in self.backbone.layers[-after:]:
            x = layer(x)
        return self.backbone.final_norm(x)

    def last_modules(self, after: int = 1) -> list[nn.Module]:
        return [*self.backbone.layers[-after:], self.backbone.final_norm]

    def _stages(self) -> nn.Module:
        return self.backbone.layers
