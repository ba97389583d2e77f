"""Baseline: original images, the plain classifier."""

from __future__ import annotations

from bgmask.strategies.base import Strategy, register


@register
class Baseline(Strategy):
    name = "none"
    label = "baseline"
    summary = "original images (baseline)"
