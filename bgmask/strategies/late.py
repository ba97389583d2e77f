"""Late masking: full images in, background features zeroed (and given no gradient) before pooling and the head.

The model is :class:`~bgmask.models.late_masked.LateMaskedClassifier`; this module is the strategy: its settings,
what it asks of the data (full images with their masks) and how it wraps the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import nn

from bgmask.config import TrainConfig, option
from bgmask.data.needs import DataNeeds
from bgmask.errors import ConfigError
from bgmask.models import Classifier
from bgmask.models.late_masked import LateMaskedClassifier
from bgmask.models.masking import MASK_DOWNSAMPLING, MaskGrid
from bgmask.strategies.base import ModelInput, Strategy, register

MASK_SOURCES = ("precomputed", "gt", "segmenter")


@dataclass
class LateOptions:
    section: ClassVar[str] = "late masking"
    mask_source: str = option("precomputed", "precomputed: mask folders from mmsegmentation/tools/generate_masks.py "
                                             "(--mask_sub_path, --ood_mask_sub_path); "
                                             "gt: CUB's segmentations (oracle); segmenter: an MMSeg model run on "
                                             "every batch (upstream)", MASK_SOURCES)
    fm_second_last_block: bool = option(False, "mask after the second-last stage/block")
    fm_blocks_after_mask: int = option(0, "stages/blocks that run after the mask: 0 masks the final features "
                                          "(default), 1 is --fm_second_last_block, 2 masks after the third-last "
                                          "stage (ConvNeXt at 64 px: an 8x8 grid), ...; what runs after the mask "
                                          "trains, as in the second-last variant")
    feature_masking_last_layer: bool = option(False, "upstream's ConvNeXt switch to mask after the last stage; that "
                                                     "is the default here (upstream's ConvNeXt default was the "
                                                     "second-last)")
    masked_mean: bool = option(False, "ViT: average foreground patch tokens only (default: all, zeros included)")
    mask_downsample: str = option("nearest-exact", "how a mask reaches the feature grid: nearest-exact (upstream: the "
                                                   "pixel nearest each feature's centre) or area (foreground when "
                                                   "--mask_area_threshold of the feature's square is bird)",
                                  MASK_DOWNSAMPLING)
    mask_area_threshold: float = option(0.5, "--mask_downsample area: the bird fraction of a feature's square that "
                                             "keeps it")
    seg_model_config_path: str | None = option(None, "MMSeg config (--mask_source segmenter)")
    seg_model_checkpoint_path: str | None = option(None, "MMSeg checkpoint (--mask_source segmenter)")


@register
class LateMasking(Strategy):
    name = "late"
    label = "late masking"
    table_column = 2  # the paper's table: baseline, early, late masking
    summary = "full images in, background features zeroed before pooling"
    diagnostics_input = ModelInput.IMAGE_AND_MASK
    Options = LateOptions

    def check(self, cfg: TrainConfig) -> None:
        opts: LateOptions = cfg.strategy_options
        if opts.mask_source == "segmenter":
            for flag in ("seg_model_config_path", "seg_model_checkpoint_path"):
                value = getattr(opts, flag)
                if not value or not Path(value).is_file():
                    raise ConfigError(f"--mask_source segmenter needs --{flag} pointing at an existing file "
                                      f"(got {value!r}).")
        try:
            self._mask_grid(cfg)
        except ValueError as e:
            raise ConfigError(f"--mask_downsample/--mask_area_threshold: {e}.") from None
        if opts.fm_blocks_after_mask < 0 or (opts.fm_second_last_block and opts.fm_blocks_after_mask not in (0, 1)):
            raise ConfigError(f"--fm_blocks_after_mask {opts.fm_blocks_after_mask}: give a count >= 0, and not with "
                              f"--fm_second_last_block (which is --fm_blocks_after_mask 1).")
        if opts.feature_masking_last_layer and self.blocks_after_mask(cfg):
            raise ConfigError("--feature_masking_last_layer (mask after the last stage) contradicts "
                              "--fm_second_last_block / --fm_blocks_after_mask; pick one.")
        if cfg.model.probe_heads is not None and (self.blocks_after_mask(cfg) or opts.masked_mean
                                                  or opts.mask_source == "segmenter"):
            raise ConfigError("--probe_heads masks after the last stage/block, with masks loaded with the images: it "
                              "takes neither --fm_second_last_block (a separate run: it trains the last block) nor "
                              "--mask_source segmenter nor --masked_mean (list the head late:masked_mean instead: "
                              "the GAP head over foreground tokens, as --patch_tokens_only --masked_mean).")
        if cfg.model.class_token_only and not self.blocks_after_mask(cfg):
            raise ConfigError("--class_token_only with masking after the last block cannot differ from the baseline: "
                              "the head reads the CLS token, which zeroing patch tokens after the last block never "
                              "reaches. Add --fm_second_last_block (the last block then mixes the masked tokens into "
                              "CLS), or use the default concat(CLS, mean) or --patch_tokens_only head.")

    def needs(self, cfg: TrainConfig) -> DataNeeds:
        """Full images with their masks, except from the online segmenter (it predicts them per batch)."""
        source = cfg.strategy_options.mask_source
        return DataNeeds(masks=None if source == "segmenter" else "ground_truth" if source == "gt" else "predicted")

    def wrap_model(self, cfg: TrainConfig, classifier: Classifier) -> nn.Module:
        opts: LateOptions = cfg.strategy_options
        provider = None
        if opts.mask_source == "segmenter":
            from cub_seg.inference import SegmenterMaskProvider

            provider = SegmenterMaskProvider(opts.seg_model_config_path, opts.seg_model_checkpoint_path)
        return LateMaskedClassifier(classifier, masked_mean=opts.masked_mean, mask_provider=provider,
                                    to_grid=self._mask_grid(cfg), after=self.blocks_after_mask(cfg))

    @staticmethod
    def blocks_after_mask(cfg: TrainConfig) -> int:
        """Stages/blocks between the mask and the pooling (``--fm_second_last_block`` is 1)."""
        opts: LateOptions = cfg.strategy_options
        return 1 if opts.fm_second_last_block else opts.fm_blocks_after_mask

    def _mask_grid(self, cfg: TrainConfig) -> MaskGrid:
        opts: LateOptions = cfg.strategy_options
        return MaskGrid(opts.mask_downsample, opts.mask_area_threshold)

    def results_info(self, cfg: TrainConfig) -> dict:
        opts: LateOptions = cfg.strategy_options
        return {"mask_source": opts.mask_source, "variant": variant_name(self.blocks_after_mask(cfg)),
                "masked_mean": opts.masked_mean, "mask_downsample": opts.mask_downsample,
                **({"mask_area_threshold": opts.mask_area_threshold} if opts.mask_downsample == "area" else {})}


VARIANTS = ("last", "second_last", "third_last", "fourth_last")


def variant_name(after: int) -> str:
    """results.json's ``variant``: where the features are masked (``last``, ``second_last``, ``third_last``, ...)."""
    return VARIANTS[after] if after < len(VARIANTS) else f"last_minus_{after}"
