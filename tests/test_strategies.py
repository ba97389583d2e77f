"""Strategies are modules: the registry, and a toy strategy defined in one file that trains and is collected."""

from __future__ import annotations

import json
import pkgutil

import pytest
import torch

import bgmask.strategies
from bgmask import cli, results, strategies
from bgmask.errors import ConfigError
from bgmask.models import ModelSpec, create_classifier
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
    header, table = results.build_table([results.load_run(run)])
    assert "noise background CUB" in header
    assert table[0][header.index("noise background CUB")] != "–"
