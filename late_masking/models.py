"""Late-masked classifiers: background features are zeroed (and get no gradient) before pooling and the head.

ConvNeXt / any timm CNN: the final feature map is masked; with ``second_last`` the map after the second-last stage
is masked and the last stage runs on it. ViT: patch tokens after the last block are masked (CLS and register tokens
kept); with ``second_last`` the tokens after the second-last block go through a new LayerNorm, are masked, then the
last block and the final norm run. Masks are binary ``B,H,W`` (1 = bird) at input resolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bgmask.masking import mask_features, mask_to_feature_grid
from bgmask.models import Classifier


class LateMaskedClassifier(nn.Module):
    """Wrap a :class:`~bgmask.models.Classifier` so ``forward(images, masks)`` masks its features.

    Args:
        classifier: the plain classifier (its ``head`` stays the only part trained from scratch, besides the
            ViT second-last LayerNorm).
        second_last: mask after the second-last stage/block instead of after the last.
        masked_mean: ViT mean pooling over foreground patch tokens only (default: over all patch tokens, zeros
            included, as upstream).
        mask_provider: ``images -> masks`` used when ``forward`` gets no masks (online segmenter). It is frozen and
            never part of the checkpoint.
    """

    def __init__(self, classifier: Classifier, second_last: bool = False, masked_mean: bool = False,
                 mask_provider: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.classifier = classifier
        self.second_last = second_last
        self.masked_mean = masked_mean
        # Stored outside the module tree: no parameters in the optimizer or the state dict, not wrapped by DDP.
        self.__dict__["mask_provider"] = mask_provider
        backbone = classifier.backbone
        if classifier.is_vit:
            self.pre_mask_norm = nn.LayerNorm(backbone.embed_dim) if second_last else None
        else:
            self.pre_mask_norm = None
            if second_last and not hasattr(backbone, "stages"):
                raise ValueError(f"{type(backbone).__name__} has no .stages; the second-last-stage variant needs a "
                                 f"staged CNN such as ConvNeXt.")
        if second_last and classifier.freeze_backbone:  # upstream trains what runs on the masked features
            for p in self._after_mask_parameters():
                p.requires_grad_(True)

    @property
    def head(self) -> nn.Module:
        return self.classifier.head

    def _after_mask_modules(self) -> list[nn.Module]:
        """What runs on the masked features in the second-last variant: the last stage/block and the final norm."""
        if not self.second_last:
            return []
        backbone = self.classifier.backbone
        if self.classifier.is_vit:
            return [backbone.blocks[-1], backbone.norm]
        return [backbone.stages[-1], *([backbone.norm_pre] if hasattr(backbone, "norm_pre") else [])]

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
        feats = self._vit_features(images, masks) if self.classifier.is_vit else self._cnn_features(images, masks)
        return self.classifier.head(self._pool(feats, masks))

    # ------------------------------------------------------------------------------------------------ CNN
    def _cnn_features(self, images, masks):
        backbone = self.classifier.backbone
        if not self.second_last:
            return mask_features(self.classifier.features(images), masks)
        x = backbone.stem(images)
        for stage in backbone.stages[:-1]:
            x = stage(x)
        x = backbone.stages[-1](mask_features(x, masks))
        return backbone.norm_pre(x) if hasattr(backbone, "norm_pre") else x

    # ------------------------------------------------------------------------------------------------ ViT
    def _mask_tokens(self, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        n_prefix = self.classifier.num_prefix_tokens
        prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
        h, w = self.classifier.backbone.patch_embed.grid_size
        b, n, d = patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, h, w)
        masked = mask_features(grid, masks).reshape(b, d, n).transpose(1, 2)
        return torch.cat([prefix, masked], dim=1)

    def _vit_features(self, images, masks):
        backbone = self.classifier.backbone
        if not self.second_last:
            return self._mask_tokens(self.classifier.features(images), masks)
        x = backbone.patch_embed(images)
        x = backbone._pos_embed(x)
        x = backbone.patch_drop(x)
        x = backbone.norm_pre(x)
        for block in backbone.blocks[:-1]:
            x = block(x)
        x = self._mask_tokens(self.pre_mask_norm(x), masks)
        x = backbone.blocks[-1](x)
        return backbone.norm(x)

    def _pool(self, feats, masks):
        clf = self.classifier
        if not (clf.is_vit and self.masked_mean and clf.vit_head != "cls"):
            return clf.pool(feats)
        h, w = clf.backbone.patch_embed.grid_size
        weights = mask_to_feature_grid(masks, (h, w)).flatten(1)[..., None]  # B, N, 1
        patches = feats[:, clf.num_prefix_tokens:]
        mean = (patches * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return mean if clf.vit_head == "mean" else torch.cat([feats[:, 0], mean], dim=1)
