"""Late masking's feature masking: binary masks brought to a feature grid, and background features zeroed with their
gradient blocked."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_to_feature_grid(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Downsample binary masks ``B,H,W`` (or ``B,1,H,W``) to a feature grid ``B,1,h,w`` with nearest-exact.

    The result is float {0, 1} (1 = foreground), ready to multiply into a ``B,C,h,w`` feature map.
    """
    if mask.ndim == 3:
        mask = mask[:, None]
    return F.interpolate((mask > 0).float(), size=size, mode="nearest-exact")


def mask_features(feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Late masking: zero the background positions of a ``B,C,h,w`` feature map and block their gradient.

    The mask reaches the feature grid by nearest-exact interpolation. The product is a new tensor (nothing is
    modified in place), and a backward hook multiplies the incoming gradient by the same mask, so background
    features receive exactly zero gradient.
    """
    grid = mask_to_feature_grid(masks, tuple(feats.shape[-2:])).to(feats.dtype)
    masked = feats * grid
    if masked.requires_grad:
        masked.register_hook(lambda grad: grad * grid)
    return masked
