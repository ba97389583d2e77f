"""Export a run, load it with timm or ``bgmask.load_classifier``, classify a folder of one's own images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

import bgmask
from bgmask.data.cub import GT_MASK_SUB_PATH, CUBDataset
from bgmask.data.groups import wilson_interval
from bgmask.data.masks import write_gt_masked_folders
from bgmask.data.transforms import build_eval_transform
from bgmask.errors import ExportError
from bgmask.export import export_run, read_export, run_config, run_model
from bgmask.infra.checkpoint import load_checkpoint
from bgmask.predict import main as predict_main
from early_masking_and_baseline.train import main as early_main
from late_masking.train import main as late_main

REPO = Path(__file__).resolve().parents[1]


def argv(root, run_dir, *extra, arch="convnext_atto", size=32):
    return ["--data_path", str(root), "--snapshot_dir", str(run_dir), "--model_arch", arch, "--image_size", str(size),
            "--batch_size", "4", "--num_workers", "0", "--epochs", "1", "--seed", "0", "--aa", "", "--reprob", "0",
            "--diagnostics", "none", "--lr", "1e-3", *extra]


@pytest.fixture(scope="module")
def runs(tiny_cub_root, tmp_path_factory):
    """A baseline ConvNeXt, an early-masking ViT with the mean head, a frozen late-masking ConvNeXt."""
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    import shutil

    shutil.copytree(tiny_cub_root, root)
    write_gt_masked_folders(root, progress=False)
    base = tmp_path_factory.mktemp("runs")
    assert early_main(argv(root, base / "baseline")) == 0
    assert early_main(argv(root, base / "early", "--masking", "early", "--patch_tokens_only",
                           arch="vit_small_patch14_dinov2", size=28)) == 0
    assert late_main(argv(root, base / "late", "--mask_source", "gt", "--freeze_backbone")) == 0
    return root, base


def run_logits(run_dir: Path, images, masks=None):
    cfg, strategy = run_config(run_dir)
    path = run_dir / "best.pt"
    model = run_model(cfg, strategy, load_checkpoint(path), path, None)
    with torch.no_grad():
        return model(images, masks) if masks is not None else model(images)


def eval_batch(root, sub_path, size, masks=False):
    ds = CUBDataset(root, "test", sub_path, GT_MASK_SUB_PATH if masks else None,
                    transform=build_eval_transform(size))
    return next(iter(DataLoader(ds, batch_size=len(ds))))


def test_a_baseline_export_loads_with_plain_timm_and_scores_what_the_run_scored(runs, tmp_path):
    root, base = runs
    out = tmp_path / "export"
    export_run(base / "baseline", out)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    images, labels = eval_batch(root, "images", 32)
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(logits, run_logits(base / "baseline", images), rtol=0, atol=1e-5)
    results = json.loads((base / "baseline/results.json").read_text())
    assert int((logits.argmax(1) == labels).sum()) == results["cub_test"]["correct"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "convnext_atto" and config["num_classes"] == 4
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_pct"] == 1.0
    assert config["label_names"][0].startswith("001.") and config["bgmask"]["layout"] == "timm"


def test_an_early_masking_vit_export_loads_with_plain_timm(runs, tmp_path):
    root, base = runs
    out = tmp_path / "export"
    export_run(base / "early", out)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    images, _ = eval_batch(root, "images_masked", 28)  # early masking is evaluated on the masked folder
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(logits, run_logits(base / "early", images), rtol=0, atol=1e-5)
    assert read_export(out).needs == "masked images"


def test_a_late_masking_export_loads_with_load_classifier_and_scores_what_the_run_scored(runs, tmp_path):
    root, base = runs
    out = tmp_path / "export"
    export_run(base / "late", out)  # a frozen backbone: the checkpoint holds the head, the export everything
    model = bgmask.load_classifier(out)
    images, masks, labels = eval_batch(root, "images", 32, masks=True)
    with torch.no_grad():
        logits = model(images, masks)
    torch.testing.assert_close(logits, run_logits(base / "late", images, masks), rtol=0, atol=1e-5)
    results = json.loads((base / "late/results.json").read_text())
    assert int((logits.argmax(1) == labels).sum()) == results["cub_test"]["correct"]
    assert model.export.layout == "bgmask" and model.export.needs == "images and masks"


def test_the_model_card_states_the_numbers_of_results_json(runs, tmp_path):
    _, base = runs
    out = tmp_path / "export"
    export_run(base / "late", out)
    card = (out / "README.md").read_text()
    results = json.loads((base / "late/results.json").read_text())
    for name in ("cub_test", "waterbirds"):
        m = results[name]
        row = next(line for line in card.splitlines() if line.startswith(f"| {name} |"))
        low, high = wilson_interval(m["correct"], m["num_images"])
        assert f"| {m['top1']:.1f} % [{low:.1f}, {high:.1f}] ({m['correct']} / {m['num_images']}) |" in row
    assert f"{results['waterbirds']['worst_group']:.1f} %" in card.split("| waterbirds |")[1].splitlines()[0]
    assert "image **and** a binary bird mask" in card and "bgmask.load_classifier" in card


def test_export_refuses_what_it_cannot_read_and_leaves_nothing_behind(runs, tmp_path, monkeypatch):
    _, base = runs
    with pytest.raises(ExportError, match="not a finished run folder"):
        export_run(tmp_path, tmp_path / "x")
    out = tmp_path / "export"

    def broken_card(*args):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr("bgmask.model_card.model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(base / "baseline", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the export nor a partial folder
    monkeypatch.undo()
    export_run(base / "baseline", out)
    config = json.loads((out / "config.json").read_text())
    config["bgmask"]["format_version"] = 99
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="format version 99"):
        bgmask.load_classifier(out)
    with pytest.raises(ExportError, match="is not an export"):
        read_export(base / "baseline")


def test_a_killed_export_leaves_no_export_folder(runs, tmp_path):
    """SIGKILL while the weights are being written: the export's name never appears (only a hidden partial)."""
    _, base = runs
    out = tmp_path / "export"
    code = ("import os, signal, sys\nimport safetensors.torch as st\nimport timm.models._hub as hub\n"
            "def die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "st.save_file = hub.safetensors.torch.save_file = die\n"
            "from bgmask.export import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(base / "baseline"), "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and [p.name.startswith(".export.partial-") for p in tmp_path.iterdir()] == [True]


def test_predict_skips_a_corrupt_image_by_name_and_refuses_a_mask_of_another_size(runs, tmp_path, capsys,
                                                                                    monkeypatch):
    root, base = runs
    for name in ("baseline", "late"):
        export_run(base / name, tmp_path / name)
    folder, masks = tmp_path / "mine", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    sources = sorted((root / "images").rglob("*.jpg"))[:2]
    for k, src in enumerate(sources):
        (folder / f"bird{k}.jpg").write_bytes(src.read_bytes())
        mask = Image.open(root / GT_MASK_SUB_PATH / src.relative_to(root / "images").with_suffix(".png"))
        mask.save(masks / f"bird{k}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    Image.new("L", (8, 8)).save(masks / "broken.png")

    out = tmp_path / "out"
    assert predict_main(["--model", str(tmp_path / "baseline"), str(folder), "--out", str(out), "--figure"]) == 1
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image" in err and "broken.jpg" in err
    lines = (out / "predictions.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("file,class_1,prob_1") and (out / "gallery.png").is_file()

    # A late-masking model: without masks, and with a mask of the wrong size, nothing runs.
    late_out = tmp_path / "late_out"
    assert predict_main(["--model", str(tmp_path / "late"), str(folder), "--out", str(late_out)]) == 2
    assert "needs a bird mask per image" in capsys.readouterr().err
    Image.new("L", (10, 10)).save(masks / "bird1.png")

    def no_model(folder):
        raise AssertionError("the model was loaded before the masks were checked")

    monkeypatch.setattr("bgmask.export.load_classifier", no_model)
    assert predict_main(["--model", str(tmp_path / "late"), str(folder), "--masks", str(masks),
                         "--out", str(late_out)]) == 2
    err = capsys.readouterr().err
    assert "bird1.png is 10x10 but its image" in err and len(err.strip().splitlines()) == 1
    assert not late_out.exists()
    assert predict_main(["--model", str(tmp_path), str(folder), "--out", str(late_out)]) == 2
    assert "is not an export" in capsys.readouterr().err


def test_predict_takes_each_images_mask_from_a_csv_column_and_refuses_a_partial_set(runs, tmp_path, capsys):
    root, base = runs
    export_run(base / "late", tmp_path / "late")
    sources = sorted((root / "images").rglob("*.jpg"))[:2]
    rows = ["path,mask"]
    for k, src in enumerate(sources):
        (tmp_path / f"b{k}.jpg").write_bytes(src.read_bytes())
        mask = root / GT_MASK_SUB_PATH / src.relative_to(root / "images").with_suffix(".png")
        (tmp_path / f"b{k}.png").write_bytes(mask.read_bytes())
        rows.append(f"b{k}.jpg,b{k}.png")
    table = tmp_path / "mine.csv"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert predict_main(["--model", str(tmp_path / "late"), str(table), "--out", str(out)]) == 0
    lines = (out / "predictions.csv").read_text().splitlines()
    assert len(lines) == 3 and all(line.rsplit(",", 1)[1] for line in lines[1:])  # a foreground share per image
    table.write_text("\n".join([*rows[:2], "b1.jpg,"]) + "\n")
    assert predict_main(["--model", str(tmp_path / "late"), str(table), "--out", str(tmp_path / "o2")]) == 2
    assert "1 of 2 have none, e.g." in capsys.readouterr().err
