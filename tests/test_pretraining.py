"""Synthetic pretraining: a corpus of other species on species-independent backgrounds, timm-format weights that load
through --pretrained_path, deterministic and cached."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from bgmask import pretrain
from bgmask.data.cub import CUBIndex
from bgmask.data.synthetic import SyntheticConfig, appearance, make_species
from bgmask.models import ModelSpec, create_classifier

TINY_CORPUS = pretrain.Corpus(num_classes=4, images_per_class=8, image_size=32, seed=7,
                              benchmark=SyntheticConfig(num_classes=20))
RECIPE = pretrain.Recipe("convnext_atto", 32, epochs=1, lr=1e-3, batch_size=8)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BGMASK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_corpus_species_differ_from_the_benchmarks_and_backgrounds_do_not_follow_species(cache):
    benchmark = {appearance(sp) for sp in make_species(SyntheticConfig())}
    species = pretrain.Corpus().species()
    assert len(species) == 48 and len({appearance(sp) for sp in species}) == 48
    assert not benchmark & {appearance(sp) for sp in species}
    config = pretrain.Corpus().config()
    assert config.habitats == 8 and config.bias == pytest.approx(1 / 8)  # every habitat equally likely, any species
    root = pretrain.build_corpus(TINY_CORPUS)
    assert CUBIndex.load(root).num_classes == 4
    places = Counter(row.split(",")[4] for row in (root / "waterbird_complete95_forest2water2/metadata.csv")
                     .read_text().splitlines()[1:])
    assert len(places) > 2


def test_pretrained_weights_load_through_pretrained_path_and_are_cached(cache, capsys):
    path = pretrain.pretrained_weights(RECIPE, TINY_CORPUS)
    config = json.loads((path.parent / "config.json").read_text())
    assert config["architecture"] == "convnext_atto" and config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert path.parent.parent == cache / "pretrained" and not list(path.parent.parent.glob(".*partial*"))
    clf = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3, image_size=32, pretrained_path=str(path)))
    saved = load_file(path)
    assert set(saved) == set(clf.backbone.state_dict())
    assert all(torch.equal(clf.backbone.state_dict()[k], v) for k, v in saved.items())
    assert clf.backbone.weights_source["source"] == "file" and clf.backbone.weights_source["resampled"] is None
    mtime = path.stat().st_mtime_ns
    capsys.readouterr()
    assert pretrain.pretrained_weights(RECIPE, TINY_CORPUS) == path and path.stat().st_mtime_ns == mtime
    assert "cached" in capsys.readouterr().out
    # Deterministic for a seed: rebuilding from nothing gives the same tensors.
    import shutil

    shutil.rmtree(path.parent)
    again = load_file(pretrain.pretrained_weights(RECIPE, TINY_CORPUS))
    assert all(torch.equal(again[k], v) for k, v in saved.items())
    # Another seed is another cache entry.
    import dataclasses

    assert pretrain.weights_dir(dataclasses.replace(RECIPE, seed=1), TINY_CORPUS) != path.parent


def test_script_refuses_bad_arguments(capsys):
    import runpy
    import sys

    argv, sys.argv = sys.argv, ["pretrain_synthetic.py", "--epochs", "0"]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path("scripts/pretrain_synthetic.py", run_name="__main__")
    finally:
        sys.argv = argv
    assert e.value.code == 2 and "--epochs must be >= 1" in capsys.readouterr().err
