"""Faults that must end in a clear error or a bounded exit: bad checkpoints, paths, losses, dead workers, bad data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bgmask.data.check import main as check_main
from bgmask.data.cub import parse_index_file
from bgmask.errors import DatasetError
from bgmask.models.masking import mask_to_feature_grid

from .test_classifier import early_main, train_argv

REPO = Path(__file__).resolve().parents[1]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_cub_root, tmp_path, monkeypatch):
    import bgmask.run.fit as fit

    calls = {"n": 0}

    class NaNAfterOneEpoch(torch.nn.Module):
        def forward(self, logits, targets):
            calls["n"] += 1
            loss = torch.nn.functional.cross_entropy(logits, targets)
            return loss * float("nan") if calls["n"] > 3 else loss  # 12 images / batch 4 = 3 steps per epoch

    monkeypatch.setattr(fit, "build_criterion", lambda *args: NaNAfterOneEpoch())
    run = tmp_path / "nan"
    with pytest.raises(SystemExit, match=r"training loss is nan .*last.pt holds the last completed epoch"):
        early_main(train_argv(tiny_cub_root, run, "--epochs", "3"))
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "results.json").exists()


def test_checkpoint_of_another_class_count_is_refused(tiny_cub_root, tmp_path, capsys):
    from bgmask.infra.checkpoint import atomic_torch_save
    from bgmask.models import ModelSpec, create_classifier

    other = create_classifier(ModelSpec(arch="convnext_atto", num_classes=7))
    ckpt = tmp_path / "other.pt"
    atomic_torch_save({"model": other.state_dict(), "epoch": 1}, ckpt)
    code = early_main(train_argv(tiny_cub_root, tmp_path / "eval", "--eval_only", "--checkpoint", str(ckpt)))
    err = capsys.readouterr().err
    assert code == 2 and "does not match this model" in err and "head.weight" in err and "(7, 320)" in err


def test_corrupt_last_checkpoint_is_reported(tiny_cub_root, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    assert early_main(train_argv(tiny_cub_root, run)) == 2
    assert re.search("last.pt .*corrupt or not a checkpoint", capsys.readouterr().err)
    assert early_main(train_argv(tiny_cub_root, tmp_path / "empty", "--eval_only")) == 2
    assert "--eval_only found no checkpoint" in capsys.readouterr().err


def test_unwritable_snapshot_dir(tiny_cub_root, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert early_main(train_argv(tiny_cub_root, tmp_path / "file" / "run")) == 2
    assert "cannot write to --snapshot_dir" in capsys.readouterr().err


@pytest.mark.distributed
def test_failing_worker_does_not_hang_the_others(tiny_cub_root, tmp_path):
    """Rank 1 raises in its 2nd training step; rank 0 must not wait forever in the gradient all-reduce."""
    script = tmp_path / "faulty_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch
        import bgmask.run.fit as fit
        sys.path.insert(0, {str(REPO)!r})
        real = fit.build_criterion
        def faulty(*args):
            crit, calls = real(*args), [0]
            def loss(logits, targets):
                calls[0] += 1
                if os.environ["RANK"] == "1" and calls[0] == 2:
                    raise RuntimeError("injected fault on rank 1")
                return crit(logits, targets)
            return loss
        fit.build_criterion = faulty
        import importlib.util
        spec = importlib.util.spec_from_file_location("t", {str(REPO / "early_masking_and_baseline/train.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.exit(module.main(sys.argv[1:]))
    """))
    argv = train_argv(tiny_cub_root, tmp_path / "run", "--epochs", "2", "--device", "cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "injected fault on rank 1" in proc.stdout + proc.stderr


def test_check_command_summarises_and_fails_clearly(tiny_cub_copy, capsys):
    assert check_main([str(tiny_cub_copy.parent)]) == 0  # the parent of CUB_200_2011 is accepted too
    out = capsys.readouterr().out
    assert "24 images, 4 classes, 12 train / 12 test" in out and "OK" in out
    next((tiny_cub_copy / "images").rglob("*.jpg")).unlink()
    assert check_main([str(tiny_cub_copy)]) == 1
    assert "1 of 24 image files" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ property tests
@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(1, 10**6), st.text(alphabet="abcXYZ019._/-", min_size=1, max_size=20),
                       min_size=1, max_size=30))
def test_index_parser_roundtrip(tmp_path_factory, entries):
    path = tmp_path_factory.mktemp("idx") / "images.txt"
    lines = [f"{k} {v}" for k, v in entries.items()]
    path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is tolerated
    parsed = parse_index_file(path, 2)
    assert parsed == {k: [v] for k, v in entries.items()}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=8), st.integers(0, 7))
def test_index_parser_rejects_wrong_field_counts_with_line_number(tmp_path_factory, extra_fields, bad_line):
    path = tmp_path_factory.mktemp("idx") / "labels.txt"
    lines = [f"{i + 1} {i % 3}" for i in range(len(extra_fields))]
    bad_line = bad_line % len(lines)
    lines[bad_line] += " x" * extra_fields[bad_line]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"labels.txt:{bad_line + 1}: expected 2"):
        parse_index_file(path, 2)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 16), st.integers(1, 16), st.integers(0, 2**31 - 1))
def test_mask_to_feature_grid_properties(h, w, gh, gw, seed):
    mask = torch.from_numpy(np.random.default_rng(seed).random((2, h, w)) > 0.5)
    grid = mask_to_feature_grid(mask, (gh, gw))
    assert grid.shape == (2, 1, gh, gw) and set(grid.unique().tolist()) <= {0.0, 1.0}
    # every grid cell copies the input pixel under its centre (nearest-exact); at an exact tie between two pixels
    # float rounding may pick either, so both are accepted there
    def candidates(n_in, n_out):
        centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out
        return [(centre + d).floor().long().clamp(0, n_in - 1) for d in (-1e-6, 1e-6)]

    ok = torch.zeros(2, gh, gw, dtype=torch.bool)
    for ys in candidates(h, gh):
        for xs in candidates(w, gw):
            ok |= grid[:, 0] == mask[:, ys][:, :, xs].float()
    assert ok.all()
    assert torch.equal(mask_to_feature_grid(torch.ones(1, h, w), (gh, gw)), torch.ones(1, 1, gh, gw))


def test_results_json_counts_skipped_waterbirds_files(tiny_cub_copy, tmp_path):
    wb = tiny_cub_copy / "waterbird_complete95_forest2water2"
    victims = sorted(wb.rglob("*.jpg"))
    test_ids = {line.split()[0] for line in (tiny_cub_copy / "train_test_split.txt").read_text().splitlines()
                if line.split()[1] == "0"}
    removed = [p for p in victims if p.stem.rsplit("_", 1)[-1] in test_ids][:3]
    for p in removed:
        p.unlink()
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="3 of 12 image files"):
        assert early_main(train_argv(tiny_cub_copy, run, "--epochs", "1")) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["waterbirds"]["num_images"] == 9 and results["waterbirds"]["skipped_missing_files"] == 3
    assert results["cub_test"]["num_images"] == 12
