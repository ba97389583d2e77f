"""Early masking: train and test on pre-masked images (background set to black before the network sees it)."""

from __future__ import annotations

from bgmask.config import TrainConfig
from bgmask.data.needs import DataNeeds
from bgmask.strategies.base import ModelInput, Strategy, register


@register
class EarlyMasking(Strategy):
    name = "early"
    label = "early masking"
    table_column = 1  # the paper's table: baseline, early, late masking
    summary = ("masked images: the benchmark's image folders default to the masked ones written by "
               "mmsegmentation/tools/generate_masks.py (explicit --image_sub_path_* / --ood_image_sub_path win)")
    diagnostics_input = ModelInput.MASKED_IMAGE

    def needs(self, cfg: TrainConfig) -> DataNeeds:
        return DataNeeds(images="masked")
