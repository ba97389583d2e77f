"""Strategies are modules: the registry, and a toy strategy defined in one file that trains and is collected."""

from __future__ import annotations

import dataclasses
import json
import pkgutil

import pytest
import torch

import bgmask.strategies
from bgmask import cli, strategies
from bgmask.errors import ConfigError
from bgmask.models import ModelSpec, create_classifier
from bgmask.reporting import results
from bgmask.reporting.runs import load_run
from tests.test_classifier import train_argv
from tests.toy_strategy import NoiseBackground, NoiseBackgroundModel


def test_every_module_of_the_package_is_a_registered_strategy():
    modules = {m.name for m in pkgutil.iter_modules(bgmask.strategies.__path__)} - {"base"}
    builtin = ("none", "early", "late", "dfr", "groupdro")
    assert {strategies.get(n).__module__.rsplit(".", 1)[1] for n in builtin} == modules
    with pytest.raises(ConfigError, match="unknown masking strategy 'nope'"):
        strategies.get("nope")


def test_noise_background_model_keeps_the_bird_and_replaces_the_background():
    clf = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3)).eval()
    model = NoiseBackgroundModel(clf, std=1.0).eval()
    images = torch.randn(2, 3, 32, 32)
    ones, zeros = torch.ones(2, 32, 32), torch.zeros(2, 32, 32)
    assert torch.allclose(model(images, ones), clf(images))
    assert torch.allclose(model(images, zeros), model(torch.randn(2, 3, 32, 32), zeros))  # image content is gone


def test_a_strategy_in_one_file_trains_and_is_collected(tiny_cub_root, tmp_path):
    run = tmp_path / "noise"
    argv = train_argv(tiny_cub_root, run, "--epochs", "1", "--noise_std", "0.5")
    assert cli.main([NoiseBackground.name], argv) == 0
    out = json.loads((run / "results.json").read_text())
    assert out["masking"] == "noise_background" and out["noise_std"] == 0.5
    assert out["cub_test"]["num_images"] == 12 and out["waterbirds"]["num_images"] > 0
    assert "no diagnostics input" in out["diagnostics"]["skipped"]
    header, table = results.build_table([load_run(run)])
    assert "noise background CUB" in header
    assert table[0][header.index("noise background CUB")] != "–"


def test_a_run_started_from_python_trains_on_what_the_command_line_would(tiny_cub_root, tmp_path):
    """``run(cfg, strategy)`` resolves the benchmark's folders itself: early masking called from Python reads the
    masked image folders, as ``--masking early`` on the command line does (and --head_init auto is resolved)."""
    import shutil

    from bgmask.benchmarks.cub import CUBOptions
    from bgmask.config import TrainConfig
    from bgmask.data.masks import write_gt_masked_folders
    from bgmask.run.pipeline import run

    root = tmp_path / "CUB_200_2011"
    shutil.copytree(tiny_cub_root, root)
    write_gt_masked_folders(root, progress=False)
    argv = train_argv(root, tmp_path / "cli", "--masking", "early", "--epochs", "1", "--diagnostics", "none")
    assert cli.main(["none", "early", "late"], argv) == 0
    cfg, _ = cli.parse_config(["none", "early", "late"], argv)
    # the defaults a config built in Python starts from: no benchmark options (their defaults), --head_init auto
    folder_flags = {f.name for f in dataclasses.fields(CUBOptions)}
    flat = {**{k: v for k, v in cfg.flat().items() if k not in folder_flags}, "snapshot_dir": str(tmp_path / "python"),
            "head_init": "auto"}
    out = run(TrainConfig.from_flat(flat), strategies.get("early")())
    by_cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    folders = ("image_sub_path_train", "image_sub_path_test", "ood_image_sub_path")
    assert {k: out[k] for k in folders} == {k: by_cli[k] for k in folders}
    assert out["image_sub_path_train"] != "images" and out["head_init"] == by_cli["head_init"] == "upstream"


def test_a_strategy_names_its_run_phase_and_an_unknown_one_is_refused_before_anything_is_built(tiny_cub_root,
                                                                                                tmp_path):
    from bgmask.run.pipeline import PHASES, run

    class Distilled(strategies.get("none")):
        phase = "distil"

    cfg, _ = cli.parse_config(["none"], train_argv(tiny_cub_root, tmp_path / "run"))
    with pytest.raises(ConfigError, match="phase 'distil'; phases: train, refit_last_layer"):
        run(cfg, Distilled())
    assert not (tmp_path / "run").exists()
    assert {strategies.get(n).phase for n in strategies.names()} <= set(PHASES)
    assert strategies.get("dfr").phase == "refit_last_layer" and strategies.get("groupdro").phase == "train"
