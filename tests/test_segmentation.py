"""The segmentation subproject: plugin, configs, dataset preparation, train/test tools, mask generation."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmseg")

from bgmask.data.cub import WATERBIRDS_SUB_PATH, CUBIndex, load_rgb, mask_path_for  # noqa: E402
from bgmask.data.masks import MASK_FOLDERS, MASKED_JPEG_OPTIONS  # noqa: E402
from bgmask.errors import DatasetError  # noqa: E402
from cub_seg.runner import disable_pretrained  # noqa: E402

pytestmark = [
    pytest.mark.mmseg,
    # MMSeg's construction-time advice (binary heads, build_loss, avg_non_ignore) is noise for these tests.
    pytest.mark.filterwarnings("ignore::UserWarning:mmseg.*"),
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning"),
]

REPO = Path(__file__).resolve().parents[1]
SEG = REPO / "mmsegmentation"
CONFIGS = sorted(p.name for p in (SEG / "configs").glob("*.py"))
TINY_CONFIG = SEG / "configs" / "segformer_mit-b0_tiny_synthetic-128x128.py"
# 40 iterations of the tiny config on the tiny dataset, at a constant-then-decaying lr without the config's 40-iteration
# warm-up: a real checkpoint that already predicts birds (bird IoU about 21 % on the tiny test split, both classes
# in every comparison below), so the plumbing checks compare masks that hold something. After 10 warm-up iterations
# every mask was empty, and any two empty masks agree.
SHORT_ITERS = 40


def short_train(iters: int = SHORT_ITERS) -> list[str]:
    return [f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
            f"default_hooks.checkpoint.interval={iters}", "default_hooks.logger.interval=10",
            "train_dataloader.batch_size=2", "optim_wrapper.optimizer.lr=0.003", "param_scheduler.0.end=1",
            "param_scheduler.1.begin=1", f"param_scheduler.1.end={SHORT_ITERS}"]


SHORT_TRAIN = short_train()
NO_WORKERS = [f"{loader}.{key}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
              for key in ("num_workers=0", "persistent_workers=False")]


def load_tool(name: str):
    """Import a script of mmsegmentation/tools/ as a module (to call its main() in-process)."""
    spec = importlib.util.spec_from_file_location(f"seg_tool_{name}", SEG / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name: str, *args) -> subprocess.CompletedProcess:
    """Run a tool as users do, in a fresh process (mmengine's Runner keeps global state)."""
    return subprocess.run([sys.executable, str(SEG / "tools" / f"{name}.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as m:
        return np.asarray(m)


# ------------------------------------------------------------------------------------------------ plugin, configs
def test_plugin_registers_dataset_and_metric():
    from mmseg.registry import DATASETS, METRICS

    import cub_seg

    ds = DATASETS.get("CUBBinarySegDataset")
    assert ds is cub_seg.CUBBinarySegDataset
    assert ds.METAINFO == dict(classes=("background", "bird"), palette=[[0, 0, 0], [255, 255, 255]])
    defaults = inspect.signature(ds.__init__).parameters
    assert defaults["img_suffix"].default == ".jpg" and defaults["seg_map_suffix"].default == ".png"
    assert defaults["reduce_zero_label"].default is False
    assert METRICS.get("PerClassIoUMetric") is cub_seg.PerClassIoUMetric


def test_importing_the_plugin_changes_no_checkpoint_loader():
    """Importing cub_seg (every config does; late masking imports cub_seg.inference) leaves mmengine's loaders as
    they were, in a fresh process where nothing else touched them."""
    code = (
        "from mmengine.runner.checkpoint import CheckpointLoader as L\n"
        "before = L._schemes['']\n"
        "import cub_seg, cub_seg.inference, cub_seg.generate, cub_seg.runner\n"
        "assert L._schemes[''] is before, L._schemes['']\n"
        "assert cub_seg.load_from_local_trusted not in L._schemes.values()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_trusted_loader_only_inside_the_context_and_only_for_local_paths():
    from mmengine.runner.checkpoint import CheckpointLoader

    import cub_seg

    local = CheckpointLoader._get_checkpoint_loader("work_dirs/x/iter_10.pth")
    remote = {url: CheckpointLoader._get_checkpoint_loader(url)
              for url in ("https://example.org/x.pth", "open-mmlab://resnet50_v1c", "torchvision://resnet50")}
    assert local is not cub_seg.load_from_local_trusted
    with cub_seg.trusted_local_checkpoints():
        assert CheckpointLoader._get_checkpoint_loader("work_dirs/x/iter_10.pth") is cub_seg.load_from_local_trusted
        assert CheckpointLoader._get_checkpoint_loader("/abs/iter_10.pth") is cub_seg.load_from_local_trusted
        with cub_seg.trusted_local_checkpoints():  # nested: still trusted, and the outer block is kept
            pass
        assert CheckpointLoader._get_checkpoint_loader("work_dirs/x/iter_10.pth") is cub_seg.load_from_local_trusted
        for url, loader in remote.items():
            assert CheckpointLoader._get_checkpoint_loader(url) is loader  # URLs keep mmengine's loaders
    assert CheckpointLoader._get_checkpoint_loader("work_dirs/x/iter_10.pth") is local
    with pytest.raises(KeyError), cub_seg.trusted_local_checkpoints():
        raise KeyError("an error inside the block")
    assert CheckpointLoader._get_checkpoint_loader("work_dirs/x/iter_10.pth") is local  # restored on errors too


@pytest.mark.parametrize("config", CONFIGS)
def test_config_loads_and_builds(config):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    cfg = Config.fromfile(SEG / "configs" / config)
    assert "cub_seg" in cfg.custom_imports.imports
    assert cfg.train_dataloader.dataset.type == "CUBBinarySegDataset"
    assert cfg.train_dataloader.dataset.data_prefix == dict(img_path="images/train", seg_map_path="annotations/train")
    assert cfg.val_dataloader.dataset.data_prefix == dict(img_path="images/test", seg_map_path="annotations/test")
    assert cfg.test_dataloader.dataset.data_prefix == dict(img_path="images/waterbird_test",
                                                           seg_map_path="annotations/test")
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.type == "PerClassIoUMetric" and set(evaluator.iou_metrics) == {"mIoU", "mDice"}
    if "tiny" in config:
        assert cfg.model.backbone.init_cfg is None  # nothing may be downloaded
    else:
        assert cfg.model.backbone.init_cfg.type == "Pretrained"  # upstream's initialisation is kept
        assert cfg.train_cfg.max_iters == 160000
        disable_pretrained(cfg)
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model).eval()
    assert model.decode_head.num_classes == 2
    with torch.no_grad():
        meta = dict(ori_shape=(64, 64), img_shape=(64, 64), pad_shape=(64, 64), padding_size=[0, 0, 0, 0])
        scores = model.inference(torch.randn(1, 3, 64, 64), [meta])
    assert scores.shape == (1, 2, 64, 64)


def test_mask2former_loss_runs_with_two_classes():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = Config.fromfile(SEG / "configs" / "mask2former_r50_8xb2-160k_cub-512x512.py")
    disable_pretrained(cfg)
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model).train()
    gt = torch.zeros(1, 64, 64, dtype=torch.long)
    gt[0, 16:48, 16:48] = 1
    sample = SegDataSample(gt_sem_seg=PixelData(data=gt))
    sample.set_metainfo(dict(img_shape=(64, 64), pad_shape=(64, 64)))
    losses = model.loss(torch.randn(1, 3, 64, 64), [sample])
    assert all(torch.isfinite(v) for k, v in losses.items() if k.startswith("decode.loss"))


def test_mask2former_data_section_matches_dataset_base():
    from mmengine.config import Config

    base = Config.fromfile(SEG / "configs" / "_base_" / "datasets" / "cub_binary_seg.py")
    for name in ("mask2former_r50_8xb2-160k_cub-512x512.py", "mask2former_swin-t_8xb2-160k_cub-512x512.py",
                 "segformer_mit-b0_8xb2-160k_cub-512x512.py"):
        cfg = Config.fromfile(SEG / "configs" / name)
        for key in ("dataset_type", "data_root", "crop_size", "train_pipeline", "test_pipeline"):
            assert cfg[key] == base[key], (name, key)
        for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
            assert cfg[key].dataset.to_dict() == base[key].dataset.to_dict(), (name, key)
        assert cfg.val_evaluator.to_dict() == base.val_evaluator.to_dict()


# ---------------------------------------------------------------------------------------------- dataset preparation
@pytest.fixture(scope="module")
def seg_data(tiny_cub_root, tmp_path_factory) -> Path:
    from cub_seg.prepare import prepare_cub_binary_seg

    out = tmp_path_factory.mktemp("seg") / "cub_binary_segmentation"
    prepare_cub_binary_seg(tiny_cub_root, out, progress=False)
    return out


def test_prepare_thresholds_and_layout(seg_data, tiny_cub_root):
    index = CUBIndex.load(tiny_cub_root)
    manifest = json.loads((seg_data / "prepare_manifest.json").read_text())
    n_train = int(index.is_train.sum())
    n_test = len(index.ids) - n_train
    assert manifest["counts"] == dict(train=n_train, test=n_test, waterbird_test=n_test)
    for i, rel in enumerate(index.paths):
        split = "train" if index.is_train[i] else "test"
        image = seg_data / "images" / split / rel
        assert image.is_symlink() and image.resolve() == (tiny_cub_root / "images" / rel).resolve()
        binary = read_mask(seg_data / "annotations" / split / mask_path_for(rel))
        soft = read_mask(tiny_cub_root / "segmentations" / mask_path_for(rel))
        assert binary.dtype == np.uint8 and set(np.unique(binary)) <= {0, 1}
        np.testing.assert_array_equal(binary, (soft > 0).astype(np.uint8))
        if not index.is_train[i]:
            wb = seg_data / "images" / "waterbird_test" / rel
            assert wb.resolve() == (tiny_cub_root / WATERBIRDS_SUB_PATH / rel).resolve()
    assert not (seg_data / "annotations" / "waterbird_test").exists()  # it reuses annotations/test
    assert 0 < manifest["bird_pixel_fraction"] < 1


def test_prepare_refuses_stale_output_and_copies_on_request(seg_data, tiny_cub_root, tmp_path):
    from cub_seg.prepare import prepare_cub_binary_seg

    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_cub_binary_seg(tiny_cub_root, seg_data, progress=False)
    out = tmp_path / "copied"
    (out / "images" / "train").mkdir(parents=True)
    (out / "images" / "train" / "stale.jpg").write_bytes(b"old")
    prepare_cub_binary_seg(tiny_cub_root, out, link="copy", overwrite=True, progress=False)
    assert not (out / "images" / "train" / "stale.jpg").exists()  # replaced, never mixed
    images = list((out / "images").rglob("*.jpg"))
    assert images and not any(p.is_symlink() for p in images)
    assert not list(tmp_path.glob(".*.partial"))
    with pytest.raises(ValueError, match="overlaps"):
        prepare_cub_binary_seg(tiny_cub_root, tiny_cub_root.parent, overwrite=True, progress=False)


def test_prepare_reports_missing_segmentation_before_writing(tiny_cub_copy, tmp_path):
    prepare = load_tool("prepare_cub_binary_seg")
    victim = next((tiny_cub_copy / "segmentations").rglob("*.png"))
    victim.unlink()
    out = tmp_path / "out"
    assert prepare.main(["--cub_root", str(tiny_cub_copy), "--out", str(out), "--no_progress"]) == 2
    assert not out.exists()
    with pytest.raises(DatasetError, match=victim.name):
        from cub_seg.prepare import prepare_cub_binary_seg

        prepare_cub_binary_seg(tiny_cub_copy, out, progress=False)


def test_dataset_reads_prepared_data_and_names_missing_maps(seg_data, tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    init_default_scope("mmseg")
    ds = DATASETS.build(dict(type="CUBBinarySegDataset", data_root=str(seg_data),
                             data_prefix=dict(img_path="images/waterbird_test", seg_map_path="annotations/test"),
                             pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]))
    sample = ds[0]
    assert sample["gt_seg_map"].shape == sample["img"].shape[:2]
    assert set(np.unique(sample["gt_seg_map"])) <= {0, 1}

    broken = tmp_path / "broken"
    shutil.copytree(seg_data, broken, symlinks=True)
    next((broken / "annotations" / "test").rglob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="prepare_cub_binary_seg"):
        DATASETS.build(dict(type="CUBBinarySegDataset", data_root=str(broken),
                            data_prefix=dict(img_path="images/test", seg_map_path="annotations/test"), pipeline=[]))


# -------------------------------------------------------------------------------------------- train, test, resume
@pytest.fixture(scope="module")
def trained(seg_data, tmp_path_factory) -> Path:
    """A checkpoint of the tiny config after 40 CPU iterations on the tiny dataset."""
    work_dir = tmp_path_factory.mktemp("train")
    proc = run_tool("train", TINY_CONFIG, "--work-dir", work_dir, "--data-root", seg_data,
                    "--cfg-options", *SHORT_TRAIN, *NO_WORKERS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoint = work_dir / f"iter_{SHORT_ITERS}.pth"
    assert checkpoint.is_file()
    return checkpoint


def test_checkpoint_from_training_needs_and_gets_trusted_loading(trained):
    from mmengine.runner.checkpoint import _load_checkpoint

    import cub_seg

    with cub_seg.trusted_local_checkpoints():
        checkpoint = _load_checkpoint(str(trained), map_location="cpu")
    assert {"state_dict", "meta", "message_hub"} <= set(checkpoint)
    if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6):
        with pytest.raises(Exception, match="weights_only"):
            torch.load(trained, map_location="cpu")  # torch's default refuses mmengine checkpoints
        with pytest.raises(Exception, match="weights_only"):
            _load_checkpoint(str(trained), map_location="cpu")  # and so does mmengine outside the block


def test_test_tool_reports_both_splits(trained, seg_data, tmp_path):
    out = tmp_path / "metrics.json"
    proc = run_tool("test", TINY_CONFIG, trained, "--work-dir", tmp_path, "--data-root", seg_data, "--out", out,
                    "--cfg-options", *NO_WORKERS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"test", "waterbird_test"}
    for split in metrics.values():
        assert {"mIoU", "mDice", "IoU.bird", "Dice.bird"} <= set(split)
        per_class = [value for key, value in split.items() if key.startswith("IoU.")]
        assert len(per_class) == 2  # background and bird; the mean of the two (each rounded to 0.01)
        assert split["mIoU"] == pytest.approx(sum(per_class) / 2, abs=0.011)


def test_train_resumes_from_last_checkpoint(trained, seg_data, tmp_path):
    work_dir = tmp_path / "work"
    shutil.copytree(trained.parent, work_dir)
    (work_dir / "last_checkpoint").write_text(str(work_dir / f"iter_{SHORT_ITERS}.pth"))
    proc = run_tool("train", TINY_CONFIG, "--work-dir", work_dir, "--data-root", seg_data, "--resume",
                    "--cfg-options", *short_train(SHORT_ITERS + 2), "train_cfg.val_interval=100", *NO_WORKERS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed epoch: 0, iter: {SHORT_ITERS}" in proc.stdout + proc.stderr
    assert (work_dir / f"iter_{SHORT_ITERS + 2}.pth").is_file()


def test_tools_reject_bad_paths_before_work(tmp_path, capsys):
    train = load_tool("train")
    assert train.main([str(TINY_CONFIG), "--data-root", str(tmp_path / "nope")]) == 2
    assert "prepare_cub_binary_seg" in capsys.readouterr().err
    assert train.main([str(tmp_path / "missing_config.py")]) == 2
    assert "does not exist" in capsys.readouterr().err
    test = load_tool("test")
    assert test.main([str(TINY_CONFIG), str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train.main([str(TINY_CONFIG), "--launcher", "pytorch"]) == 2
        assert "--launcher none" in capsys.readouterr().err


def test_wandb_backend_is_optional_and_offline_without_credentials(seg_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from cub_seg.runner import add_common_args, load_config

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    plain = load_config(parser.parse_args([str(TINY_CONFIG), "--data-root", str(seg_data)]), ("train_dataloader",))
    assert [b["type"] for b in plain.visualizer.vis_backends] == ["LocalVisBackend"]
    cfg = load_config(parser.parse_args([str(TINY_CONFIG), "--data-root", str(seg_data), "--wandb"]),
                      ("train_dataloader",))
    wandb_backend = cfg.visualizer.vis_backends[-1]
    assert wandb_backend["type"] == "WandbVisBackend" and wandb_backend["init_kwargs"]["mode"] == "offline"
    assert "entity" not in wandb_backend["init_kwargs"]


# ------------------------------------------------------------------------------------------------- mask generation
@pytest.fixture(scope="module")
def generated(trained, tiny_cub_root, tmp_path_factory) -> Path:
    """A copy of the tiny CUB root with predicted masks written by generate_masks.py (batches of 4)."""
    root = tmp_path_factory.mktemp("generated") / "CUB_200_2011"
    shutil.copytree(tiny_cub_root, root)
    proc = run_tool("generate_masks", "--cub_root", root, "--config", TINY_CONFIG, "--checkpoint", trained,
                    "--batch_size", 4, "--num_workers", 1, "--device", "cpu", "--no_progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_generated_masks_cover_every_image_at_original_size(generated, trained):
    from cub_seg.inference import Segmenter

    segmenter = Segmenter.from_files(TINY_CONFIG, trained, "cpu")
    index = CUBIndex.load(generated)
    for image_dir, (mask_dir, masked_dir) in MASK_FOLDERS.items():
        for rel in index.paths:
            image = load_rgb(generated / image_dir / rel)
            mask = read_mask(generated / mask_dir / mask_path_for(rel))
            assert mask.shape == (image.size[1], image.size[0])
            assert set(np.unique(mask)) <= {0, 255}
            assert (generated / masked_dir / rel).is_file()
        # The segmenter sees birds: both classes, overlapping the ground truth (an RGB/BGR or normalisation
        # mix-up, or an empty prediction, would fail this).
        predicted = np.concatenate([read_mask(generated / mask_dir / mask_path_for(r)).ravel() > 0
                                    for r in index.paths])
        truth = np.concatenate([np.asarray(Image.open(generated / "segmentations" / mask_path_for(r))).ravel() > 0
                                for r in index.paths])
        assert 0.05 < predicted.mean() < 0.95, predicted.mean()
        assert (predicted & truth).sum() / (predicted | truth).sum() > 0.1, image_dir
        # The files hold what the Python API predicts (batch composition may move a few pixels).
        sample = index.paths[:4]
        expected = segmenter.predict_images([np.asarray(load_rgb(generated / image_dir / r)) for r in sample])
        for rel, exp in zip(sample, expected):
            agreement = ((read_mask(generated / mask_dir / mask_path_for(rel)) > 0) == (exp > 0)).mean()
            assert agreement > 0.99
    wb_masked = generated / MASK_FOLDERS[WATERBIRDS_SUB_PATH][1]
    assert (wb_masked / "metadata.csv").read_bytes() == (generated / WATERBIRDS_SUB_PATH / "metadata.csv").read_bytes()
    assert not list(generated.rglob("*.tmp"))


def test_masked_images_are_zero_outside_and_unchanged_inside(generated):
    index = CUBIndex.load(generated)
    for image_dir, (mask_dir, masked_dir) in MASK_FOLDERS.items():
        for rel in index.paths[:6]:
            image = np.asarray(load_rgb(generated / image_dir / rel))
            mask = read_mask(generated / mask_dir / mask_path_for(rel)) > 0
            masked = np.where(mask[..., None], image, 0).astype(np.uint8)  # early masking, written out
            # On disk the masked image is a JPEG (same name as the image): exactly the encoding of that array.
            buf = io.BytesIO()
            Image.fromarray(masked).save(buf, format="JPEG", **MASKED_JPEG_OPTIONS)
            np.testing.assert_array_equal(np.asarray(load_rgb(generated / masked_dir / rel)),
                                          np.asarray(Image.open(buf).convert("RGB")))


def test_generation_resumes_and_keeps_provenance(generated, trained, tmp_path):
    root = tmp_path / "CUB_200_2011"
    shutil.copytree(generated, root)
    mask_files = sorted((root / "masks").rglob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in mask_files}
    removed = mask_files[0]
    removed.unlink()
    generate = load_tool("generate_masks")
    args = ["--cub_root", str(root), "--config", str(TINY_CONFIG), "--checkpoint", str(trained), "--device", "cpu",
            "--num_workers", "0", "--no_progress"]
    assert generate.main(args) == 0
    assert removed.is_file()
    for p, mtime in before.items():
        if p != removed:
            assert p.stat().st_mtime_ns == mtime  # finished images are not rewritten
    # Masks from another source are never mixed into these folders without --overwrite.
    assert generate.main(["--cub_root", str(root), "--gt", "--no_progress"]) == 2


def test_generation_counts_on_resume(generated, trained, tmp_path, capsys):
    root = tmp_path / "CUB_200_2011"
    shutil.copytree(generated, root)
    next((root / "waterbird_complete95_forest2water2_masks").rglob("*.png")).unlink()
    generate = load_tool("generate_masks")
    assert generate.main(["--cub_root", str(root), "--config", str(TINY_CONFIG), "--checkpoint", str(trained),
                          "--device", "cpu", "--num_workers", "0", "--no_progress"]) == 0
    out = capsys.readouterr().out
    n = len(CUBIndex.load(root).ids)
    assert f"images: 0 written, {n} already done" in out
    assert f"{WATERBIRDS_SUB_PATH}: 1 written, {n - 1} already done" in out


def test_shards_split_the_images_without_overlap(trained, tiny_cub_copy):
    from cub_seg.generate import generate_predicted_masks
    from cub_seg.inference import Segmenter

    segmenter = Segmenter.from_files(TINY_CONFIG, trained, "cpu")
    n = len(CUBIndex.load(tiny_cub_copy).ids)
    source = {"source": "segmenter", "checkpoint_sha256": "test"}
    first = generate_predicted_masks(segmenter, tiny_cub_copy, source, batch_size=4, progress=False, rank=0,
                                     world_size=2)
    assert all(s == dict(written=(n + 1) // 2, skipped=0) for s in first.values())
    assert len(list((tiny_cub_copy / "masks").rglob("*.png"))) == (n + 1) // 2
    second = generate_predicted_masks(segmenter, tiny_cub_copy, source, batch_size=4, progress=False, rank=1,
                                      world_size=2)
    assert all(s == dict(written=n // 2, skipped=0) for s in second.values())
    for mask_dir, masked_dir in MASK_FOLDERS.values():
        assert len(list((tiny_cub_copy / mask_dir).rglob("*.png"))) == n
        assert len(list((tiny_cub_copy / masked_dir).rglob("*.jpg"))) == n


def test_a_rerun_removes_what_a_killed_run_left_half_written_in_its_own_shard_only(tiny_cub_copy):
    from cub_seg.generate import plan_folders, remove_stale_temporary_files

    index = CUBIndex.load(tiny_cub_copy)
    mask_dir, masked_dir = MASK_FOLDERS["images"]
    stale = {}
    for i, rel in enumerate(index.paths[:4]):  # shards of 2: images 0 and 2 are rank 0's, 1 and 3 rank 1's
        for path in (tiny_cub_copy / mask_dir / mask_path_for(rel), tiny_cub_copy / masked_dir / rel):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.k9x_2q.tmp"  # atomic_write's temporary name
            tmp.write_bytes(b"half")
            stale[tmp] = i % 2
    plans = plan_folders(tiny_cub_copy, rank=0, world_size=2)
    assert remove_stale_temporary_files(tiny_cub_copy, plans, rank=0, world_size=2) == 4
    assert all(tmp.exists() == (shard == 1) for tmp, shard in stale.items())  # rank 1's files in progress stay


def test_gt_masks_equal_thresholded_cub_masks(tiny_cub_copy):
    generate = load_tool("generate_masks")
    assert generate.main(["--cub_root", str(tiny_cub_copy), "--gt", "--no_progress"]) == 0
    index = CUBIndex.load(tiny_cub_copy)
    for mask_dir, masked_dir in MASK_FOLDERS.values():
        for rel in index.paths:
            soft = read_mask(tiny_cub_copy / "segmentations" / mask_path_for(rel))
            np.testing.assert_array_equal(read_mask(tiny_cub_copy / mask_dir / mask_path_for(rel)),
                                          (soft > 0).astype(np.uint8) * 255)
            assert (tiny_cub_copy / masked_dir / rel).is_file()
    assert json.loads((tiny_cub_copy / "masks" / ".provenance.json").read_text())["source"] == "gt"


def test_generate_masks_rejects_bad_arguments_before_work(tiny_cub_root, tmp_path, capsys):
    generate = load_tool("generate_masks")
    assert generate.main(["--cub_root", str(tmp_path / "nowhere"), "--gt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert generate.main(["--cub_root", str(tiny_cub_root), "--config", str(TINY_CONFIG),
                          "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate.main(["--cub_root", str(tiny_cub_root)])  # neither a segmenter nor --gt
    with pytest.raises(SystemExit):
        generate.main(["--cub_root", str(tiny_cub_root), "--gt", "--config", str(TINY_CONFIG)])


# -------------------------------------------------------------------------------------- batched inference, provider
def _same_size_images(root: Path, count: int = 3) -> list[np.ndarray]:
    index = CUBIndex.load(root)
    images = [np.array(load_rgb(root / "images" / rel)) for rel in index.paths]
    shape = images[0].shape
    same = [img for img in images if img.shape == shape][:count]
    assert len(same) >= 2
    return same


def test_batched_prediction_matches_one_image_per_call(trained, tiny_cub_root):
    from mmseg.apis import inference_model

    from cub_seg.inference import Segmenter

    segmenter = Segmenter.from_files(TINY_CONFIG, trained, "cpu")
    images = _same_size_images(tiny_cub_root)
    # Mixed sizes in any order: grouped by shape for inference_model, returned in the input order.
    other = np.ascontiguousarray(images[0][: images[0].shape[0] // 2 + 7])
    images = [images[0], other, *images[1:], other[:, ::-1]]
    batched = segmenter.predict_images(images, batch_size=2)
    # The model still takes file paths afterwards (inference_model's switch to arrays is undone).
    path = tiny_cub_root / "images" / CUBIndex.load(tiny_cub_root).paths[0]
    assert inference_model(segmenter.model, str(path)).pred_sem_seg.data.shape[-2:] == load_rgb(path).size[::-1]
    for image, mask in zip(images, batched):
        single = segmenter.predict_images([image])[0]
        assert 0.02 < single.mean() < 0.98  # both classes: agreement below means something
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert (mask == single).mean() > 0.999
        # MMSeg's own inference on the same pixels (its loaders give BGR).
        reference = inference_model(segmenter.model, np.ascontiguousarray(image[..., ::-1])).pred_sem_seg.data[0]
        assert (mask == reference.numpy()).mean() > 0.999


def test_images_of_one_test_resized_size_share_a_forward_pass(trained, tiny_cub_root, monkeypatch):
    """Real CUB images have many sizes that the test resize maps to a few: they are batched by that size."""
    import mmseg.apis

    from cub_seg.inference import Segmenter

    segmenter = Segmenter.from_files(TINY_CONFIG, trained, "cpu")
    base = _same_size_images(tiny_cub_root)[0]
    candidates = [base, *(np.ascontiguousarray(base[:crop_h, :crop_w]) for crop_h, crop_w in
                          ((base.shape[0], base.shape[1] - 1), (base.shape[0], base.shape[1] - 3),
                           (base.shape[0] - 1, base.shape[1]), (base.shape[0] - 2, base.shape[1] - 2)))]
    key = segmenter.batch_key(*base.shape[:2])
    same = [img for img in candidates if segmenter.batch_key(*img.shape[:2]) == key]
    assert len({img.shape for img in same}) >= 2, [img.shape for img in candidates]
    singles = [segmenter.predict_images([img])[0] for img in same]
    calls, real = [], mmseg.apis.inference_model
    monkeypatch.setattr(mmseg.apis, "inference_model", lambda model, imgs: calls.append(len(imgs)) or real(model, imgs))
    masks = segmenter.predict_images(same, batch_size=len(same))
    assert calls == [len(same)]  # one forward pass for all of them
    for img, mask, single in zip(same, masks, singles):
        assert mask.shape == img.shape[:2] and (mask == single).mean() > 0.999


def test_segmenter_refuses_a_checkpoint_of_another_config(trained):
    from cub_seg.inference import load_segmenter

    with pytest.raises(RuntimeError, match="Use the config the checkpoint was trained with"):
        load_segmenter(SEG / "configs" / "segformer_mit-b1_8xb2-160k_cub-512x512.py", trained)
    with pytest.raises(FileNotFoundError, match="train.py"):
        load_segmenter(TINY_CONFIG, trained.parent / "iter_999.pth")


def test_mask_provider_for_late_masking(trained, tiny_cub_root):
    from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
    from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

    from cub_seg.inference import Segmenter, SegmenterMaskProvider

    images = _same_size_images(tiny_cub_root)
    batch = torch.stack([torch.from_numpy(img).permute(2, 0, 1).float() / 255 for img in images])
    batch = (batch - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    batch.requires_grad_(True)
    provider = SegmenterMaskProvider(TINY_CONFIG, trained)
    masks = provider(batch)
    assert masks.shape == (len(images), *images[0].shape[:2]) and masks.dtype == torch.uint8
    assert set(masks.unique().tolist()) <= {0, 1} and not masks.requires_grad
    assert not isinstance(provider, torch.nn.Module)
    model = provider.segmenter.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # Same masks as the uint8 image path (only the resize implementation differs).
    reference = Segmenter.from_files(TINY_CONFIG, trained, "cpu").predict_images(images)
    for mask, ref in zip(masks.numpy(), reference):
        assert 0.02 < ref.mean() < 0.98  # both classes: agreement below means something
        assert (mask == ref).mean() > 0.97


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mask_provider_follows_the_batch_to_cuda(trained):
    from cub_seg.inference import SegmenterMaskProvider

    provider = SegmenterMaskProvider(TINY_CONFIG, trained)
    masks = provider(torch.zeros(2, 3, 64, 64, device="cuda"))
    assert masks.device.type == "cuda" and provider.segmenter.device.type == "cuda"


def test_killed_generation_reruns_to_identical_outputs(generated, trained, tiny_cub_root, tmp_path):
    """SIGKILL generate_masks.py part-way, check no truncated file exists, rerun: byte-identical to a full run."""
    import time

    root = tmp_path / "CUB_200_2011"
    shutil.copytree(tiny_cub_root, root)
    cmd = [sys.executable, str(SEG / "tools" / "generate_masks.py"), "--cub_root", str(root), "--config",
           str(TINY_CONFIG), "--checkpoint", str(trained), "--batch_size", "1", "--num_workers", "0", "--device",
           "cpu", "--no_progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    masks = root / MASK_FOLDERS["images"][0]
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and len(list(masks.rglob("*.png"))) < 5:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    written = [p for p in root.rglob("*") if p.is_file() and p.parent.name != "segmentations"]
    for path in written:  # every file visible under its final name is complete
        if path.suffix in (".png", ".jpg"):
            with Image.open(path) as img:
                img.load()
    assert len(list(masks.rglob("*.png"))) < 24 or proc.returncode == 0  # killed part-way (or finished first)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    for folder in (*MASK_FOLDERS["images"], *MASK_FOLDERS[WATERBIRDS_SUB_PATH]):
        expected = sorted(p.relative_to(generated) for p in (generated / folder).rglob("*") if p.is_file())
        got = sorted(p.relative_to(root) for p in (root / folder).rglob("*") if p.is_file())
        assert got == expected, folder
        for rel in expected:
            assert (root / rel).read_bytes() == (generated / rel).read_bytes(), rel


@pytest.mark.parametrize("processes", [1, 2])
def test_late_masking_trains_with_the_online_segmenter(trained, tiny_cub_root, tmp_path, processes):
    """--mask_source segmenter: a short run, single-process and under torchrun (DDP, gloo); nothing of the
    segmenter in the classifier checkpoint."""
    run = tmp_path / "late_seg"
    argv = ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(run), "--model_arch", "convnext_atto",
            "--image_size", "32", "--batch_size", "4", "--num_workers", "0", "--epochs", "1", "--device", "cpu",
            "--mask_source", "segmenter", "--seg_model_config_path", str(TINY_CONFIG),
            "--seg_model_checkpoint_path", str(trained)]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                        "--standalone", "--nproc_per_node", str(processes)]
    proc = subprocess.run([*launcher, str(REPO / "late_masking/train.py"), *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["mask_source"] == "segmenter" and results["world_size"] == processes
    assert results["cub_test"]["num_images"] == 12 and results["waterbirds"]["num_images"] == 12
    state = torch.load(run / "last.pt", weights_only=False)
    assert all(k.startswith("classifier.") for k in state["model"])
