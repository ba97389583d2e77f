"""Background-reliance diagnostics: view construction, pairings, attribution share, results.json."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from bgmask.data.cub import CUBDataset
from bgmask.diagnostics.attribution import attribution_maps, fg_share
from bgmask.diagnostics.views import (
    DiagnosticViews,
    bounding_box,
    composite,
    only_bg_b,
    only_bg_t,
    only_fg,
    pair_indices,
)
from bgmask.models.backbones import TokenAdapter
from bgmask.strategies import ModelInput

from .test_classifier import early_main, train_argv


def scene(h=40, w=50):
    """Background: left strip red, the rest green; bird: a blue box at rows 10-29, cols 20-34."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :10] = (255, 0, 0)
    image[:, 10:] = (0, 255, 0)
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 20:35] = 1
    image[mask == 1] = (0, 0, 255)
    return image, mask


def test_views_take_their_pixels_from_where_they_should():
    image, mask = scene()
    assert bounding_box(mask) == (10, 30, 20, 35) and bounding_box(np.zeros_like(mask)) is None
    fg = only_fg(image, mask)
    assert np.array_equal(fg[mask == 1], image[mask == 1]) and not fg[mask == 0].any()
    bb = only_bg_b(image, mask)
    assert not bb[10:30, 20:35].any()
    outside = np.ones_like(mask, bool)
    outside[10:30, 20:35] = False
    assert np.array_equal(bb[outside], image[outside])
    bt = only_bg_t(image, mask)
    assert np.array_equal(bt[outside], image[outside])
    box = bt[10:30, 20:35].reshape(-1, 3)
    background_colours = {tuple(c) for c in image[outside].reshape(-1, 3)}
    assert {tuple(c) for c in box} <= background_colours and not (box == (0, 0, 255)).all(1).any()
    other = np.full((20, 25, 3), 77, np.uint8)  # another image's background, of another size
    mixed = composite(image, mask.astype(np.float32), other)
    assert np.array_equal(mixed[mask == 1], image[mask == 1]) and (mixed[mask == 0] == 77).all()
    soft = mask.astype(np.float32) * 0.5
    assert (composite(image, soft, other)[15, 25] == np.floor(0.5 * np.array([0, 0, 255]) + 0.5 * 77 + 0.5)).all()


def test_pairings_are_deterministic_and_respect_classes():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    same, rand = pair_indices(labels, seed=3)
    again_same, again_rand = pair_indices(labels, seed=3)
    assert np.array_equal(same, again_same) and np.array_equal(rand, again_rand)
    assert all(labels[j] == labels[i] and j != i for i, j in enumerate(same))
    assert all(labels[j] != labels[i] for i, j in enumerate(rand))
    assert not np.array_equal(pair_indices(labels, seed=4)[1], rand) or not np.array_equal(
        pair_indices(labels, seed=5)[1], rand)


def test_dataset_views_follow_the_strategy(tiny_cub_root):
    from bgmask.data.transforms import build_eval_transform

    tf = build_eval_transform(32)
    images = CUBDataset(tiny_cub_root, "test", "images", "segmentations", transform=None, mask_threshold=None)
    base = DiagnosticViews(images, "only_bg_b", ModelInput.IMAGE, tf)
    late = DiagnosticViews(images, "only_bg_b", ModelInput.IMAGE_AND_MASK, tf)
    early = DiagnosticViews(images, "only_bg_t", ModelInput.MASKED_IMAGE, tf)
    assert len(base[0]) == 2 and len(late[0]) == 3
    assert not late[0][1].any()  # no bird in a background view: late masking gets an empty mask
    black = tf(__import__("PIL").Image.new("RGB", (64, 64)))
    assert torch.allclose(early[0][0], black)  # early masking of a view without the bird is all black


class LeftHalfBackbone(nn.Module):
    """A CNN whose features (and so its output) depend only on the left half of the image."""

    num_features = 3

    def forward_features(self, x):
        keep = torch.zeros_like(x)
        keep[..., : x.shape[-1] // 2] = 1
        return (x * keep).abs() + 0.0

    def forward_head(self, feats, pre_logits=False):
        return feats.mean(dim=(2, 3))


def test_attribution_share_is_right_on_a_model_that_looks_at_a_known_region():
    from bgmask.models import Classifier

    model = Classifier(LeftHalfBackbone(), num_classes=2).eval()
    nn.init.constant_(model.head.weight, 1.0)
    images, labels = torch.rand(2, 3, 16, 16) + 0.1, torch.tensor([0, 1])
    left, right = torch.zeros(2, 16, 16), torch.zeros(2, 16, 16)
    left[..., :8], right[..., 8:] = 1, 1
    cam = attribution_maps(model, images, left, labels, ModelInput.IMAGE)
    share, valid = fg_share(cam, left)
    assert valid.all() and torch.allclose(share, torch.ones(2), atol=0.05)  # bilinear upsampling blurs one column
    assert torch.allclose(fg_share(cam, right)[0], torch.zeros(2), atol=0.05)

    class LeftPixels(nn.Module):  # a 'ViT' stand-in for gradient x input
        adapter = TokenAdapter  # its attribution: |gradient x input|

        def forward(self, x):
            return torch.stack([x[..., :8].sum((1, 2, 3)), -x[..., :8].sum((1, 2, 3))], 1)

    maps = attribution_maps(LeftPixels(), images, left, labels, ModelInput.IMAGE)
    assert torch.allclose(fg_share(maps, left)[0], torch.ones(2)) and (maps[..., 8:] == 0).all()


def test_results_json_has_the_diagnostics_and_none_turns_them_off(tiny_cub_copy, tmp_path):
    run = tmp_path / "r"
    assert early_main(train_argv(tiny_cub_copy, run, "--epochs", "1")) == 0
    diag = json.loads((run / "results.json").read_text())["diagnostics"]
    for view in ("only_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand"):
        assert diag[view]["num_images"] == 12
        assert diag[view]["top1"] == pytest.approx(100 * diag[view]["correct"] / 12, abs=1e-12)
    assert diag["bg_gap"] == pytest.approx(diag["mixed_same"]["top1"] - diag["mixed_rand"]["top1"])
    assert 0 <= diag["fg_attribution"] <= 1 and (run / "attribution_gallery.pt").is_file()
    gallery = torch.load(run / "attribution_gallery.pt", weights_only=False)
    assert gallery["maps"].shape == (6, 32, 32) and len(gallery["paths"]) == 6
    classes = {int(line.split()[1]) - 1 for line in (tiny_cub_copy / "image_class_labels.txt").read_text().split("\n")
               if line.strip()}
    assert len(gallery["labels"]) == len(gallery["predictions"]) == 6  # each map's true and predicted class
    assert set(gallery["labels"]) | set(gallery["predictions"]) <= classes and "heads" not in gallery
    assert early_main(train_argv(tiny_cub_copy, tmp_path / "n", "--epochs", "1", "--diagnostics", "none")) == 0
    assert json.loads((tmp_path / "n" / "results.json").read_text())["diagnostics"] == {"skipped": "--diagnostics none"}
    shutil.rmtree(tiny_cub_copy / "segmentations")
    with pytest.warns(UserWarning, match="segmentations.tgz"):
        assert early_main(train_argv(tiny_cub_copy, tmp_path / "m", "--epochs", "1")) == 0
    assert "no masks" in json.loads((tmp_path / "m" / "results.json").read_text())["diagnostics"]["skipped"]
