"""The Backgrounds-Challenge views of a test set (docs/diagnostics.md): each image and its bird mask made into
only_fg, only_bg_b, only_bg_t, mixed_same and mixed_rand."""


from __future__ import annotations

import math

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from bgmask.data.cub import load_mask, load_rgb
from bgmask.data.needs import ModelInput

VIEWS = ("only_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand")
BIRD_VIEWS = ("only_fg", "mixed_same", "mixed_rand")  # views that still show the bird



def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` (end-exclusive) of the pixels where ``mask > 0``, or None for an empty mask."""
    ys, xs = np.nonzero(mask > 0)
    if len(ys) == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def only_fg(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Background black (as early masking)."""
    return image * (mask > 0)[..., None].astype(image.dtype)


def only_bg_b(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The bird's bounding box black."""
    out = image.copy()
    box = bounding_box(mask)
    if box is not None:
        y0, y1, x0, x1 = box
        out[y0:y1, x0:x1] = 0
    return out


def only_bg_t(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The bird's bounding box filled by tiling the largest background strip beside it (above, below, left or
    right of the box, full width or height). A box that covers the whole image is left black."""
    out = only_bg_b(image, mask)
    box = bounding_box(mask)
    if box is None:
        return out
    y0, y1, x0, x1 = box
    h, w = mask.shape
    strips = [image[:y0], image[y1:], image[:, :x0], image[:, x1:]]
    source = max(strips, key=lambda s: s.shape[0] * s.shape[1])
    if source.size == 0:
        return out
    bh, bw = y1 - y0, x1 - x0
    reps = (math.ceil(bh / source.shape[0]), math.ceil(bw / source.shape[1]), 1)
    out[y0:y1, x0:x1] = np.tile(source, reps)[:bh, :bw]
    return out


def composite(image: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The bird of ``image`` (soft ``alpha`` in [0, 1]) over ``background`` resized to the image's size."""
    h, w = alpha.shape
    if background.shape[:2] != (h, w):
        background = np.asarray(Image.fromarray(background).resize((w, h), Image.Resampling.BILINEAR))
    a = alpha[..., None].astype(np.float32)
    return np.clip(image * a + background * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def pair_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For every test image, another image of the same class and one of another class, fixed by ``seed`` (the same
    on every process). A class with a single test image pairs it with itself."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    same, rand = np.empty_like(idx), np.empty_like(idx)
    for i, y in enumerate(labels):
        same_pool = idx[(labels == y) & (idx != i)]
        same[i] = rng.choice(same_pool) if len(same_pool) else i
        other_pool = idx[labels != y]
        rand[i] = rng.choice(other_pool) if len(other_pool) else i
    return same, rand


class DiagnosticViews(Dataset):
    """One view of the test images, as the strategy's model takes it.

    Args:
        base: the original test images with their bird masks (a benchmark's ``diagnostics_images``: ``labels``,
            ``paths``, ``image_path(i)`` and ``mask_path(i)``; soft masks, bird = > 0, or binary ones).
        view: one of :data:`VIEWS`, or ``original`` (the image itself; for attribution).
        model_input: how the model takes an image (:class:`~bgmask.strategies.ModelInput`): the view as it is,
            the view masked by its bird mask (as early masking feeds it), or the view and its bird mask. The bird
            mask of a view without the bird is empty.
        transform: the run's evaluation transform (a :class:`~bgmask.data.transforms.PairedTransform`).
        with_mask: also return the transformed bird mask (for attribution), whatever the model takes.
    """

    def __init__(self, base, view: str, model_input: ModelInput, transform, seed: int = 0, with_mask: bool = False):
        if view not in (*VIEWS, "original"):
            raise ValueError(f"unknown view {view!r}; one of {VIEWS}")
        self.base = base
        self.view, self.model_input, self.transform, self.with_mask = view, model_input, transform, with_mask
        self.labels = self.base.labels
        self.same, self.rand = pair_indices(self.labels, seed)

    def __len__(self) -> int:
        return len(self.base)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = load_rgb(self.base.image_path(i))
        soft = np.asarray(load_mask(self.base.mask_path(i), image.size, threshold=None), dtype=np.float32) / 255.0
        return np.asarray(image), soft

    def build(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The view of test image ``i`` (``H,W,3`` uint8) and its bird mask (``H,W`` uint8 {0, 1})."""
        image, soft = self._load(i)
        bird = (soft > 0).astype(np.uint8)
        if self.view == "original":
            return image, bird
        if self.view == "only_fg":
            return only_fg(image, bird), bird
        if self.view in ("only_bg_b", "only_bg_t"):
            fn = only_bg_b if self.view == "only_bg_b" else only_bg_t
            return fn(image, bird), np.zeros_like(bird)
        other_image, other_soft = self._load(int((self.same if self.view == "mixed_same" else self.rand)[i]))
        return composite(image, soft, only_bg_t(other_image, (other_soft > 0).astype(np.uint8))), bird

    def __getitem__(self, i: int):
        view, bird = self.build(i)
        if self.model_input is ModelInput.MASKED_IMAGE:
            view = only_fg(view, bird)
        image, mask = self.transform(Image.fromarray(view), Image.fromarray(bird))
        label = int(self.labels[i])
        if self.with_mask or self.model_input is ModelInput.IMAGE_AND_MASK:
            return image, mask, label
        return image, label
