"""What a strategy asks of the data, in words a benchmark resolves to its own files, and how its model takes a test
image (the diagnostics build their views from it)."""

from __future__ import annotations

import enum
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


class ModelInput(enum.Enum):
    """How a strategy's model takes an image it is tested on (the diagnostics build their views from it)."""

    IMAGE = "image"  # the image as it is
    MASKED_IMAGE = "masked_image"  # the image with its background removed (as early masking's folders hold it)
    IMAGE_AND_MASK = "image_and_mask"  # the image and its bird mask: model(image, mask)
