"""Baseline: original images, the plain classifier."""

from __future__ import annotations

from bgmask.config import TrainConfig
from bgmask.strategies.base import Strategy, register


@register
class Baseline(Strategy):
    name = "none"
    label = "baseline"
    summary = "original images (baseline)"

    def results_info(self, cfg: TrainConfig) -> dict:
        return {"image_sub_path_train": cfg.data.image_sub_path_train,
                "image_sub_path_test": cfg.data.image_sub_path_test,
                "ood_image_sub_path": cfg.data.ood_image_sub_path}
