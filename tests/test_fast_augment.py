"""``--fast_augment``: timm's training augmentation with the same random draws on faster kernels, pixels close to
PIL's, the mask still following the image."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from timm.data import auto_augment as timm_aa
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from bgmask.data import fast_augment
from bgmask.data.fast_augment import TensorResizedCrop, opencv_sharpness
from bgmask.data.transforms import PairedTransform, build_train_transform
from early_masking_and_baseline.train import main as early_main

from .test_classifier import train_argv

NEAREST, BILINEAR, BICUBIC = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
FILL = (124, 116, 104)  # timm's img_mean fill


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def textured(size=(120, 96), seed=0) -> Image.Image:
    """Smooth texture with hard-edged shapes: interpolation differences show at both."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 15, 70, 60), fill=(240, 30, 30))
    draw.ellipse((60, 40, 110, 90), fill=(20, 20, 200))
    return image


def as_int(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


@pytest.mark.parametrize("name,level", [("ShearX", 0.27), ("ShearY", -0.3), ("TranslateXRel", 0.37),
                                        ("TranslateYRel", -0.45), ("TranslateX", 300.0), ("TranslateY", 13.6),
                                        ("Rotate", 23.7), ("Rotate", -17.0), ("Rotate", 0.0)])
@pytest.mark.parametrize("resample", [NEAREST, BILINEAR, BICUBIC])
def test_geometric_ops_match_pils_transform(name, level, resample):
    """Each of RandAugment's geometric ops against timm's own (PIL): the same fill region, nearest equal, bilinear and
    bicubic within interpolation rounding (OpenCV's 1/32 px coordinates, its cubic coefficient)."""
    image = textured()
    theirs = as_int(timm_aa.NAME_TO_OP[name](image, level, fillcolor=FILL, resample=resample))
    ours = as_int(fast_augment._OpenCVGeometric(name)(image, level, fillcolor=FILL, resample=resample))
    assert ours.shape == theirs.shape
    filled_theirs, filled_ours = (theirs == FILL).all(-1), (ours == FILL).all(-1)
    assert (filled_theirs != filled_ours).mean() <= 0.003
    diff = np.abs(ours - theirs)
    if resample == NEAREST:
        assert (diff.max(-1) > 0).mean() <= 0.003
    else:
        assert diff.mean() <= (0.6 if resample == BILINEAR else 1.2), diff.mean()
        assert np.percentile(diff, 99.5) <= (4 if resample == BILINEAR else 12)


def test_a_translations_fill_is_the_same_for_the_image_and_its_mask():
    """The columns a translation fills are found exactly, so the image (bicubic) and its mask (nearest) agree with
    each other and with PIL's mask at every offset, including those that land a pixel centre on the edge."""
    width = 97
    image, mask = textured((width, 40)), Image.fromarray(np.zeros((40, width), np.uint8))
    op = fast_augment._OpenCVGeometric("TranslateXRel")
    # Offsets that put a pixel centre a hair inside an edge: OpenCV's fixed-point coordinates round them outside.
    near_edges = [sign * (k + 0.5 + eps) / width for k in range(0, 60, 3) for sign in (-1, 1) for eps in (-1e-4, 1e-4)]
    for level in [*np.linspace(-0.6, 0.6, 121), *near_edges]:
        filled_image = (as_int(op(image, level, fillcolor=(1, 2, 3), resample=BICUBIC)) == (1, 2, 3)).all(-1)
        filled_mask = as_int(op(mask, level, fillcolor=1, resample=NEAREST)) == 1
        theirs = as_int(timm_aa.translate_x_rel(mask, level, fillcolor=1, resample=NEAREST)) == 1
        assert np.array_equal(filled_image.all(0), filled_mask.all(0)) and np.array_equal(filled_mask, theirs), level


def test_unusual_modes_and_fills_are_pils():
    """What the fast kernels do not cover (an int fill on RGB, RGBA, a tuple fill on L) is PIL's own behaviour."""
    image = textured()
    for img, fill in ((image, 7), (image.convert("RGBA"), (1, 2, 3, 4))):
        ours = fast_augment.warp_like_pil(img, (1, 0.2, 3, 0, 1, 0), BICUBIC, fill)
        assert np.array_equal(as_int(ours), as_int(img.transform(img.size, Image.Transform.AFFINE,
                                                                 (1, 0.2, 3, 0, 1, 0), BICUBIC, fillcolor=fill)))
    with pytest.raises((TypeError, ValueError)):
        fast_augment.warp_like_pil(image.convert("L"), (1, 0.2, 3, 0, 1, 0), NEAREST, (1, 2, 3))


def test_geometric_ops_keep_timms_interpolation_draw():
    """A random bilinear/bicubic choice is drawn by timm's helper, in timm's place in the stream."""
    image = textured()
    for seed in range(6):
        random.seed(seed)
        timm_aa.shear_x(image, 0.2, fillcolor=FILL, resample=(BILINEAR, BICUBIC))
        after_theirs = random.random()
        random.seed(seed)
        fast_augment._OpenCVGeometric("ShearX")(image, 0.2, fillcolor=FILL, resample=(BILINEAR, BICUBIC))
        assert random.random() == after_theirs


@pytest.mark.parametrize("factor", [0.1, 1.0, 1.9])
def test_sharpness_is_pils(factor):
    image = textured()
    assert np.array_equal(as_int(opencv_sharpness(image, factor)), as_int(timm_aa.sharpness(image, factor)))


@pytest.mark.parametrize("box,size", [((5, 10, 40, 50), 96), ((0, 0, 96, 120), 40), ((30, 7, 61, 33), 57)])
@pytest.mark.parametrize("interpolation", [InterpolationMode.BICUBIC, InterpolationMode.BILINEAR])
def test_the_crops_resize_is_pils(box, size, interpolation):
    """torchvision's antialiased uint8 resize against PIL's, up and down: rounding apart, the same pixels."""
    image = textured()
    i, j, h, w = box
    crop = TensorResizedCrop.of(build_train_transform(size).compose.transforms[0], None)
    ours = as_int(crop.apply(image, (i, j, h, w, interpolation, False)))
    theirs = as_int(F.resized_crop(image, i, j, h, w, [size, size], interpolation))
    assert np.abs(ours - theirs).max() <= 2 and np.abs(ours - theirs).mean() <= 0.05
    flipped = as_int(crop.apply(image, (i, j, h, w, interpolation, True)))
    assert np.array_equal(flipped, ours[:, ::-1])


@pytest.mark.parametrize("kw", [{}, {"interpolation": "random", "aa": "rand-m9-n3-mstd1", "reprob": 1.0,
                                     "recount": 2}, {"aa": "v0-mstd0.5"}, {"aa": ""}])
def test_fast_pipeline_draws_what_timms_draws(kw):
    """Same seed, same augmentation: the same erasing boxes and random state afterwards, pixels within
    interpolation rounding of the PIL pipeline's, and the images with a mask equal to the images alone."""
    image, mask = textured(), Image.fromarray(np.ones((96, 120), np.uint8))
    pil = build_train_transform(64, device_tail=True, **kw)
    fast = build_train_transform(64, device_tail=True, fast=True, **kw)
    assert any(isinstance(op, TensorResizedCrop) for op in fast.compose.transforms)
    diffs = []
    for seed in range(30):
        seed_all(seed)
        theirs = pil(image)
        after_theirs = (random.random(), float(torch.rand(1)))
        seed_all(seed)
        ours = fast(image)
        assert (random.random(), float(torch.rand(1))) == after_theirs, seed
        assert torch.equal(ours.erasing, theirs.erasing), seed
        diffs.append((ours.pixels.int() - theirs.pixels.int()).abs().float().mean().item())
        seed_all(seed)
        paired, mask_t = fast(image, mask)
        assert torch.equal(paired.pixels, ours.pixels) and bool(mask_t.all()), seed
    assert max(diffs) <= 1.5, diffs
    assert sorted(diffs)[len(diffs) // 2] <= 0.25, diffs  # most images draw no geometric op: rounding only


@pytest.mark.parametrize("interpolation", ["nearest", "bicubic"])
def test_the_mask_follows_the_fast_geometry(interpolation):
    """An image that is its mask (red = bird) stays on its mask through the fast crop, flip and every geometric op:
    exactly with nearest interpolation, up to the bird's outline with bicubic."""
    h, w = 80, 96
    mask = np.zeros((h, w), np.uint8)
    mask[10:50, 20:75] = 1
    mask[50:70, 5:20] = 1
    image = Image.fromarray(np.stack([mask * 255, np.zeros_like(mask), np.zeros_like(mask)], -1))
    compose = build_train_transform(48, aa="rand-m9-n4-mstd0.5", reprob=0.0, interpolation=interpolation,
                                    fast=True).compose
    ra = compose.transforms[1]
    ra.ops = [op for op in ra.ops if op.name in fast_augment.AFFINE_OPS]  # geometric ops only
    for op in ra.ops:  # and the image's fill is "bird", the mask's fill
        op.kwargs["fillcolor"] = (255, 0, 0)
    tf = PairedTransform(compose)
    moved = 0
    for seed in range(30):
        seed_all(seed)
        image_t, mask_t = tf(image, Image.fromarray(mask))
        red = image_t[0] > 0  # normalised: red 255 is well above 0, red 0 well below
        agree = (red == mask_t.bool()).float().mean().item()
        assert agree == 1.0 if interpolation == "nearest" else agree >= 0.97, (seed, agree)
        moved += int(not torch.equal(mask_t, tf(image, Image.fromarray(mask))[1]))
    assert moved > 0


def test_fast_augment_is_recorded_and_refused_where_it_has_no_path(tiny_cub_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert early_main(train_argv(tiny_cub_root, run, "--augmentations_to_use", "cub_original",
                                 "--fast_augment")) == 2
    assert "--fast_augment" in capsys.readouterr().err and not run.exists()
