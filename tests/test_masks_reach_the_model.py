"""The masks reach the model, through the trainer: all-background masks leave nothing but the head's constant
output, and real masks change the logits against the baseline's on the same weights and images.

The fairness test (all-foreground masks give the baseline's run exactly) would pass if masks were dropped on the
way; these tests would not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bgmask.data.cub import WATERBIRDS_SUB_PATH, CUBIndex, mask_path_for
from bgmask.data.masks import MASK_FOLDERS, copy_metadata, write_gt_masked_folders, write_mask_and_masked_image
from bgmask.strategies.base import Strategy
from bgmask.strategies.late import LateMasking

VIT = "vit_small_patch14_dinov2"


def write_background_masks(cub_root) -> None:
    """Masks with no bird anywhere (and the early-masked images they make: all black), in the default folders."""
    index = CUBIndex.load(cub_root)
    for image_dir, (mask_dir, masked_dir) in MASK_FOLDERS.items():
        for rel in index.paths:
            with Image.open(cub_root / image_dir / rel) as img:
                image = img.convert("RGB")
            write_mask_and_masked_image(image, np.zeros(image.size[::-1], np.uint8),
                                        cub_root / mask_dir / mask_path_for(rel), cub_root / masked_dir / rel)
        copy_metadata(cub_root / image_dir, cub_root / masked_dir)


@pytest.fixture
def outputs(monkeypatch):
    """Every output of the strategy's model in the run, with the mode it was computed in."""
    records = []

    def recording(cls):
        original = cls.wrap_model

        def wrap_model(self, cfg, classifier):
            model = original(self, cfg, classifier)
            model.register_forward_hook(lambda m, args, out: records.append((m.training, out.detach().clone())))
            return model
        monkeypatch.setattr(cls, "wrap_model", wrap_model)

    recording(Strategy)  # the baseline and early masking
    recording(LateMasking)
    return records


def run(masking, root, run_dir, arch="convnext_atto", *extra):
    from bgmask import cli

    size = "28" if arch == VIT else "64"
    argv = ["--data_path", str(root), "--snapshot_dir", str(run_dir), "--model_arch", arch, "--image_size", size,
            "--batch_size", "4", "--num_workers", "0", "--epochs", "1", "--seed", "0", "--lr", "1e-3", "--aa", "",
            "--reprob", "0", "--diagnostics", "none", *extra]
    assert cli.main([masking], argv) == 0
    return json.loads((run_dir / "results.json").read_text())


def eval_logits(records) -> torch.Tensor:
    return torch.cat([out for training, out in records if not training])


def first_training_logits(records) -> torch.Tensor:
    return next(out for training, out in records if training)


@pytest.mark.parametrize("masking,arch,extra", [
    ("late", "convnext_atto", ()),
    ("late", VIT, ("--patch_tokens_only",)),
    ("early", "convnext_atto", ()),
])
def test_all_background_masks_leave_only_a_constant_output(tiny_cub_copy, tmp_path, outputs, masking, arch, extra):
    write_background_masks(tiny_cub_copy)
    results = run(masking, tiny_cub_copy, tmp_path / "run", arch, *extra)
    logits = eval_logits(outputs)
    index = CUBIndex.load(tiny_cub_copy)
    test_labels = index.labels[~index.is_train]
    assert len(logits) == len(test_labels) + results["waterbirds"]["num_images"]
    torch.testing.assert_close(logits, logits[:1].expand_as(logits), atol=1e-5, rtol=0)  # no image reaches it
    predicted = int(logits[0].argmax())
    assert results["cub_test"]["top1"] == pytest.approx(100 * np.mean(test_labels == predicted))  # chance level
    if arch == VIT:  # the GAP of all-zero tokens is zero: the head gives its bias alone
        state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
        torch.testing.assert_close(logits[0], state["classifier.head.bias"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("masking", ["late", "early"])
def test_real_masks_change_the_logits_of_the_same_weights_and_images(tiny_cub_copy, tmp_path, outputs, masking):
    write_gt_masked_folders(tiny_cub_copy, progress=False)
    run("none", tiny_cub_copy, tmp_path / "baseline")
    baseline = first_training_logits(outputs)
    outputs.clear()
    run(masking, tiny_cub_copy, tmp_path / masking)
    masked = first_training_logits(outputs)
    assert masked.shape == baseline.shape
    # the first step sees the same weights (same seed, same initialisation) and the same augmented images
    assert (masked - baseline).abs().amax() > 1e-3
    assert (tiny_cub_copy / MASK_FOLDERS[WATERBIRDS_SUB_PATH][0]).is_dir()
