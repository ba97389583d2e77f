"""timm's training augmentation with its costliest pixel operations on faster kernels (``--fast_augment``).

At the paper's 518 px a loader worker spends most of its time in a few PIL operations that timm's pipeline calls:
the random-resized crop's resize (PIL's ``resize``), RandAugment's geometric ops (``Image.transform``/``rotate``,
whose bilinear and bicubic paths are PIL's generic per-pixel filter) and its sharpness op (PIL's 3x3 filter). This
module swaps only those, keeping every random draw timm's:

* :class:`TensorResizedCrop` resizes the uint8 crop with torchvision's antialiased bilinear/bicubic kernels, which
  are PIL's (the same support and cubic coefficient): outputs agree with PIL's to rounding (at most 2 grey levels).
  The horizontal flip that follows the crop in timm's pipeline rides on the copy back to PIL;
* RandAugment/AutoAugment's Rotate, ShearX/Y and TranslateX/Y(Rel) compute PIL's affine matrix for the drawn level
  and warp with OpenCV's ``warpAffine`` (:func:`warp_like_pil`): nearest is PIL's sampling, bilinear agrees to a
  few grey levels (OpenCV quantises source coordinates to 1/32 px), bicubic uses OpenCV's cubic (coefficient
  -0.75 against -1 in PIL's ``transform``, whose cubic is not its ``resize``'s -0.5): under half a grey level on
  average on natural images, up to ~20 at single pixels of high-contrast texture. The pixels PIL fills (source
  point outside the image) are the ones filled here;
* Sharpness blends with PIL's SMOOTH filter computed by OpenCV's ``filter2D``: equal to PIL's output.

Photometric ops, random erasing and normalisation are timm's unchanged; masks follow the image as in
:mod:`bgmask.data.transforms` (nearest, the same matrices). Measured speed and agreement: ``scripts/bench/loader.py``
and docs/scale.md ("The input pipeline"); the difference from timm's pixels is in docs/fidelity.md.

Why these kernels and not a library pipeline: torchvision's v2 RandAugment lacks timm's policies (``mstd``,
``inc1``, the op set) and draws differently; Pillow-SIMD does not accelerate ``Image.transform``.
"""

from __future__ import annotations

import copy
import functools
import math
import random

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as F
from torchvision.transforms import transforms as T

_TENSOR_RESIZE = (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
# The image kernel itself where torchvision names it (>= 0.17), skipping the dispatcher's ~0.1 ms per call.
_resize_image = getattr(v2.functional, "resize_image", v2.functional.resize)


@functools.cache
def require_opencv():
    """OpenCV's ``cv2``, or a clear error. It is set to one thread for the whole process (loader workers are the
    parallelism; the library uses OpenCV for nothing else)."""
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - OpenCV ships with the segmentation extra
        raise ImportError("--fast_augment needs OpenCV: pip install opencv-python") from err
    cv2.setNumThreads(1)
    return cv2


class TensorResizedCrop(RandomResizedCropAndInterpolation):
    """timm's random-resized crop, and the horizontal flip that follows it, in one op with the same draws; the
    bilinear/bicubic resize runs on uint8 pixels in torchvision and the flip rides on the copy back to PIL.

    The crop box and interpolation come from python's ``random`` and the flip from torch's generator, as in timm's
    two ops; the streams are separate, so drawing both up front changes neither.
    """

    @classmethod
    def of(cls, op: RandomResizedCropAndInterpolation, flip: T.RandomHorizontalFlip | None) -> TensorResizedCrop:
        fast = cls.__new__(cls)
        fast.__dict__.update(op.__dict__)
        fast.flip_p = None if flip is None else flip.p
        return fast

    def params(self, img: Image.Image) -> tuple:
        """``(i, j, h, w, interpolation, flip)`` drawn as timm's crop and flip draw them."""
        i, j, h, w = self.get_params(img, self.scale, self.ratio)
        interpolation = random.choice(self.interpolation) if isinstance(self.interpolation, (tuple, list)) else \
            self.interpolation
        flip = self.flip_p is not None and bool(torch.rand(1) < self.flip_p)
        return i, j, h, w, interpolation, flip

    def apply(self, img: Image.Image, params: tuple) -> Image.Image:
        i, j, h, w, interpolation, flip = params
        if interpolation not in _TENSOR_RESIZE or img.mode != "RGB":
            out = F.resized_crop(img, i, j, h, w, self.size, interpolation)
            return F.hflip(out) if flip else out
        pixels = torch.from_numpy(np.array(img.crop((j, i, j + w, i + h)))).permute(2, 0, 1)
        out = _resize_image(pixels, list(self.size), interpolation=interpolation, antialias=True)
        out = out.permute(1, 2, 0)
        return Image.fromarray((out.flip(1) if flip else out).contiguous().numpy())

    def apply_to_mask(self, mask: Image.Image, params: tuple) -> Image.Image:
        i, j, h, w, _, flip = params
        out = F.resized_crop(mask, i, j, h, w, self.size, InterpolationMode.NEAREST)
        return F.hflip(out) if flip else out

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.apply(img, self.params(img))

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, hflip={self.flip_p})"


def _rotation(degrees: float, width: int, height: int) -> tuple | None:
    """PIL ``Image.rotate``'s affine matrix (about the centre, no expansion), or None where PIL copies."""
    angle = degrees % 360.0
    if angle == 0:
        return None
    angle = -math.radians(angle)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2.0, height / 2.0
    return a, b, -a * cx - b * cy + cx, d, e, -d * cx - e * cy + cy


# Each geometric op's matrix (output point -> input point, PIL's AFFINE data) from its level argument, as timm's
# auto_augment functions build it.
_MATRICES = {
    "ShearX": lambda v, w, h: (1, v, 0, 0, 1, 0),
    "ShearY": lambda v, w, h: (1, 0, 0, v, 1, 0),
    "TranslateX": lambda v, w, h: (1, 0, v, 0, 1, 0),
    "TranslateY": lambda v, w, h: (1, 0, 0, 0, 1, v),
    "TranslateXRel": lambda v, w, h: (1, 0, v * w, 0, 1, 0),
    "TranslateYRel": lambda v, w, h: (1, 0, 0, 0, 1, v * h),
    "Rotate": lambda v, w, h: _rotation(v, w, h),
}
AFFINE_OPS = frozenset(_MATRICES)  # the auto-augment ops that move pixels


def warp_like_pil(img: Image.Image, matrix: tuple, resample, fill) -> Image.Image:
    """``img.transform(img.size, Image.AFFINE, matrix, resample, fillcolor=fill)`` with OpenCV's ``warpAffine``.

    PIL maps the centre of output pixel (x, y), the point (x + 1/2, y + 1/2), through ``matrix`` to a source point
    (u, v), fills the pixel when that point is outside the image, and otherwise interpolates at pixel index
    (u - 1/2, v - 1/2) with edge pixels repeated; OpenCV's inverse map works in pixel indices, hence the shifted
    offsets, the replicated border and the separate outside test. For a translation the outside is whole rows and
    columns, found exactly (the same for an image and its mask, whatever their interpolation). Modes other than RGB
    and L, and a fill that does not match the mode, go to PIL itself.
    """
    rgb_fill = isinstance(fill, (tuple, list)) and len(fill) == 3
    if resample not in _OPENCV_INTERPOLATION or (img.mode, rgb_fill) not in (("RGB", True), ("L", False)) or \
            (img.mode == "L" and not isinstance(fill, int)):
        return img.transform(img.size, Image.Transform.AFFINE, matrix, resample, fillcolor=fill)
    cv2 = require_opencv()
    fill = tuple(fill) if rgb_fill else fill
    a, b, c, d, e, f = matrix
    inverse = np.array([[a, b, c + (a + b - 1) / 2], [d, e, f + (d + e - 1) / 2]], dtype=np.float64)
    src, (width, height) = np.asarray(img), img.size
    flags = getattr(cv2, _OPENCV_INTERPOLATION[resample]) | cv2.WARP_INVERSE_MAP
    if (a, b, d, e) == (1, 0, 0, 1):  # a translation: warp only the rows and columns whose source is inside
        (x0, x1), (y0, y1) = _inside(c, width), _inside(f, height)
        out = _fill_image(src.shape, fill).copy()
        if x1 > x0 and y1 > y0:
            inverse[:, 2] += (x0, y0)
            out[y0:y1, x0:x1] = cv2.warpAffine(src, inverse, (x1 - x0, y1 - y0), flags=flags,
                                               borderMode=cv2.BORDER_REPLICATE)
        return Image.fromarray(out)
    if resample == Image.Resampling.NEAREST:
        return Image.fromarray(cv2.warpAffine(src, inverse, (width, height), flags=flags,
                                              borderMode=cv2.BORDER_CONSTANT, borderValue=fill))
    out = cv2.warpAffine(src, inverse, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    outside = cv2.warpAffine(np.zeros((height, width), np.uint8), inverse, (width, height),
                             flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=1)
    cv2.copyTo(_fill_image(out.shape, fill), outside, out)  # in place; numpy's masked write is 100x slower
    return Image.fromarray(out)


_OPENCV_INTERPOLATION = {Image.Resampling.NEAREST: "INTER_NEAREST", Image.Resampling.BILINEAR: "INTER_LINEAR",
                         Image.Resampling.BICUBIC: "INTER_CUBIC"}


def _inside(shift: float, n: int) -> tuple[int, int]:
    """The output pixels ``[start, stop)`` along one axis whose centre, moved by ``shift``, lands in ``[0, n)``."""
    inside = np.flatnonzero((np.arange(n) + 0.5 + shift >= 0) & (np.arange(n) + 0.5 + shift < n))
    return (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)


@functools.lru_cache(maxsize=8)
def _fill_image(shape: tuple, fill) -> np.ndarray:
    image = np.empty(shape, np.uint8)
    image[...] = fill
    image.flags.writeable = False
    return image


class _OpenCVGeometric:
    """A timm geometric op (``aug_fn(img, level, fillcolor=..., resample=...)``) warped by :func:`warp_like_pil`."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, img: Image.Image, level: float, **kwargs) -> Image.Image:
        kwargs = dict(kwargs)
        resample = timm_aa._interpolation(kwargs)  # timm's draw of bilinear/bicubic, in timm's place
        matrix = _MATRICES[self.name](level, *img.size)
        if matrix is None:
            return img.copy()
        return warp_like_pil(img, matrix, resample, kwargs.get("fillcolor"))

    def __repr__(self) -> str:
        return f"opencv_{self.name}"


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13  # PIL's ImageFilter.SMOOTH


def opencv_sharpness(img: Image.Image, factor: float, **__) -> Image.Image:
    """timm's ``sharpness`` (``ImageEnhance.Sharpness``): a blend with PIL's SMOOTH filter, which leaves the
    outermost rows and columns as they are; the filter runs in OpenCV (equal to PIL's output)."""
    if img.mode != "RGB":
        return timm_aa.sharpness(img, factor)
    src = np.asarray(img)
    smooth = require_opencv().filter2D(src, -1, _SMOOTH)
    smooth[[0, -1]], smooth[:, [0, -1]] = src[[0, -1]], src[:, [0, -1]]
    return Image.blend(Image.fromarray(smooth), img, factor)


def with_opencv_kernels(op):
    """A copy of a timm RandAugment/AutoAugment whose geometric ops warp with :func:`warp_like_pil` and whose
    sharpness filters with :func:`opencv_sharpness`; every other op, and every draw, is timm's."""
    fast = copy.deepcopy(op)
    policies = fast.policy if isinstance(fast, timm_aa.AutoAugment) else [fast.ops]
    for aug_op in (o for policy in policies for o in policy):
        if aug_op.name in _MATRICES:
            aug_op.aug_fn = _OpenCVGeometric(aug_op.name)
        elif aug_op.aug_fn is timm_aa.sharpness:
            aug_op.aug_fn = opencv_sharpness
    return fast


def fast_ops(ops: list) -> list:
    """timm's training ops with the random-resized crop (and its flip), the auto-augment geometry and sharpness on
    the faster kernels."""
    require_opencv()
    out, ops = [], list(ops)
    while ops:
        op = ops.pop(0)
        if isinstance(op, RandomResizedCropAndInterpolation) and not isinstance(op, TensorResizedCrop):
            flip = ops.pop(0) if ops and type(ops[0]) is T.RandomHorizontalFlip else None
            op = TensorResizedCrop.of(op, flip)
        elif isinstance(op, (timm_aa.RandAugment, timm_aa.AutoAugment)):
            op = with_opencv_kernels(op)
        out.append(op)
    return out
