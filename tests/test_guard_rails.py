"""Real-data guard rails: user mistakes end in a message that names the fix; no evaluation is skipped silently."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bgmask.data.check import main as check_main
from bgmask.data.cub import WATERBIRDS_SUB_PATH
from bgmask.data.masks import MASK_FOLDERS, write_gt_masked_folders
from early_masking_and_baseline.train import main as early_main
from late_masking.train import main as late_main

from .test_classifier import train_argv

REPO = Path(__file__).resolve().parents[1]
WB_MASKED = MASK_FOLDERS[WATERBIRDS_SUB_PATH][1]


def results_of(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# ------------------------------------------------------------------------------------ Waterbirds evaluation
def test_missing_masked_waterbirds_stops_before_training_and_names_the_command(tiny_cub_copy, tmp_path, capsys):
    write_gt_masked_folders(tiny_cub_copy, progress=False)
    shutil.rmtree(tiny_cub_copy / WB_MASKED)  # Waterbirds added after the masks were generated
    run = tmp_path / "early"
    assert early_main(train_argv(tiny_cub_copy, run, "--masking", "early")) == 2
    err = capsys.readouterr().err
    assert WB_MASKED in err and "generate_masks.py" in err and "--skip_ood_eval" in err
    assert not (run / "last.pt").exists()
    # asking for it explicitly trains without the OOD evaluation and says so in results.json
    with pytest.warns(UserWarning, match="skip_ood_eval"):
        assert early_main(train_argv(tiny_cub_copy, run, "--masking", "early", "--epochs", "1",
                                     "--skip_ood_eval")) == 0
    assert results_of(run)["waterbirds"] == {"skipped": "--skip_ood_eval"}


def test_waterbirds_placed_next_to_the_cub_root_is_named(tiny_cub_copy, tmp_path, capsys):
    shutil.move(tiny_cub_copy / WATERBIRDS_SUB_PATH, tiny_cub_copy.parent / WATERBIRDS_SUB_PATH)
    assert early_main(train_argv(tiny_cub_copy, tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "next to the CUB root" in err and "mv " in err
    assert check_main([str(tiny_cub_copy)]) == 0
    out = capsys.readouterr().out
    assert f"{WATERBIRDS_SUB_PATH}/: absent" in out and "move it inside" in out


def test_missing_metadata_warns_and_results_say_group_metrics_are_absent(tiny_cub_copy, tmp_path):
    (tiny_cub_copy / WATERBIRDS_SUB_PATH / "metadata.csv").unlink()
    run = tmp_path / "r"
    with pytest.warns(UserWarning, match=r"metadata\.csv is missing"):
        assert early_main(train_argv(tiny_cub_copy, run, "--epochs", "1")) == 0
    wb = results_of(run)["waterbirds"]
    assert wb["num_images"] == 12 and "groups" not in wb and wb["group_metrics"].startswith("absent")


def test_a_masked_copy_without_metadata_uses_the_releases(tiny_cub_copy, tmp_path):
    write_gt_masked_folders(tiny_cub_copy, progress=False)
    (tiny_cub_copy / WB_MASKED / "metadata.csv").unlink()
    run = tmp_path / "r"
    assert early_main(train_argv(tiny_cub_copy, run, "--masking", "early", "--epochs", "1")) == 0
    assert results_of(run)["waterbirds"]["groups"]


def test_malformed_metadata_names_the_file(tiny_cub_copy, tmp_path, capsys):
    (tiny_cub_copy / WATERBIRDS_SUB_PATH / "metadata.csv").write_text("img_id,img_filename\n1,a.jpg\n")
    assert early_main(train_argv(tiny_cub_copy, tmp_path / "r")) == 2
    assert "metadata.csv lacks column(s) y, split, place" in capsys.readouterr().err


def test_late_gt_masks_without_segmentations_point_to_the_archive(tiny_cub_copy, tmp_path, capsys):
    shutil.rmtree(tiny_cub_copy / "segmentations")
    argv = train_argv(tiny_cub_copy, tmp_path / "late", "--mask_source", "gt")
    assert late_main(argv) == 2
    err = capsys.readouterr().err
    assert "segmentations.tgz" in err and "generate_masks" not in err


def test_check_reports_every_optional_part(tiny_cub_copy, capsys):
    write_gt_masked_folders(tiny_cub_copy, progress=False)
    shutil.move(tiny_cub_copy / "segmentations", tiny_cub_copy.parent / "segmentations")
    assert check_main([str(tiny_cub_copy)]) == 0
    out = capsys.readouterr().out
    assert "segmentations/: absent" in out and "move it inside" in out
    assert f"{WATERBIRDS_SUB_PATH}/: all 12 test images present, metadata.csv OK" in out
    assert "masks/: masks complete" in out and "provenance" in out
    shutil.rmtree(tiny_cub_copy.parent / "segmentations")
    assert check_main([str(tiny_cub_copy)]) == 0
    assert "segmentations.tgz" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ weights
def test_offline_without_cache_names_the_cache_the_env_var_and_the_flag(tiny_cub_root, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
           "TORCH_HOME": str(tmp_path / "torch")}
    argv = train_argv(tiny_cub_root, tmp_path / "r", "--start_weights", "DEFAULT")
    proc = subprocess.run([sys.executable, str(REPO / "early_masking_and_baseline/train.py"), *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(tmp_path / "hf") in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert "--pretrained_path" in proc.stderr and "Traceback" not in proc.stderr


def test_weights_of_another_architecture_are_described(tiny_cub_root, tmp_path, capsys):
    import timm

    path = tmp_path / "convnext.pth"
    torch.save(timm.create_model("convnext_atto", num_classes=0).state_dict(), path)
    argv = train_argv(tiny_cub_root, tmp_path / "r", "--model_arch", "vit_small_patch14_dinov2", "--image_size", "28",
                      "--pretrained_path", str(path))
    assert early_main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "staged CNN with stem width 40" in err and "ViT of width 384, 12 blocks" in err
    path = tmp_path / "femto.pth"  # a sibling of another size
    torch.save(timm.create_model("convnext_femto", num_classes=0).state_dict(), path)
    assert early_main(train_argv(tiny_cub_root, tmp_path / "r2", "--pretrained_path", str(path))) == 2
    err = capsys.readouterr().err
    assert "stem width 48" in err and "stem width 40" in err


def test_the_weights_source_is_logged_and_recorded(tiny_cub_root, tmp_path, capsys):
    import timm

    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_small_patch14_dinov2", num_classes=0).state_dict(), path)  # 518 px
    run = tmp_path / "r"
    argv = train_argv(tiny_cub_root, run, "--model_arch", "vit_small_patch14_dinov2", "--image_size", "28",
                      "--pretrained_path", str(path), "--epochs", "1")
    assert early_main(argv) == 0
    weights = results_of(run)["weights"]
    assert weights == {"source": "file", "location": str(path), "resampled": "position embeddings 518 px -> 28 px"}
    assert f"weights: file ({path})" in capsys.readouterr().out
    assert early_main(train_argv(tiny_cub_root, tmp_path / "s", "--epochs", "1")) == 0
    assert results_of(tmp_path / "s")["weights"]["source"] == "none"


# --------------------------------------------------------------------------------------------- run folder
def test_best_checkpoint_holds_weights_only_and_still_evaluates(tiny_cub_root, tmp_path):
    run = tmp_path / "r"
    assert early_main(train_argv(tiny_cub_root, run)) == 0
    best, last = torch.load(run / "best.pt", weights_only=False), torch.load(run / "last.pt", weights_only=False)
    assert "optimizer" not in best and "rng" not in best and "optimizer" in last
    assert best["model"].keys() == last["model"].keys()
    assert (run / "best.pt").stat().st_size < 0.7 * (run / "last.pt").stat().st_size
    (run / "results.json").unlink()
    assert early_main(train_argv(tiny_cub_root, run, "--eval_only")) == 0
    assert results_of(run)["checkpoint"].endswith("best.pt")


def test_a_reused_snapshot_dir_with_other_settings_is_refused(tiny_cub_root, tmp_path, capsys):
    run = tmp_path / "r"
    assert early_main(train_argv(tiny_cub_root, run, "--epochs", "1")) == 0
    assert early_main(train_argv(tiny_cub_root, run, "--epochs", "1", "--lr", "0.01", "--seed", "5")) == 2
    err = capsys.readouterr().err
    assert "--lr 0.001 -> 0.01" in err and "--seed 0 -> 5" in err and "new --snapshot_dir" in err
    # the same settings (and run-only flags such as the worker count) resume it
    assert early_main(train_argv(tiny_cub_root, run, "--epochs", "2", "--resume_training")) == 2  # epochs differ
    capsys.readouterr()
    assert early_main(train_argv(tiny_cub_root, run, "--epochs", "1", "--resume_training", "--num_workers", "1")) == 0
    assert "Resumed from" in capsys.readouterr().out and results_of(run)["epoch"] == 1


def test_upstream_short_dinov2_name_is_refused_with_the_full_name(tiny_cub_root, tmp_path, capsys):
    assert early_main(train_argv(tiny_cub_root, tmp_path / "r", "--model_arch", "vit_small")) == 2
    assert "vit_small_patch14_dinov2.lvd142m" in capsys.readouterr().err


def test_wandb_run_id_is_kept_in_the_run_folder(tiny_cub_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # an optional extra; the setup installs it
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "r"
    argv = train_argv(tiny_cub_root, run, "--epochs", "1", "--wandb", "--diagnostics", "none")
    assert early_main(argv) == 0
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert run_id
    assert early_main([*argv, "--resume_training"]) == 0  # a requeued job starts again in the same folder
    offline_runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(name.endswith(f"-{run_id}") for name in offline_runs), offline_runs
