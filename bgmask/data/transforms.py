"""Image transforms shared by every strategy, with an optional mask that replays the image's geometric draws.

One transform object serves baseline, early and late masking. Called on an image alone it *is* the library
pipeline (``timm.data.create_transform`` for ``timm``, upstream's torchvision recipe for ``cub_original``, and
upstream's ``Resize(S)`` + ``CenterCrop(S)`` for evaluation). Called on ``(image, mask)`` it walks the same ops in
the same order, draws the same random numbers, and applies every geometric op to the mask too (nearest
interpolation), while photometric ops, normalisation and random erasing touch the image only. So late masking sees
exactly the baseline's image tensor for the same seed, and its mask stays on the bird.

Why a replay instead of a library transform: timm's RandAugment and torchvision's v1 transforms take one image,
and torchvision's v2 transforms (which do carry masks) have neither timm's RandAugment policy strings (``mstd``,
``inc1``) nor its PIL bicubic kernels, so the two strategies would see different images (measured before this
module: 25 points of CUB top-1 between baseline and late masking with masks that cover the whole image).

Pixels that an augmentation brings in from outside the frame (rotation, shear, translation and affine fill) are
marked foreground in the mask: the mask marks the *original background* to remove, and that fill is not background
(early masking, which masks before augmenting, keeps the same fill visible).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as timm_aa
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation, str_to_interp_mode
from torchvision import transforms as T
from torchvision.transforms import functional as F

from bgmask.data.fast_augment import AFFINE_OPS, TensorResizedCrop, fast_ops

AUGMENTATIONS = ("timm", "cub_original")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random")
# timm RandAugment / AutoAugment ops that move pixels; every other op of theirs is photometric.
GEOMETRIC_AUGMENT_OPS = AFFINE_OPS
PHOTOMETRIC_AUGMENT_OPS = frozenset(timm_aa.NAME_TO_OP) - GEOMETRIC_AUGMENT_OPS
MASK_FILL = 1  # out-of-frame pixels are not original background (see the module docstring)
_IMAGE_ONLY = (T.ColorJitter, T.Normalize, T.ToTensor, MaybeToTensor, RandomErasing, T.RandomGrayscale,
               T.GaussianBlur)


class PairedTransform:
    """A torchvision ``Compose`` that also takes an optional mask: ``t(image)`` or ``t(image, mask)``.

    Args:
        compose: the image pipeline (PIL image in, normalised tensor out). It is used unchanged for images alone.
        device_tail: stop at the last PIL op and hand over a :class:`RawImage` (uint8 pixels and this image's
            random-erasing boxes); ``self.device_tail`` (a :class:`DeviceTail`) then converts, normalises and
            erases whole batches on the device, as timm's GPU loader does.

    With a mask (a PIL ``L`` image of {0, 1} values, the image's size), returns ``(image tensor 3,H,W, uint8 mask
    H,W)``; the image tensor equals ``compose(image)`` under the same random state.
    """

    def __init__(self, compose: T.Compose, device_tail: bool = False):
        self.compose = compose
        self.device_tail = None
        ops = list(compose.transforms)
        if device_tail:
            start = next((k for k, op in enumerate(ops) if isinstance(op, (T.ToTensor, MaybeToTensor))), None)
            if start is None:
                raise ValueError("the device tail needs a pipeline that ends in ToTensor, Normalize, RandomErasing")
            self.device_tail = DeviceTail.from_ops(ops[start + 1:])
            ops = ops[:start]
        self._head = T.Compose(ops)
        self._carrier = _MaskCarrier()
        self._ops = [_paired_op(op, self._carrier) for op in ops]

    def __call__(self, image, mask=None):
        if mask is None:
            return self.compose(image) if self.device_tail is None else self._raw(self._head(image))
        for op in self._ops:
            image, mask = op(image, mask)
        if self.device_tail is not None:
            image = self._raw(image)
        return image, torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy())

    def _raw(self, image: Image.Image) -> RawImage:
        pixels = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB"))).permute(2, 0, 1)
        return RawImage(pixels, self.device_tail.draw_erasing(*pixels.shape))

    def __repr__(self) -> str:
        return f"PairedTransform({self.compose})"


class RawImage(NamedTuple):
    """A training image as a loader worker hands it over with the device tail (batched by the default collate).

    Attributes:
        pixels: uint8 ``3,H,W`` (``B,3,H,W`` batched): a quarter of the float bytes to pin and copy.
        erasing: int64 ``max_count,5`` (``B,max_count,5``): the random-erasing boxes drawn for this image, rows of
            ``(top, left, height, width, noise seed)``, ``-1`` rows unused.
    """

    pixels: torch.Tensor
    erasing: torch.Tensor


class _BoxRecorder:
    """Stands in for the image in timm's ``RandomErasing._erase``: records the boxes it would fill."""

    def __init__(self):
        self.boxes = []

    def __setitem__(self, key, value):
        _, rows, cols = key
        self.boxes.append((rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start))


class DeviceTail:
    """The end of the training pipeline on the device, for whole batches: uint8 to float, normalisation and random
    erasing (timm's ``PrefetchLoader`` convention), with the erasing boxes drawn in the loader worker.

    timm's batch erasing on the device draws from the device's random stream in batch order, so an image's boxes
    would depend on the batch it lands in, the number of processes and where a run resumed. Here timm's own
    ``RandomErasing`` draws each image's boxes in the worker, under that image's seed (the same draws, in the same
    place in the image's random stream, as on the CPU path), and a noise seed per box; the device fills each box from
    a generator seeded with it. Boxes match the CPU path exactly; the noise values differ from it (another stream).
    """

    def __init__(self, mean, std, erasing: RandomErasing | None = None):
        self.mean, self.std, self.erasing = tuple(mean), tuple(std), erasing
        self.max_boxes = erasing.max_count if erasing is not None else 0
        self._constants: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per device: built once (no copy per step)

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as ``3,1,1`` tensors on ``device``, made once per device as timm's ``PrefetchLoader`` does:
        a ``torch.tensor(..., device=cuda)`` per batch is a pageable copy and a host synchronisation."""
        key = str(device)
        if key not in self._constants:
            self._constants[key] = (torch.tensor(self.mean, device=device).view(-1, 1, 1),
                                    torch.tensor(self.std, device=device).view(-1, 1, 1))
        return self._constants[key]

    def __getstate__(self):  # loader workers never need the device constants
        return {**self.__dict__, "_constants": {}}

    @classmethod
    def from_ops(cls, ops: list) -> DeviceTail:
        normalize = [op for op in ops if isinstance(op, T.Normalize)]
        erasing = [op for op in ops if isinstance(op, RandomErasing)]
        unknown = [op for op in ops if not isinstance(op, (T.Normalize, RandomErasing))]
        if len(normalize) != 1 or len(erasing) > 1 or unknown:
            raise ValueError(f"the device tail takes Normalize and an optional RandomErasing after ToTensor, got {ops}")
        return cls(normalize[0].mean, normalize[0].std, erasing[0] if erasing else None)

    def draw_erasing(self, channels: int, height: int, width: int) -> torch.Tensor:
        """This image's boxes, drawn by timm's ``RandomErasing`` (in a worker, under the image's seed)."""
        rows = torch.full((self.max_boxes, 5), -1, dtype=torch.int64)
        if self.erasing is None or self.erasing.probability <= 0:
            return rows
        recorder, erasing = _BoxRecorder(), self.erasing
        saved = erasing.per_pixel, erasing.rand_color, erasing.device
        # Boxes only: the fill becomes a 3x1x1 zero on the CPU (no noise drawn here; the boxes come from python's
        # random, the noise from torch's, so skipping it moves no box).
        erasing.per_pixel, erasing.rand_color, erasing.device = False, False, "cpu"
        try:
            erasing._erase(recorder, channels, height, width, torch.float32)
        finally:
            erasing.per_pixel, erasing.rand_color, erasing.device = saved
        for k, box in enumerate(recorder.boxes):
            rows[k] = torch.tensor([*box, int(torch.randint(0, 2 ** 62, ()))])
        return rows

    def __call__(self, raw: RawImage, device: torch.device) -> torch.Tensor:
        """Normalised, erased float ``B,3,H,W`` images on ``device`` from a batched :class:`RawImage`."""
        images = raw.pixels.to(device, non_blocking=True).float().div_(255)
        mean, std = self.constants(device)
        images = images.sub_(mean).div_(std)
        boxes = raw.erasing.tolist() if self.max_boxes else []  # a few ints per image
        for i, rows in enumerate(boxes):
            for top, left, h, w, seed in rows:
                if h < 0:
                    continue
                generator = torch.Generator(device=device).manual_seed(seed)
                shape = (images.shape[1], h, w) if self.erasing.per_pixel else \
                    (images.shape[1], 1, 1) if self.erasing.rand_color else None
                fill = torch.empty(shape, device=device).normal_(generator=generator) if shape else 0.0
                images[i, :, top:top + h, left:left + w] = fill
        return images


class _MaskCarrier:
    """Holds the mask while a timm auto-augment op (which takes one image) runs, so its geometric ops can move it."""

    mask = None


def _paired_op(op, carrier: _MaskCarrier) -> Callable:
    """``(image, mask) -> (image, mask)`` for one op, consuming the random numbers exactly as ``op(image)`` does."""
    if isinstance(op, TensorResizedCrop):
        def fast_rrc(image, mask):
            params = op.params(image)
            return op.apply(image, params), op.apply_to_mask(mask, params)
        return fast_rrc
    if isinstance(op, RandomResizedCropAndInterpolation):
        def rrc(image, mask):  # as RandomResizedCropAndInterpolation.__call__, with the mask cropped alike
            i, j, h, w = op.get_params(image, op.scale, op.ratio)
            interp = random.choice(op.interpolation) if isinstance(op.interpolation, (tuple, list)) else \
                op.interpolation
            return (F.resized_crop(image, i, j, h, w, op.size, interp),
                    F.resized_crop(mask, i, j, h, w, op.size, T.InterpolationMode.NEAREST))
        return rrc
    if isinstance(op, (T.RandomHorizontalFlip, T.RandomVerticalFlip)):
        flip = F.hflip if isinstance(op, T.RandomHorizontalFlip) else F.vflip

        def random_flip(image, mask):
            return (flip(image), flip(mask)) if torch.rand(1) < op.p else (image, mask)
        return random_flip
    if isinstance(op, T.RandomAffine):
        def affine(image, mask):
            params = op.get_params(op.degrees, op.translate, op.scale, op.shear, list(F.get_image_size(image)))
            return (F.affine(image, *params, interpolation=op.interpolation, fill=op.fill, center=op.center),
                    F.affine(mask, *params, interpolation=T.InterpolationMode.NEAREST, fill=MASK_FILL,
                             center=op.center))
        return affine
    if isinstance(op, T.RandomCrop) and not op.padding and not op.pad_if_needed:
        def crop(image, mask):
            i, j, h, w = op.get_params(image, op.size)
            return F.crop(image, i, j, h, w), F.crop(mask, i, j, h, w)
        return crop
    if isinstance(op, T.Resize):
        return lambda image, mask: (op(image), F.resize(mask, op.size, T.InterpolationMode.NEAREST,
                                                        max_size=op.max_size))
    if isinstance(op, T.CenterCrop):
        return lambda image, mask: (op(image), op(mask))
    if isinstance(op, (timm_aa.RandAugment, timm_aa.AutoAugment)):
        return _paired_auto_augment(op, carrier)
    if isinstance(op, _IMAGE_ONLY):
        return lambda image, mask: (op(image), mask)
    raise ValueError(f"{type(op).__name__} has no rule for moving a mask with the image; masks support "
                     f"{AUGMENTATIONS} augmentation with RandAugment/AutoAugment policies (not AugMix).")


def _paired_auto_augment(op, carrier: _MaskCarrier) -> Callable:
    """Run timm's own RandAugment/AutoAugment on the image; its geometric ops also move ``carrier.mask``.

    A copy of ``op`` whose geometric ops' functions are wrapped: timm draws every random number itself (op choice,
    probability, magnitude noise, sign, interpolation), and the wrapper re-applies the drawn op to the mask with
    nearest interpolation.
    """
    paired = copy.deepcopy(op)
    policies = paired.policy if isinstance(paired, timm_aa.AutoAugment) else [paired.ops]
    for aug_op in (o for policy in policies for o in policy):
        if aug_op.name in GEOMETRIC_AUGMENT_OPS:
            aug_op.aug_fn = _moving_mask_too(aug_op.aug_fn, carrier)
        elif aug_op.name not in PHOTOMETRIC_AUGMENT_OPS:
            raise ValueError(f"auto-augment op {aug_op.name!r} is neither known geometric nor photometric; masks "
                             f"cannot follow it.")

    def apply(image, mask):
        carrier.mask = mask
        try:
            image = paired(image)
            return image, carrier.mask
        finally:
            carrier.mask = None
    return apply


def _moving_mask_too(aug_fn: Callable, carrier: _MaskCarrier) -> Callable:
    def apply(image, *level_args, **kwargs):
        out = aug_fn(image, *level_args, **kwargs)  # draws the random interpolation, if any, as timm does
        carrier.mask = aug_fn(carrier.mask, *level_args, fillcolor=MASK_FILL, resample=Image.Resampling.NEAREST)
        return out
    return apply


def build_train_transform(image_size: int, augmentations: str = "timm", aa: str | None = "rand-m9-mstd0.5-inc1",
                          color_jitter: float = 0.4, reprob: float = 0.25, remode: str = "pixel", recount: int = 1,
                          interpolation: str = "bicubic", mean=IMAGENET_DEFAULT_MEAN,
                          std=IMAGENET_DEFAULT_STD, device_tail: bool = False, fast: bool = False) -> PairedTransform:
    """Training transform (PIL image, optional mask → normalised tensor, optional mask; with ``device_tail`` a
    :class:`RawImage` for the transform's :class:`DeviceTail` to finish on the device).

    Args:
        augmentations: ``timm``: exactly ``timm.data.create_transform(is_training=True, ...)``
            (RandomResizedCropAndInterpolation, flip, RandAugment ``aa``, colour jitter when ``aa`` is empty, random
            erasing ``reprob``/``remode``/``recount``). ``cub_original``: upstream's recipe, ``Resize(S)`` (bilinear),
            flip, ``ColorJitter(0.1)``, ``RandomAffine(degrees=90, translate=(0.2, 0.2), scale=(0.8, 1.2))``,
            ``RandomCrop(S)``; the timm flags do not apply to it.
        fast: ``timm`` only: the same draws with the random-resized crop's resize and RandAugment's geometric ops
            on faster kernels (:mod:`bgmask.data.fast_augment`, ``--fast_augment``).
    """
    _check_interpolation(interpolation, "--train_interpolation")
    if augmentations == "timm":
        compose = create_transform(image_size, is_training=True, auto_augment=aa or None, color_jitter=color_jitter,
                                   re_prob=reprob, re_mode=remode, re_count=recount, interpolation=interpolation,
                                   mean=mean, std=std)
    elif augmentations == "cub_original":
        compose = T.Compose([T.Resize(image_size), T.RandomHorizontalFlip(), T.ColorJitter(0.1),
                             T.RandomAffine(degrees=90, translate=(0.2, 0.2), scale=(0.8, 1.2)),
                             T.RandomCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])
    else:
        raise ValueError(f"--augmentations_to_use must be one of {AUGMENTATIONS}, got {augmentations!r}")
    if fast:
        if augmentations != "timm":
            raise ValueError("--fast_augment speeds up timm's augmentation (--augmentations_to_use timm); "
                             f"{augmentations!r} has no fast path")
        compose = T.Compose(fast_ops(compose.transforms))
    return PairedTransform(compose, device_tail=device_tail)


def build_eval_transform(image_size: int, crop_pct: float = 1.0, interpolation: str = "bilinear",
                         mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> PairedTransform:
    """Evaluation: resize the short side to ``floor(image_size / crop_pct)``, center-crop ``image_size``, normalise.

    The defaults are upstream's test transform, ``Resize(S)`` + ``CenterCrop(S)`` with torchvision's bilinear;
    ``crop_pct=0.875, interpolation='bicubic'`` is timm's ImageNet evaluation.
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"--crop_pct must be in (0, 1], got {crop_pct}")
    _check_interpolation(interpolation, "--eval_interpolation", allow_random=False)
    return PairedTransform(T.Compose([T.Resize(math.floor(image_size / crop_pct),
                                               interpolation=str_to_interp_mode(interpolation)),
                                      T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)]))


def _check_interpolation(name: str, flag: str, allow_random: bool = True) -> None:
    allowed = INTERPOLATIONS if allow_random else tuple(i for i in INTERPOLATIONS if i != "random")
    if name not in allowed:
        raise ValueError(f"{flag} must be one of {allowed}, got {name!r}")
