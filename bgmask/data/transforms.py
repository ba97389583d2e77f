"""Image transforms: timm training augmentation, the original CUB recipe, and the resize + center-crop eval."""

from __future__ import annotations

import math

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as T
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

AUGMENTATIONS = ("timm", "cub_original")


def build_train_transform(image_size: int, augmentations: str = "timm", aa: str | None = "rand-m9-mstd0.5-inc1",
                          color_jitter: float = 0.4, reprob: float = 0.25, remode: str = "pixel", recount: int = 1,
                          interpolation: str = "bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
    """Training transform for PIL images → normalised tensors.

    Args:
        augmentations: ``timm`` (RandomResizedCrop, flip, RandAugment ``aa``, colour jitter, random erasing) or
            ``cub_original`` (resize to size/0.875, random crop, flip).
    """
    if augmentations == "timm":
        return create_transform(image_size, is_training=True, auto_augment=aa or None, color_jitter=color_jitter,
                                re_prob=reprob, re_mode=remode, re_count=recount, interpolation=interpolation,
                                mean=mean, std=std)
    if augmentations == "cub_original":
        return T.Compose([T.Resize(math.floor(image_size / 0.875), interpolation=_interp(interpolation)),
                          T.RandomCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    raise ValueError(f"--augmentations_to_use must be one of {AUGMENTATIONS}, got {augmentations!r}")


def build_eval_transform(image_size: int, crop_pct: float = 0.875, interpolation: str = "bicubic",
                         mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
    """Resize the short side to ``image_size / crop_pct``, center-crop ``image_size``, normalise."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"--crop_pct must be in (0, 1], got {crop_pct}")
    return T.Compose([T.Resize(math.floor(image_size / crop_pct), interpolation=_interp(interpolation)),
                      T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])


def _interp(name: str) -> T.InterpolationMode:
    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
             "nearest": T.InterpolationMode.NEAREST, "random": T.InterpolationMode.BICUBIC}
    if name not in modes:
        raise ValueError(f"--train_interpolation must be one of {sorted(modes)}, got {name!r}")
    return modes[name]


# ------------------------------------------------------------------------------------- joint image + mask
class JointTransform:
    """Apply a torchvision.transforms.v2 pipeline to ``(PIL image, PIL mask)`` and return ``(tensor, mask)``.

    The mask is wrapped as ``tv_tensors.Mask``, so every geometric op (crops, flips, rotations, RandAugment's
    shear/translate/rotate) moves it with the image, with nearest interpolation, while photometric ops, normalisation
    and random erasing touch the image only. Returns a float image ``3,H,W`` and a uint8 mask ``H,W`` in {0, 1}.
    """

    def __init__(self, pipeline, image_only=None):
        self.pipeline = pipeline
        self.image_only = image_only  # applied to the image after the joint pipeline (e.g. random erasing)

    def __call__(self, image, mask):
        img = F.pil_to_tensor(image)
        m = tv_tensors.Mask(torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()))
        img, m = self.pipeline(tv_tensors.Image(img), m)
        if self.image_only is not None:
            img = self.image_only(img)
        return img.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor)


def _joint_rand_augment(aa: str | None, interpolation):
    """timm-style 'rand-m9-n2-...' policy string → :class:`JointRandAugment` (magnitude m, n ops)."""
    if not aa:
        return None
    if not aa.startswith("rand"):
        raise ValueError(f"joint image+mask transforms support RandAugment policies ('rand-m9-mstd0.5-inc1') only, "
                         f"got --aa {aa!r}")
    magnitude, num_ops = 9, 2
    for part in aa.split("-")[1:]:
        if part.startswith("m") and part[1:].isdigit():
            magnitude = int(part[1:])
        elif part.startswith("n") and part[1:].isdigit():
            num_ops = int(part[1:])
    # torchvision's tensor affine kernels support nearest/bilinear only; timm would use bicubic on PIL images.
    bilinear = T.InterpolationMode.BILINEAR if interpolation != T.InterpolationMode.NEAREST else interpolation
    return JointRandAugment(num_ops=num_ops, magnitude=magnitude, interpolation=bilinear)


class JointRandAugment(v2.RandAugment):
    """torchvision's RandAugment on ``(image, mask)``: the geometric ops (shear, translate, rotate) move the mask
    too, with the same parameters and nearest interpolation; photometric ops touch the image only. (torchvision's
    own RandAugment refuses masks.)"""

    GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})

    def forward(self, image, mask):
        height, width = F.get_size(image)
        for _ in range(self.num_ops):
            op, (magnitudes_fn, signed) = self._get_random_item(self._AUGMENTATION_SPACE)
            magnitudes = magnitudes_fn(self.num_magnitude_bins, height, width)
            magnitude = 0.0
            if magnitudes is not None:
                magnitude = float(magnitudes[self.magnitude])
                if signed and torch.rand(()) <= 0.5:
                    magnitude *= -1
            image = self._apply_image_or_video_transform(image, op, magnitude, interpolation=self.interpolation,
                                                         fill=self._fill)
            if op in self.GEOMETRIC:
                mask = self._apply_image_or_video_transform(mask, op, magnitude,
                                                            interpolation=T.InterpolationMode.NEAREST, fill=self._fill)
        return image, mask


def build_joint_train_transform(image_size: int, augmentations: str = "timm", aa: str | None = "rand-m9-mstd0.5-inc1",
                                color_jitter: float = 0.4, reprob: float = 0.25, interpolation: str = "bicubic",
                                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> JointTransform:
    """The training augmentation of :func:`build_train_transform`, rebuilt on transforms.v2 for image + mask.

    Differences from timm's pipeline: torchvision's RandAugment op set and magnitudes (no magnitude noise ``mstd``,
    no ``inc1`` increasing-severity variants, bilinear instead of bicubic for its affine ops) instead of timm's, and
    random erasing with value 0 instead of per-pixel noise. Crops, flips and RandAugment's shear/translate/rotate
    move the mask; colour ops and erasing do not (an erased bird is still where the mask says).
    """
    interp = _interp(interpolation)
    if augmentations == "timm":
        ops = [v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=interp, antialias=True),
               v2.RandomHorizontalFlip()]
        randaug = _joint_rand_augment(aa, interp)
        if randaug is not None:
            ops.append(randaug)
        if color_jitter and randaug is None:  # timm also skips colour jitter when an auto-augment policy is set
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        erase = v2.RandomErasing(p=reprob, value=0) if reprob else None
        return JointTransform(v2.Compose(ops), image_only=erase)
    elif augmentations == "cub_original":
        ops = [v2.Resize(math.floor(image_size / 0.875), interpolation=interp, antialias=True),
               v2.RandomCrop(image_size), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
               v2.Normalize(mean, std)]
    else:
        raise ValueError(f"--augmentations_to_use must be one of {AUGMENTATIONS}, got {augmentations!r}")
    return JointTransform(v2.Compose(ops))


def build_joint_eval_transform(image_size: int, crop_pct: float = 0.875, interpolation: str = "bicubic",
                               mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> JointTransform:
    """:func:`build_eval_transform` for image + mask (the mask is resized with nearest interpolation)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"--crop_pct must be in (0, 1], got {crop_pct}")
    return JointTransform(v2.Compose([
        v2.Resize(math.floor(image_size / crop_pct), interpolation=_interp(interpolation), antialias=True),
        v2.CenterCrop(image_size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]))
