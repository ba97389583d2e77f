"""Baseline: original images, the plain classifier."""

from __future__ import annotations

from bgmask.strategies.base import Strategy, register


@register
class Baseline(Strategy):
    name = "none"
    label = "baseline"
    table_column = 0  # the paper's table: baseline, early, late masking
    summary = "original images (baseline)"
