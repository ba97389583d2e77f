"""Late masking's feature masking: binary masks brought to a feature grid, and background features zeroed with their
gradient blocked."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MASK_DOWNSAMPLING = ("nearest-exact", "area")


@dataclass(frozen=True)
class MaskGrid:
    """How a binary input-resolution mask reaches a feature grid.

    ``nearest-exact`` (upstream's, the default): each feature takes the mask pixel nearest its centre.
    ``area``: each feature is foreground when at least ``threshold`` of its receptive square (the input pixels its
    grid cell covers) is bird. The two agree on a fine grid and differ where a cell holds both bird and background.
    """

    downsample: str = "nearest-exact"
    threshold: float = 0.5

    def __post_init__(self):
        if self.downsample not in MASK_DOWNSAMPLING:
            raise ValueError(f"unknown mask downsampling {self.downsample!r}; choose from {MASK_DOWNSAMPLING}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"the area threshold must be in (0, 1], got {self.threshold}")

    def __call__(self, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``B,H,W`` (or ``B,1,H,W``) masks -> float {0, 1} ``B,1,h,w`` (1 = foreground)."""
        if mask.ndim == 3:
            mask = mask[:, None]
        binary = (mask > 0).float()
        if self.downsample == "nearest-exact":
            return F.interpolate(binary, size=size, mode="nearest-exact")
        return (F.adaptive_avg_pool2d(binary, size) >= self.threshold).float()


NEAREST = MaskGrid()


def mask_to_feature_grid(mask: torch.Tensor, size: tuple[int, int], to_grid: MaskGrid = NEAREST) -> torch.Tensor:
    """Downsample binary masks ``B,H,W`` (or ``B,1,H,W``) to a feature grid ``B,1,h,w`` (default: nearest-exact).

    The result is float {0, 1} (1 = foreground), ready to multiply into a ``B,C,h,w`` feature map.
    """
    return to_grid(mask, size)


def mask_features(feats: torch.Tensor, masks: torch.Tensor, to_grid: MaskGrid = NEAREST) -> torch.Tensor:
    """Late masking: zero the background positions of a ``B,C,h,w`` feature map and block their gradient.

    The mask reaches the feature grid by ``to_grid`` (default nearest-exact) as {0, 1}. The product is a new tensor
    (nothing is modified in place) whose gradient with respect to ``feats`` is the incoming gradient times the same
    mask, so background features receive exactly zero gradient. Upstream also registers a backward hook that
    multiplies by the mask once more; with a {0, 1} mask that changes no value (mask x mask = mask), and a hook breaks
    the compiled graph on torch < 2.6, so there is none here (docs/fidelity.md).
    """
    grid = to_grid(masks, tuple(feats.shape[-2:])).to(feats.dtype)
    return feats * grid


def grid_statistics(masks: torch.Tensor, size: tuple[int, int], to_grid: MaskGrid = NEAREST) -> dict[str, float]:
    """How binary masks ``B,H,W`` (1 = bird) meet a ``size`` feature grid whose cells tile the image: sums over the
    batch, to be added across batches (:func:`grid_fractions` turns them into fractions).

    ``bird_tokens``: cells holding any bird pixel; ``boundary_tokens``: of those, the cells that also hold background
    (a feature whose receptive square mixes bird and background); ``kept_tokens``: cells late masking keeps with
    ``to_grid``; ``kept_area`` / ``kept_background_area``: the pixels of the kept cells, and how many of them are
    background; ``bird_area`` / ``bird_area_dropped``: bird pixels, and how many lie in cells late masking zeroes.
    """
    binary = (masks[:, None] if masks.ndim == 3 else masks).gt(0).float()
    height, width = binary.shape[-2:]
    if height % size[0] or width % size[1]:
        raise ValueError(f"a {height}x{width} mask does not tile into a {size[0]}x{size[1]} grid")
    cell = (height // size[0]) * (width // size[1])
    share = F.avg_pool2d(binary, (height // size[0], width // size[1]))  # bird share of each cell
    kept = to_grid(binary, size).bool()
    bird, boundary = share > 0, (share > 0) & (share < 1)
    return {"images": float(binary.shape[0]), "tokens": float(share.numel()), "bird_tokens": float(bird.sum()),
            "boundary_tokens": float(boundary.sum()), "kept_tokens": float(kept.sum()),
            "kept_area": float(kept.sum()) * cell, "kept_background_area": float(((1 - share) * kept).sum()) * cell,
            "bird_area": float(binary.sum()), "bird_area_dropped": float((share * ~kept).sum()) * cell}


def grid_fractions(stats: dict[str, float]) -> dict[str, float]:
    """Fractions from summed :func:`grid_statistics`: ``boundary`` (boundary tokens / bird tokens), ``kept_background``
    (background share of the kept cells' area), ``bird_dropped`` (share of the bird in zeroed cells), ``bird_tokens``
    (bird tokens per image)."""
    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {"boundary": ratio(stats["boundary_tokens"], stats["bird_tokens"]),
            "kept_background": ratio(stats["kept_background_area"], stats["kept_area"]),
            "bird_dropped": ratio(stats["bird_area_dropped"], stats["bird_area"]),
            "bird_tokens": ratio(stats["bird_tokens"], stats["images"])}
