"""Images listed in a table — paths, labels, optional masks — as a map-style dataset (the CSV and Waterbirds
benchmarks). Items are ``(image, label)``, or ``(image, mask, label)`` with masks; ``masked_images`` applies each
image's mask to it before the transform (early masking without pre-written folders)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from bgmask.data.cub import load_mask, load_rgb
from bgmask.data.masks import apply_mask
from bgmask.errors import DatasetError
from bgmask.io import listing


class TableDataset(Dataset):
    """Args:
        image_paths: one file per item.
        labels: class index per item.
        mask_paths: one mask file per item (``> mask_threshold`` is foreground), or None.
        transform: applied to the image, or jointly to ``(image, mask)`` when masks are returned.
        return_masks: return the masks with the images (late masking); otherwise masks only serve ``masked_images``.
        masked_images: set the background (mask 0) of every image to black before the transform.
        names: how items are named in messages and galleries (default: the paths).
        mask_threshold: binarise masks at ``> threshold``; None keeps them soft (0..255).
    """

    def __init__(self, image_paths: Sequence[str | os.PathLike], labels: Sequence[int],
                 mask_paths: Sequence[str | os.PathLike] | None = None, transform: Callable | None = None,
                 return_masks: bool | None = None, masked_images: bool = False, names: Sequence[str] | None = None,
                 mask_threshold: int | None = 0):
        self.image_paths = [Path(p) for p in image_paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mask_paths = [Path(p) for p in mask_paths] if mask_paths is not None else None
        self.paths = list(names) if names is not None else [str(p) for p in self.image_paths]
        self.transform = transform
        self.return_masks = self.mask_paths is not None if return_masks is None else return_masks
        self.masked_images = masked_images
        self.mask_threshold = mask_threshold
        if (self.return_masks or masked_images) and self.mask_paths is None:
            raise ValueError("masks are needed (return_masks / masked_images) but no mask paths were given")

    def __len__(self) -> int:
        return len(self.image_paths)

    def image_path(self, i: int) -> Path:
        return self.image_paths[i]

    def mask_path(self, i: int) -> Path:
        if self.mask_paths is None:
            raise ValueError("this dataset has no masks")
        return self.mask_paths[i]

    def __getitem__(self, i: int):
        image = load_rgb(self.image_paths[i])
        label = int(self.labels[i])
        mask = load_mask(self.mask_paths[i], image.size, self.mask_threshold) if self.mask_paths is not None \
            else None
        if self.masked_images:
            image = Image.fromarray(apply_mask(np.asarray(image), np.asarray(mask) > 0))
        if not self.return_masks:
            return (self.transform(image) if self.transform else image), label
        if self.transform:
            image, mask = self.transform(image, mask)
        return image, mask, label


def check_files(paths: Sequence[Path], what: str, source: str) -> None:
    """Every listed file exists, or one error naming how many are missing and the first few."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(paths)} {what} files listed in {source} are missing: "
                           f"{listing(missing)}.")


def check_mask_sizes(images: Sequence[Path], masks: Sequence[Path], source: str) -> None:
    """Every mask has its image's size (read from the file headers, nothing decoded)."""
    wrong = []
    for image, mask in zip(images, masks):
        with Image.open(image) as a, Image.open(mask) as b:
            if a.size != b.size:
                wrong.append(f"{mask} ({b.size[0]}x{b.size[1]}, image {a.size[0]}x{a.size[1]})")
    if wrong:
        raise DatasetError(f"{len(wrong)} masks listed in {source} do not have their image's size: {listing(wrong)}. "
                           f"Masks must be at the image's resolution.")
