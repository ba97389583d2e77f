"""Mixup / cutmix that also mixes segmentation masks (late masking with precomputed or ground-truth masks).

Batch mode, as timm's ``Mixup(mode='batch')``: one lambda per batch, each image mixed with the batch flipped.
Cutmix pastes the same box into the mask; mixup blends images and takes the union of the two masks (a feature
position is foreground if it is foreground in either image, since both birds are visible in the blend).
"""

from __future__ import annotations

import numpy as np
import torch
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target


class MaskAwareMixup:
    """``(inputs=[images, masks], labels) -> ([images, masks], soft targets)``.

    Args mirror timm's Mixup: ``mixup_alpha``, ``cutmix_alpha``, ``prob`` (apply at all), ``switch_prob`` (cutmix
    instead of mixup when both are on), ``label_smoothing``, ``num_classes``. Random draws use numpy's global RNG,
    as timm does, so runs are reproducible from the saved RNG state.
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, num_classes: int = 1000):
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing, self.num_classes = label_smoothing, num_classes

    def _sample(self) -> tuple[float, bool]:
        if np.random.rand() >= self.prob or (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0):
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or np.random.rand() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(np.random.beta(alpha, alpha)), use_cutmix

    def __call__(self, inputs, labels):
        images, masks = inputs[0], inputs[1]
        if images.shape[0] % 2:
            raise ValueError("mixup/cutmix needs an even batch size")
        lam, use_cutmix = self._sample()
        if lam < 1.0:
            if use_cutmix:
                (y0, y1, x0, x1), lam = cutmix_bbox_and_lam(images.shape, lam, correct_lam=True)
                images = images.clone()
                masks = masks.clone()
                images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
                masks[..., y0:y1, x0:x1] = masks.flip(0)[..., y0:y1, x0:x1]
            else:
                images = images * lam + images.flip(0) * (1.0 - lam)
                masks = torch.maximum(masks, masks.flip(0))
        targets = mixup_target(labels, self.num_classes, lam, self.label_smoothing)
        return [images, masks, *inputs[2:]], targets
