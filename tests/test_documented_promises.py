"""What the README and docs promise about runs, each held by a run: official DINOv2 weight files, deterministic
evaluation with drop-path, --eval_mode val, --eval_every > 1, the same training on 2 processes as on 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from bgmask.models import ModelSpec, create_classifier

from .test_classifier import early_main, train_argv
from .test_masks_reach_the_model import eval_logits, outputs  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
VIT = "vit_small_patch14_dinov2"


def test_an_official_dinov2_weight_file_loads_through_pretrained_path(tmp_path):
    """The file the DINOv2 repository publishes (``dinov2_vits14_pretrain.pth``): a flat state dict at 518 px (a
    37 x 37 position grid plus CLS), with the ``mask_token`` of its iBOT loss and LayerScale ``ls1.gamma`` keys."""
    torch.manual_seed(0)
    reference = timm.create_model(VIT, num_classes=0, img_size=518)
    official = {k: v.clone() for k, v in reference.state_dict().items()}
    official["mask_token"] = torch.zeros(1, reference.embed_dim)
    assert official["pos_embed"].shape == (1, 1 + 37 * 37, 384) and "blocks.0.ls1.gamma" in official
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official, path)

    clf = create_classifier(ModelSpec(arch=VIT, num_classes=3, image_size=56, pretrained_path=str(path)))
    loaded = clf.backbone.state_dict()
    for name in ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight", "blocks.11.ls2.gamma",
                 "norm.weight"):
        assert torch.equal(loaded[name], official[name]), name
    assert loaded["pos_embed"].shape == (1, 1 + 4 * 4, 384)  # resampled to the 4 x 4 grid of 56 px
    torch.testing.assert_close(loaded["pos_embed"][:, 0], official["pos_embed"][:, 0])  # CLS position kept
    assert "37" in clf.backbone.weights_source["resampled"] or "518" in clf.backbone.weights_source["resampled"]


def test_evaluation_is_deterministic_with_drop_path(tiny_cub_root, tmp_path, outputs):  # noqa: F811
    run = tmp_path / "r"
    assert early_main(train_argv(tiny_cub_root, run, "--epochs", "1", "--drop_path", "0.5",
                                 "--diagnostics", "none")) == 0
    trained_eval = eval_logits(outputs)
    outputs.clear()
    assert early_main(train_argv(tiny_cub_root, run, "--epochs", "1", "--drop_path", "0.5", "--diagnostics", "none",
                                 "--eval_only")) == 0
    assert torch.equal(eval_logits(outputs), trained_eval)
    training = torch.cat([out for was_training, out in outputs if was_training] or [torch.zeros(0)])
    assert training.numel() == 0  # --eval_only trains nothing


def test_eval_mode_val_selects_on_the_held_out_part(tiny_cub_root, tmp_path):
    run = tmp_path / "r"
    assert early_main(train_argv(tiny_cub_root, run, "--train_split", "0.75", "--eval_mode", "val",
                                 "--diagnostics", "none")) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["best"]["selected_on"] == "val"
    # 3 train images per class: 2 train, 1 validation
    assert results["val"]["num_images"] == 4 and results["cub_test"]["num_images"] == 12
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all("val" in r for r in log)
    best = max(log, key=lambda r: (r["val"]["top1"], -r["epoch"]))
    assert results["best"]["epoch"] == best["epoch"]


def test_eval_every_scores_the_selection_set_every_n_epochs_and_everything_at_the_end(tiny_cub_root, tmp_path):
    run = tmp_path / "r"
    assert early_main(train_argv(tiny_cub_root, run, "--epochs", "3", "--eval_every", "2",
                                 "--diagnostics", "none")) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [("cub_test" in r, "waterbirds" in r) for r in log] == [(False, False), (True, False), (True, True)]


@pytest.mark.distributed
def test_two_processes_train_the_one_process_weights(tiny_cub_root, tmp_path):
    """Same global batch (4 = 2 x 2), no mixup, no drop-path: a 2-process gloo run steps through the same images
    with the same augmentation draws and averages the same gradients."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert early_main(train_argv(tiny_cub_root, single, "--diagnostics", "none")) == 0
    argv = train_argv(tiny_cub_root, multi, "--diagnostics", "none", "--device", "cpu")
    argv[argv.index("--batch_size") + 1] = "2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "early_masking_and_baseline/train.py"), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "results.json").read_text())
    b = json.loads((multi / "results.json").read_text())
    assert b["world_size"] == 2
    a_log = [json.loads(line) for line in (single / "log.jsonl").read_text().splitlines()]
    b_log = [json.loads(line) for line in (multi / "log.jsonl").read_text().splitlines()]
    # the log reports the run's images and loss, not rank 0's share
    assert [r["train_images"] for r in a_log] == [r["train_images"] for r in b_log] == [12, 12]
    assert [r["train_loss"] for r in b_log] == pytest.approx([r["train_loss"] for r in a_log], rel=1e-4)
    wa = torch.load(single / "last.pt", weights_only=False)["model"]
    wb = torch.load(multi / "last.pt", weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=2e-5, rtol=1e-4, msg=k)
    for key in ("cub_test", "waterbirds"):
        assert a[key]["num_images"] == b[key]["num_images"] == 12
        assert abs(a[key]["correct"] - b[key]["correct"]) <= 1, key  # equal weights up to float summation order
