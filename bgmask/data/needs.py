"""What a strategy asks of the data, in words a benchmark resolves to its own files."""

from __future__ import annotations

from dataclasses import dataclass

IMAGES = ("original", "masked")
MASKS = (None, "predicted", "ground_truth")


@dataclass(frozen=True)
class DataNeeds:
    """What a strategy asks of the data; the benchmark resolves it to its folders.

    Attributes:
        images: ``original``, or ``masked`` (the background removed before the network sees the image).
        masks: None (images only), ``predicted`` (a segmenter's masks, precomputed) or ``ground_truth``. With
            masks the items are ``(image, mask, label)``, transformed jointly, and the model is called as
            ``model(image, mask)``.
    """

    images: str = "original"
    masks: str | None = None

    def __post_init__(self):
        if self.images not in IMAGES or self.masks not in MASKS:
            raise ValueError(f"DataNeeds(images in {IMAGES}, masks in {MASKS}), got ({self.images!r}, "
                             f"{self.masks!r})")
