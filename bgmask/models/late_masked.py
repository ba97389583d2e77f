"""The late-masked classifier: full images in, background features zeroed (and given no gradient) before pooling.

Any backbone with an adapter (:mod:`bgmask.models.backbones`): CNNs (NCHW), Swin-style models (NHWC) and ViTs (tokens).
The final features are masked; with ``second_last`` the features after the second-last stage/block are masked and
the last stage/block and the final norm run on them (ViTs first pass them through a new LayerNorm); ``after=k``
masks before the last ``k`` stages/blocks (a finer grid at the same input, for CNNs). ViT CLS and
register tokens are never masked. Masks are binary ``B,H,W`` (1 = bird) at input resolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bgmask.models.classifier import Classifier
from bgmask.models.heads import LATE
from bgmask.models.masking import NEAREST, MaskGrid

# --masked_mean: the ViT heads that average patch tokens average the foreground ones only.
FOREGROUND_MEAN = {"mean": "masked_mean", "cls_mean": "cls_masked_mean"}


class LateMaskedClassifier(nn.Module):
    """Wrap a :class:`~bgmask.models.Classifier` so ``forward(images, masks)`` masks its features.

    Args:
        classifier: the plain classifier (its ``head`` stays the only part trained from scratch, besides the
            ViT second-last LayerNorm).
        second_last: mask after the second-last stage/block instead of after the last (``after=1``).
        after: how many stages/blocks run after the mask (0: mask the final features; overrides ``second_last``).
        masked_mean: ViT mean pooling over foreground patch tokens only (default: over all patch tokens, zeros
            included, as upstream).
        mask_provider: ``images -> masks`` used when ``forward`` gets no masks (online segmenter). It is frozen and
            never part of the checkpoint.
        to_grid: how the masks reach the feature grid (default nearest-exact, upstream's; ``--mask_downsample``).
    """

    def __init__(self, classifier: Classifier, second_last: bool = False, masked_mean: bool = False,
                 mask_provider: Callable[[torch.Tensor], torch.Tensor] | None = None, to_grid: MaskGrid = NEAREST,
                 after: int | None = None):
        super().__init__()
        self.to_grid = to_grid
        self.classifier = classifier
        self.after = int(second_last) if after is None else after
        self.second_last = self.after > 0  # the features pass stages/blocks after the mask
        # An adapter written for the second-last split alone takes no count: it is passed only when it is not 1.
        self._split = () if self.after == 1 else (self.after,)
        second_last = self.second_last
        self.masked_mean = masked_mean
        self.head_kind = FOREGROUND_MEAN.get(classifier.head_kind, classifier.head_kind) if masked_mean \
            else classifier.head_kind
        # Stored outside the module tree: no parameters in the optimizer or the state dict, not wrapped by DDP.
        self.__dict__["mask_provider"] = mask_provider
        adapter = classifier.adapter
        if second_last:
            adapter._check_second_last(*self._split)
        self.pre_mask_norm = adapter.new_pre_mask_norm() if second_last else None
        if second_last and classifier.freeze_backbone:  # upstream trains what runs on the masked features
            for p in self._after_mask_parameters():
                p.requires_grad_(True)

    @property
    def head(self) -> nn.Module:
        return self.classifier.head

    @property
    def head_names(self) -> list[str]:
        return [LATE + self.head_kind]

    @property
    def layout(self) -> str:
        return self.classifier.layout

    @property
    def adapter(self):
        return self.classifier.adapter

    def _after_mask_modules(self) -> list[nn.Module]:
        """What runs on the masked features in the second-last variant: the last stage/block and the final norm."""
        return self.classifier.adapter.last_modules(*self._split) if self.second_last else []

    def _after_mask_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._after_mask_modules() for p in m.parameters()]

    def new_parameters(self) -> list[nn.Parameter]:
        """Trained at the scratch learning rate: the head; in the second-last variant also what runs on the masked
        features (the last stage/block and the final norm, which upstream trains at the head's rate and unfreezes
        even with a frozen backbone) and, for ViTs, the new LayerNorm before masking."""
        extra = list(self.pre_mask_norm.parameters()) if self.pre_mask_norm is not None else []
        return self.classifier.new_parameters() + self._after_mask_parameters() + extra

    def train(self, mode: bool = True):
        super().train(mode)
        self.classifier.train(mode)  # keeps a frozen backbone in eval mode...
        for module in self._after_mask_modules():  # ...except the part that learns on masked features
            module.train(mode)
        return self

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        if masks is None:
            if self.mask_provider is None:
                raise ValueError("no masks given and no segmenter configured (--mask_source segmenter)")
            with torch.no_grad():
                masks = self.mask_provider(images)
        return self.head_from_features(self.masked_features(images, masks), masks)

    def masked_features(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The backbone's final features (native layout), masked after the last or the second-last stage/block."""
        adapter = self.classifier.adapter
        if not self.second_last:
            return adapter.mask(adapter.features(images), masks, self.to_grid)
        x = adapter.before_last(images, *self._split)
        if self.pre_mask_norm is not None:
            x = self.pre_mask_norm(x)
        return adapter.last(adapter.mask(x, masks, self.to_grid), *self._split)

    def pool(self, feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Masked features -> head input (:func:`bgmask.models.heads.pool` with this model's head)."""
        return self.classifier.pool(feats, masks, kind=self.head_kind, to_grid=self.to_grid)

    # What the diagnostics ask of every model (bgmask.run.bias_report).
    def attribution_features(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.masked_features(images, masks)

    def head_from_features(self, feats: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier.head(self.pool(feats, masks))
