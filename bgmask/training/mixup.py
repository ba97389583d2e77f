"""One mixup/cutmix for every strategy: timm's ``Mixup``, with the mask (when a strategy has one) riding along.

The mask travels as an extra channel of the image batch through timm's own ``Mixup``, so every strategy draws the
same random numbers and gets bit-identical image channels and targets (label smoothing included). Cutmix pastes
the same box into the mask; mixup blends the mask like the image, and a position is foreground when either image
has the bird there (both birds are visible in a blend).
"""

from __future__ import annotations

import torch
from timm.data import Mixup


class MaskMixup:
    """``(inputs, labels) -> (inputs, soft targets)`` with ``inputs = [images]`` or ``[images, masks, ...]``.

    Args: those of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``prob``, ``switch_prob``, ``mode``,
    ``label_smoothing``, ``num_classes``). Masks are ``B,H,W`` with 1 = bird and come back with their dtype.
    """

    def __init__(self, **mixup_kwargs):
        self.mixup = Mixup(**mixup_kwargs)

    def __call__(self, inputs, labels):
        images, *rest = inputs
        if not rest:
            mixed, targets = self.mixup(images, labels)
            return [mixed], targets
        masks = rest[0]
        stacked = torch.cat([images, masks[:, None].to(images.dtype)], dim=1)
        mixed, targets = self.mixup(stacked, labels)
        return [mixed[:, :-1].contiguous(), (mixed[:, -1] > 0).to(masks.dtype), *rest[1:]], targets
