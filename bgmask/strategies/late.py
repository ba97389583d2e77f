"""Late masking: full images in, background features zeroed (and given no gradient) before pooling and the head.

Any backbone with an adapter (:mod:`bgmask.backbones`): CNNs (NCHW), Swin-style models (NHWC) and ViTs (tokens).
The final features are masked; with ``second_last`` the features after the second-last stage/block are masked and
the last stage/block and the final norm run on them (ViTs first pass them through a new LayerNorm). ViT CLS and
register tokens are never masked. Masks are binary ``B,H,W`` (1 = bird) at input resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from bgmask.config import TrainConfig, option
from bgmask.data.cub import GT_MASK_SUB_PATH, WATERBIRDS_SUB_PATH
from bgmask.errors import ConfigError
from bgmask.masking import MASK_FOLDERS
from bgmask.models import Classifier, foreground_mean
from bgmask.strategies.base import DataView, Strategy, register

MASK_SOURCES = ("precomputed", "gt", "segmenter")


@dataclass
class LateOptions:
    section: ClassVar[str] = "late masking"
    mask_source: str = option("precomputed", "precomputed: mask folders from mmsegmentation/tools/generate_masks.py; "
                                             "gt: CUB's segmentations (oracle); segmenter: an MMSeg model run on "
                                             "every batch (upstream)", MASK_SOURCES)
    mask_sub_path: str = option(MASK_FOLDERS["images"][0], "precomputed masks for the CUB images (same relative "
                                                           "paths, .png)")
    ood_mask_sub_path: str = option(MASK_FOLDERS[WATERBIRDS_SUB_PATH][0], "precomputed masks for the Waterbirds "
                                                                          "images")
    fm_second_last_block: bool = option(False, "mask after the second-last stage/block")
    feature_masking_last_layer: bool = option(False, "upstream's ConvNeXt switch to mask after the last stage; that "
                                                     "is the default here (upstream's ConvNeXt default was the "
                                                     "second-last)")
    masked_mean: bool = option(False, "ViT: average foreground patch tokens only (default: all, zeros included)")
    seg_model_config_path: str | None = option(None, "MMSeg config (--mask_source segmenter)")
    seg_model_checkpoint_path: str | None = option(None, "MMSeg checkpoint (--mask_source segmenter)")


@register
class LateMasking(Strategy):
    name = "late"
    label = "late masking"
    summary = "full images in, background features zeroed before pooling"
    diagnostics_input = "late"
    Options = LateOptions

    def check(self, cfg: TrainConfig) -> None:
        opts: LateOptions = cfg.strategy_options
        if opts.mask_source == "segmenter":
            for flag in ("seg_model_config_path", "seg_model_checkpoint_path"):
                value = getattr(opts, flag)
                if not value or not Path(value).is_file():
                    raise ConfigError(f"--mask_source segmenter needs --{flag} pointing at an existing file "
                                      f"(got {value!r}).")
        if opts.feature_masking_last_layer and opts.fm_second_last_block:
            raise ConfigError("--feature_masking_last_layer (mask after the last stage) contradicts "
                              "--fm_second_last_block; pick one.")
        if cfg.model.probe_heads is not None and (opts.fm_second_last_block or opts.masked_mean
                                                  or opts.mask_source == "segmenter"):
            raise ConfigError("--probe_heads masks after the last stage/block, with masks loaded with the images: it "
                              "takes neither --fm_second_last_block (a separate run: it trains the last block) nor "
                              "--mask_source segmenter nor --masked_mean (list the head late:masked_mean instead: "
                              "the GAP head over foreground tokens, as --patch_tokens_only --masked_mean).")
        if cfg.model.class_token_only and not opts.fm_second_last_block:
            raise ConfigError("--class_token_only with masking after the last block cannot differ from the baseline: "
                              "the head reads the CLS token, which zeroing patch tokens after the last block never "
                              "reaches. Add --fm_second_last_block (the last block then mixes the masked tokens into "
                              "CLS), or use the default concat(CLS, mean) or --patch_tokens_only head.")

    def data_view(self, cfg: TrainConfig) -> DataView:
        """Full images; masks loaded with them, except from the online segmenter (it predicts them per batch).
        CUB's segmentations serve the ``gt`` source on Waterbirds too: it keeps every bird at its CUB position."""
        opts: LateOptions = cfg.strategy_options
        view = super().data_view(cfg)
        if opts.mask_source == "segmenter":
            return view
        masks = (GT_MASK_SUB_PATH,) * 3 if opts.mask_source == "gt" else \
            (opts.mask_sub_path, opts.mask_sub_path, opts.ood_mask_sub_path)
        return DataView(view.train, view.test, view.ood, masks)

    def wrap_model(self, cfg: TrainConfig, classifier: Classifier) -> nn.Module:
        opts: LateOptions = cfg.strategy_options
        provider = None
        if opts.mask_source == "segmenter":
            from cub_seg.inference import SegmenterMaskProvider

            provider = SegmenterMaskProvider(opts.seg_model_config_path, opts.seg_model_checkpoint_path)
        return LateMaskedClassifier(classifier, second_last=opts.fm_second_last_block, masked_mean=opts.masked_mean,
                                    mask_provider=provider)

    def results_info(self, cfg: TrainConfig) -> dict:
        opts: LateOptions = cfg.strategy_options
        return {"mask_source": opts.mask_source, "variant": "second_last" if opts.fm_second_last_block else "last",
                "masked_mean": opts.masked_mean}


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
        adapter = classifier.adapter
        if second_last:
            adapter._check_second_last()
        self.pre_mask_norm = nn.LayerNorm(adapter.width) if second_last and adapter.is_vit else None
        if second_last and classifier.freeze_backbone:  # upstream trains what runs on the masked features
            for p in self._after_mask_parameters():
                p.requires_grad_(True)

    @property
    def head(self) -> nn.Module:
        return self.classifier.head

    def _after_mask_modules(self) -> list[nn.Module]:
        """What runs on the masked features in the second-last variant: the last stage/block and the final norm."""
        return self.classifier.adapter.last_modules() if self.second_last else []

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
        return self.classifier.head(self._pool(self.masked_features(images, masks), masks))

    def masked_features(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The backbone's final features (native layout), masked after the last or the second-last stage/block."""
        adapter = self.classifier.adapter
        if not self.second_last:
            return adapter.mask(adapter.features(images), masks)
        x = adapter.before_last(images)
        if self.pre_mask_norm is not None:
            x = self.pre_mask_norm(x)
        return adapter.last(adapter.mask(x, masks))

    def _pool(self, feats, masks):
        clf = self.classifier
        if not (clf.is_vit and self.masked_mean and clf.vit_head != "cls"):
            return clf.pool(feats)
        mean = foreground_mean(feats, masks, clf.num_prefix_tokens, clf.adapter.grid_size)
        return mean if clf.vit_head == "mean" else torch.cat([feats[:, 0], mean], dim=1)
