"""Early masking: train and test on pre-masked images (background set to black before the network sees it)."""

from __future__ import annotations

import dataclasses

from bgmask.config import DataConfig, TrainConfig
from bgmask.data.cub import WATERBIRDS_SUB_PATH
from bgmask.masking import MASK_FOLDERS
from bgmask.strategies.base import register
from bgmask.strategies.baseline import Baseline


@register
class EarlyMasking(Baseline):
    name = "early"
    label = "early masking"
    summary = ("masked images: the three image folders default to the masked ones written by "
               "mmsegmentation/tools/generate_masks.py (explicit --image_sub_path_* / --ood_image_sub_path win)")
    diagnostics_input = "early"

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        """Image folders left at the baseline's defaults switch to the masked folders."""
        masked = {"images": MASK_FOLDERS["images"][1], WATERBIRDS_SUB_PATH: MASK_FOLDERS[WATERBIRDS_SUB_PATH][1]}
        defaults = DataConfig()
        changes = {}
        for name in ("image_sub_path_train", "image_sub_path_test", "ood_image_sub_path"):
            value = getattr(cfg.data, name)
            if value == getattr(defaults, name) and value in masked:
                changes[name] = masked[value]
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes))
