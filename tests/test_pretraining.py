"""Synthetic pretraining: a corpus of other species on species-independent backgrounds, timm-format weights that load
through --pretrained_path, deterministic for a seed, cached and built atomically."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from bgmask import cli
from bgmask.data.synthetic import SyntheticConfig, appearance, balanced_habitats, disjoint_species, make_species
from bgmask.models import ModelSpec, create_classifier
from bgmask.pretraining import cache as pretrain_cache
from bgmask.pretraining import pretrain

# 4 species x 20 images at 32 px: 16 train images per species (2 per habitat), 4 test images.
TINY_CORPUS = pretrain.Corpus(num_classes=4, images_per_class=20, image_size=32, seed=7)
RECIPE = pretrain.Recipe("convnext_atto", 32, epochs=1, lr=5e-4, batch_size=16)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_synthetic.py"
TINY_FLAGS = ["--num_classes", "4", "--images_per_class", "20", "--corpus_image_size", "32", "--corpus_seed", "7",
              "--image_size", "32", "--epochs", "1", "--batch_size", "16"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BGMASK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def script_main():
    return runpy.run_path(str(SCRIPT), run_name="pretrain_synthetic")["main"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corpus_species_are_none_of_the_benchmarks():
    benchmark = make_species(SyntheticConfig())
    species = pretrain.Corpus().species()
    looks = {appearance(sp) for sp in species}
    assert len(species) == 48 and len(looks) == 48  # broad: more species than the benchmark's 20, all distinct
    assert not looks & {appearance(sp) for sp in benchmark}
    assert not {sp.name for sp in species} & {sp.name for sp in benchmark}
    assert len({sp.genus for sp in species}) > len({sp.genus for sp in benchmark})
    # With the benchmark's own seed every candidate of the benchmark's table is one of its species: all are dropped.
    same_seed = disjoint_species(SyntheticConfig(), 10, seed=0)
    assert not {appearance(sp) for sp in same_seed} & {appearance(sp) for sp in benchmark}
    with pytest.raises(ValueError, match="ask for fewer"):
        disjoint_species(SyntheticConfig(), 199, seed=1000)


def test_corpus_backgrounds_are_independent_of_species(cache):
    root = pretrain.build_corpus(TINY_CORPUS, log=lambda message: None)
    info = json.loads((root.parent / "corpus.json").read_text())
    train, test = np.array(info["habitat_counts"]["train"]), np.array(info["habitat_counts"]["test"])
    assert train.shape == (4, 8) and (train == 2).all()  # every species on every habitat, equally often
    assert (test.sum(1) == 4).all() and test.max() == 1  # 4 test images per species on 4 different habitats
    assert info["images"] == 80 and info["train_images"] == 64
    assert root.parent.parent == cache / "pretraining_corpus"
    # The draw never looks at the species: the same plan for a class index whatever the species table says.
    config = TINY_CORPUS.config()
    is_train = np.arange(20) < 16
    assert (balanced_habitats(config, 2, is_train) == balanced_habitats(config, 2, is_train)).all()
    assert np.bincount(balanced_habitats(config, 2, is_train)[is_train], minlength=8).tolist() == [2] * 8


@pytest.mark.filterwarnings("ignore:Waterbirds")
def test_weights_load_through_pretrained_path_deterministic_and_cached(cache, tiny_cub_root, tmp_path, monkeypatch):
    messages = []
    path = pretrain.pretrained_weights(RECIPE, TINY_CORPUS, log=messages.append)
    assert path.name == "model.safetensors" and path.parent.parent == cache / "pretrained"
    assert path.parent.name.startswith("convnext_atto-32px-")
    assert not list(path.parent.parent.glob(".*partial*"))
    config = json.loads((path.parent / "config.json").read_text())
    assert config["architecture"] == "convnext_atto" and config["num_classes"] == 0
    assert config["num_features"] == 320 and config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(config["pretrained_cfg"])
    note = config["bgmask"]
    assert note["recipe"]["epochs"] == 1 and note["seconds"]["training"] > 0
    trainer_results = json.loads((path.parent / "pretraining" / "results.json").read_text())["cub_test"]
    assert note["corpus_test_top1"] == trainer_results["top1"] and note["corpus_test_images"] == 16
    # Exactly timm's backbone keys (no head, no prefix); the classifier loads them unchanged.
    saved = load_file(path)
    assert set(saved) == set(timm.create_model("convnext_atto", num_classes=0).state_dict())
    clf = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3, image_size=32, pretrained_path=str(path)))
    assert all(torch.equal(clf.backbone.state_dict()[k], v) for k, v in saved.items())
    assert clf.backbone.weights_source == {"source": "file", "location": str(path), "resampled": None}

    # Cached: a second call trains nothing and leaves the file alone.
    digest, mtime = sha256(path), path.stat().st_mtime_ns
    with monkeypatch.context() as m:
        m.setattr(pretrain, "_train", lambda *a, **k: pytest.fail("retrained a cached backbone"))
        assert pretrain.pretrained_weights(RECIPE, TINY_CORPUS, log=messages.append) == path
    assert path.stat().st_mtime_ns == mtime and messages[-1] == f"cached: {path}"

    # Deterministic for a seed: rebuilt from nothing (corpus included), the same bytes.
    import shutil

    shutil.rmtree(cache)
    assert pretrain.pretrained_weights(RECIPE, TINY_CORPUS, log=messages.append) == path
    assert sha256(path) == digest
    # Whatever determines the weights is in the key.
    assert pretrain.weights_dir(dataclasses.replace(RECIPE, seed=1), TINY_CORPUS) != path.parent
    assert pretrain.weights_dir(RECIPE, dataclasses.replace(TINY_CORPUS, seed=8)) != path.parent
    assert pretrain.weights_dir(dataclasses.replace(RECIPE, lr=1e-3), TINY_CORPUS) != path.parent

    # The classifier trainer takes it through --pretrained_path, as downloaded weights.
    run = tmp_path / "run"
    code = cli.main(["none"], ["--data_path", str(tiny_cub_root), "--snapshot_dir", str(run), "--model_arch",
                               "convnext_atto", "--image_size", "32", "--pretrained_path", str(path), "--epochs", "1",
                               "--batch_size", "8", "--num_workers", "0", "--skip_ood_eval", "--diagnostics", "none"])
    assert code == 0
    assert json.loads((run / "results.json").read_text())["weights"]["source"] == "file"


def test_vit_weights_keep_their_position_embeddings(cache):
    recipe = pretrain.Recipe("vit_small_patch14_dinov2", 42, epochs=1, lr=5e-4, batch_size=16)
    path = pretrain.pretrained_weights(recipe, TINY_CORPUS, log=lambda message: None)
    config = json.loads((path.parent / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 42, 42] and config["model_args"] == {"img_size": 42}
    saved = load_file(path)
    assert saved["pos_embed"].shape == (1, 1 + 3 * 3, 384) and not any(k.startswith("head.") for k in saved)
    same = create_classifier(ModelSpec(arch="vit_small_patch14_dinov2", num_classes=3, image_size=42,
                                       pretrained_path=str(path)))
    assert same.backbone.weights_source["resampled"] is None
    assert all(torch.equal(same.backbone.state_dict()[k], v) for k, v in saved.items())
    larger = create_classifier(ModelSpec(arch="vit_small_patch14_dinov2", num_classes=3, image_size=56,
                                         pretrained_path=str(path)))
    assert larger.backbone.weights_source["resampled"] == "position embeddings 42 px -> 56 px"


def test_the_cache_key_follows_code_not_comments(tmp_path):
    def code(text):
        path = tmp_path / "module.py"
        path.write_text(text)
        return pretrain_cache.code_of(path)

    base = code('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # comment\n')
    assert code('"""Other doc."""\n\n\ndef f(x):\n    # new comment\n    return x + 1\n') == base
    assert code('"""Doc."""\n\ndef f(x):\n    return x + 2\n') != base


def test_the_cache_key_holds_the_thread_count_the_weights_are_trained_with(cache, monkeypatch):
    import bgmask.run.session as session

    monkeypatch.delenv("OMP_NUM_THREADS")
    keys = {}
    for cores in (1, 2):
        monkeypatch.setattr(session.os, "cpu_count", lambda cores=cores: cores)
        keys[cores] = pretrain.weights_key(RECIPE, TINY_CORPUS)
    assert keys[1] != keys[2]  # CPU kernels split reductions by thread: different weights, different entries

    seen = []

    def recording(info, num_workers):
        set_cpu_threads(info, num_workers)
        seen.append(torch.get_num_threads())

    set_cpu_threads = session.set_cpu_threads
    monkeypatch.setattr(session, "set_cpu_threads", recording)
    monkeypatch.setattr(session.os, "cpu_count", lambda: 3)
    try:
        path = pretrain.pretrained_weights(RECIPE, TINY_CORPUS, log=lambda _: None)
    finally:
        torch.set_num_threads(1)
    assert seen == [3] and pretrain.training_threads() == 3
    assert json.loads((path.parent / "config.json").read_text())["bgmask"]["cpu_threads"] == 3


def test_an_interrupted_build_leaves_nothing_that_looks_finished(cache, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "export", fail)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrained_weights(RECIPE, TINY_CORPUS, log=lambda message: None)
    final = pretrain.weights_dir(RECIPE, TINY_CORPUS)
    assert not final.exists() and not list(final.parent.glob(".*partial*"))
    assert (pretrain.corpus_dir(TINY_CORPUS) / "corpus.json").is_file()  # the finished corpus is kept


def test_script_prints_only_the_path(cache, capsys):
    main = script_main()
    assert main(["--print_path", "convnext_atto", *TINY_FLAGS]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = pretrain.weights_dir(RECIPE, TINY_CORPUS) / "model.safetensors"  # the flags make RECIPE
    assert out == [str(expected)] and expected.is_file()


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--arch", "convnext_nope"], "'convnext_nope' is not a timm model"),
    (["--print_path", "convnext_atto", "--arch", "convnext_atto"], "not both"),
    (["--num_classes", "199"], "ask for fewer"),
    (["--images_per_class", "1"], "images_per_class must be >= 2"),
    (["--image_size", "16"], "image size must be >= 32"),
    (["--augmentations", "none"], "invalid choice"),
])
def test_script_refuses_bad_arguments(cache, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        script_main()(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not cache.exists() or not list((cache / "pretrained").glob("*"))  # nothing built
