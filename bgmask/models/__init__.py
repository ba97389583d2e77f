"""The model axis: a timm backbone read through its family's adapter (:mod:`~bgmask.models.backbones`), the heads
(:mod:`~bgmask.models.heads`), the classifier (:mod:`~bgmask.models.classifier`), late masking's wrapper
(:mod:`~bgmask.models.late_masked`, on :mod:`~bgmask.models.masking`), probe heads (:mod:`~bgmask.models.probes`)
and the weights they start from (:mod:`~bgmask.models.weights`). Nothing here knows of data, strategies or runs."""

from bgmask.models.classifier import (
    HEAD_INITS,
    HEAD_NORM_RULES,
    WEIGHT_DECAY_RULES,
    Classifier,
    create_classifier,
    param_groups,
)
from bgmask.models.weights import ModelSpec

__all__ = ["HEAD_INITS", "HEAD_NORM_RULES", "WEIGHT_DECAY_RULES", "Classifier", "ModelSpec", "create_classifier",
           "param_groups"]
