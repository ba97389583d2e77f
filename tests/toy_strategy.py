"""A toy masking strategy, all in this one file: the background is replaced by Gaussian noise inside the model.

It is the proof that a strategy is one module (tests/test_strategies.py trains it). Shipped strategies live in
``bgmask/strategies/``, where they are found without being listed anywhere; this one is imported by its test.
Run it like a shipped one: ``python tests/toy_strategy.py --data_path ... --snapshot_dir ...``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from bgmask import cli
from bgmask.config import TrainConfig, option
from bgmask.strategies import DataNeeds, Strategy, register


@dataclass
class NoiseOptions:
    section: ClassVar[str] = "noise background"
    noise_std: float = option(1.0, "std of the noise that replaces the background (in normalised pixel units)")


class NoiseBackgroundModel(nn.Module):
    """``model(images, masks)``: background pixels (mask 0) become noise, then the plain classifier runs. The noise
    is fresh in training and fixed (seed 0) in evaluation, so evaluations are repeatable."""

    def __init__(self, classifier: nn.Module, std: float):
        super().__init__()
        self.classifier, self.std = classifier, std

    def new_parameters(self) -> list[nn.Parameter]:
        return self.classifier.new_parameters()

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        generator = None if self.training else torch.Generator(images.device).manual_seed(0)
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        fg = masks[:, None].to(images.dtype)
        return self.classifier(images * fg + self.std * noise * (1 - fg))


@register
class NoiseBackground(Strategy):
    name = "noise_background"
    label = "noise background"
    summary = "full images and their ground-truth masks; the model replaces the background by noise"
    diagnostics_input = None  # no diagnostics adapter: results.json says so
    Options = NoiseOptions

    def needs(self, cfg: TrainConfig) -> DataNeeds:
        return DataNeeds(masks="ground_truth")

    def wrap_model(self, cfg: TrainConfig, classifier: nn.Module) -> nn.Module:
        return NoiseBackgroundModel(classifier, cfg.strategy_options.noise_std)

    def results_info(self, cfg: TrainConfig) -> dict:
        return {"noise_std": cfg.strategy_options.noise_std}


if __name__ == "__main__":
    sys.exit(cli.main([NoiseBackground.name], description=__doc__))
