"""The shape of the library: declared import layers (import-linter), module sizes, and the three axes as
registries, each proven by a toy written in one file that trains through the unchanged trainer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bgmask import benchmarks, cli
from bgmask.benchmarks.cub import CUBOptions, WaterbirdsFolders
from bgmask.config import TrainConfig
from bgmask.data.masks import write_gt_masked_folders
from bgmask.errors import ConfigError
from bgmask.models import ModelSpec, create_classifier
from bgmask.models.backbones import adapter_for, arch_layout
from tests.test_classifier import train_argv
from tests.toy_backbone import GridNetAdapter
from tests.toy_benchmark import genera
from tests.toy_tokens import TokenNetAdapter

REPO = Path(__file__).resolve().parents[1]
LARGE_MODULES = {"data/synthetic.py"}  # the synthetic benchmark's generator: one long, linear recipe


def test_the_import_layers_hold():
    """pyproject.toml's contracts: no module imports a layer above its own, benchmarks and strategies know
    nothing of each other or of the run's phases (which also rules out import cycles between them)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_library_module_is_longer_than_350_lines():
    lengths = {str(p.relative_to(REPO / "bgmask")): len(p.read_text().splitlines())
               for p in (REPO / "bgmask").rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 350 and name not in LARGE_MODULES} == {}


def test_every_module_of_the_package_is_a_registered_benchmark():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(benchmarks.__path__)} - {"base"}
    assert {benchmarks.get(n).__module__.rsplit(".", 1)[1] for n in benchmarks.names()} >= modules
    with pytest.raises(ConfigError, match="unknown --dataset 'nope'"):
        benchmarks.get("nope")


def test_a_benchmark_in_one_file_trains_and_is_scored_per_group(tiny_cub_root, tmp_path, capsys):
    """CUB re-labelled into genera: every strategy that its data allows trains on it, and the test set is scored
    per species (its groups) with the worst one reported."""
    genus, genus_names, species = genera(tiny_cub_root)
    test_labels = np.array([int(line.split()[1]) - 1 for line, split in zip(
        (tiny_cub_root / "image_class_labels.txt").read_text().splitlines(),
        (tiny_cub_root / "train_test_split.txt").read_text().splitlines()) if split.split()[1] == "0"])
    for entry, flags in (("none", []), ("late", ["--mask_source", "gt"])):
        run = tmp_path / entry
        argv = train_argv(tiny_cub_root, run, "--dataset", "cub_genera", "--epochs", "1", "--diagnostics", "none",
                          *flags)
        assert cli.main(["none", "early", "late"], ["--masking", entry, *argv]) == 0
        out = json.loads((run / "results.json").read_text())
        assert out["dataset"] == "cub_genera" and out["num_classes"] == len(genus_names)
        test = out["test"]
        assert test["num_images"] == len(test_labels)
        assert {name: g["num_images"] for name, g in test["groups"].items()} == \
            {species[c]: int((test_labels == c).sum()) for c in np.unique(test_labels)}
        assert test["worst_group"] == min(g["top1"] for g in test["groups"].values())
        assert sum(g["top1"] * g["num_images"] for g in test["groups"].values()) / 100 == pytest.approx(
            test["correct"])
        assert "cub_test" not in out and "waterbirds" not in out
    assert len(genus) == len(species)
    early = ["--masking", "early", *train_argv(tiny_cub_root, tmp_path / "early", "--dataset", "cub_genera")]
    assert cli.main(["none", "early", "late"], early) == 2
    assert "cub_genera has original images" in capsys.readouterr().err
    # its own options are flags and args.yaml keys; the cub benchmark's folders are not (refused when set)
    args = yaml.safe_load((tmp_path / "none" / "args.yaml").read_text())
    assert args["genera_image_sub_path"] == "images" and not {"image_sub_path_train", "skip_ood_eval"} & set(args)
    for dataset, flag, owner in (("cub_genera", "--skip_ood_eval", "cub"),
                                 ("cub", "--genera_image_sub_path=x", "cub_genera")):
        argv = train_argv(tiny_cub_root, tmp_path / "refused", "--dataset", dataset, flag)
        assert cli.main(["none"], argv) == 2
        assert f"does not use {flag.split('=')[0]} ({owner})" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_a_run_folder_written_before_benchmarks_owned_their_options_still_reads(tmp_path):
    """args.yaml of older runs held every benchmark's folders (a waterbirds run's the cub folders too, early
    masking's resolved to the masked ones): they are dropped, the run's own are kept."""
    old = {**TrainConfig(benchmark_options=CUBOptions()).flat(), "dataset": "waterbirds", "data_path": "d",
           "image_sub_path_train": "images_masked", "ood_image_sub_path": "wb_masked", "masking": "none"}
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=r"--dataset waterbirds does not use --image_sub_path_train \(cub\)"):
        cli.parse_config(["none", "late"], ["--config", str(tmp_path / "args.yaml")])
    cfg, _ = cli.parse_config(["none", "late"], [], settings=cli.saved_settings(tmp_path / "args.yaml"))
    assert type(cfg.benchmark_options) is WaterbirdsFolders and cfg.benchmark_options.ood_image_sub_path == "wb_masked"
    assert "image_sub_path_train" not in cfg.flat()
    # a config built in Python with another benchmark's options is refused, not read as this one's
    with pytest.raises(ConfigError, match="holds CUBOptions settings; --dataset waterbirds takes WaterbirdsFolders"):
        benchmarks.resolve_config(TrainConfig(benchmark_options=CUBOptions()), benchmarks.get("waterbirds")(),
                                  benchmarks.DataNeeds())


def test_a_backbone_family_in_one_file_is_served_by_its_adapter():
    clf = create_classifier(ModelSpec(arch="toy_gridnet", num_classes=3))
    assert isinstance(clf.adapter, GridNetAdapter) and arch_layout("toy_gridnet") == "NCHW"
    assert isinstance(adapter_for(clf.backbone), GridNetAdapter)
    import torch

    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(clf.pool(clf.features(x)), clf.backbone(x))  # the adapter's max pooling, not timm's


@pytest.mark.slow
def test_a_backbone_family_in_one_file_trains_with_every_strategy(tiny_cub_root, tmp_path):
    root = tmp_path / "CUB_200_2011"
    shutil.copytree(tiny_cub_root, root)
    write_gt_masked_folders(root, progress=False)
    for masking, flags in (("none", []), ("early", []), ("late", ["--mask_source", "gt"]),
                           ("late", ["--mask_source", "gt", "--fm_second_last_block"])):
        run = tmp_path / f"{masking}{len(flags)}"
        argv = ["--masking", masking, *train_argv(root, run, "--model_arch", "toy_gridnet", "--epochs", "1"), *flags]
        assert cli.main(["none", "early", "late"], argv) == 0
        out = json.loads((run / "results.json").read_text())
        assert out["model_arch"] == "toy_gridnet" and out["waterbirds"]["num_images"] > 0
        diagnostics = out["diagnostics"]
        assert diagnostics["attribution"] == "Grad-CAM on the pooled feature map", diagnostics
        assert 0 <= diagnostics["fg_attribution"] <= 1 and diagnostics["fg_attribution_images"] == 12


def test_every_error_of_the_library_is_defined_in_errors_py():
    """One home for errors: a module raising the CSV benchmark's DatasetError imports bgmask.errors, not the CUB
    reader."""
    error_class = re.compile(r"^class \w+\((\w+\.)?\w*(Error|Exception|Failure|Backbone)\b")
    elsewhere = [f"{p.relative_to(REPO)}: {line}" for p in sorted((REPO / "bgmask").rglob("*.py"))
                 if p.name != "errors.py" for line in p.read_text().splitlines() if error_class.match(line)]
    assert elsewhere == []
    assert len([line for line in (REPO / "bgmask" / "errors.py").read_text().splitlines()
                if error_class.match(line)]) >= 12


def test_a_token_family_in_one_file_pools_masks_and_maps_its_own_layout():
    """toy_tokennet keeps its summary token last: the heads, the mask and the feature map read the adapter's
    layout, not timm's ViT one (CLS first)."""
    import torch

    clf = create_classifier(ModelSpec(arch="toy_tokennet", num_classes=3, image_size=32))
    adapter = clf.adapter
    assert isinstance(adapter, TokenNetAdapter) and arch_layout("toy_tokennet") == "tokens"
    assert clf.head_kind == "cls_mean" and clf.head.in_features == 32  # concat(summary, mean of the 16 patches)
    feats = clf.features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 17, 16)
    assert torch.equal(clf.pool(feats, kind="cls"), feats[:, -1])
    assert torch.allclose(clf.pool(feats, kind="mean"), feats[:, :-1].mean(1))
    masks = torch.zeros(2, 32, 32)
    masks[:, :8, :8] = 1  # the bird: the top-left patch
    masked = adapter.mask(feats, masks)
    assert torch.equal(masked[:, -1], feats[:, -1]) and torch.equal(masked[:, 0], feats[:, 0])  # summary, bird kept
    assert (masked[:, 1:-1] == 0).all()
    assert torch.allclose(clf.pool(feats, masks, kind="masked_mean"), feats[:, 0])  # the bird's one token
    assert adapter.feature_map(feats).shape == (2, 16, 4, 4)
    assert torch.equal(adapter.feature_map(feats)[:, :, 0, 1], feats[:, 1])  # row-major on the grid


def test_nothing_outside_the_adapters_asks_which_layout_a_backbone_has():
    """The adapters (bgmask/models/backbones.py) do what a layout decides; the rest of the library asks them to, never
    "is this a ViT?" (a layout name compared, a model name read for its family)."""
    question = re.compile(r"""is_vit|arch_layout\(|\.startswith\(["']vit|["']vit["'] in |"""
                          r"""[=!]=\s*["'](tokens|NHWC|NCHW)["']|["'](tokens|NHWC|NCHW)["']\s*[=!]=|"""
                          r"""\bin\s*\(?["'](tokens|NHWC|NCHW)["']""")
    sites = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in sorted((REPO / "bgmask").rglob("*.py"))
             if p.name != "backbones.py" for i, line in enumerate(p.read_text().splitlines(), 1)
             if question.search(line)]
    assert sites == []


@pytest.mark.slow
def test_a_token_family_in_one_file_trains_with_every_strategy_probe_heads_and_diagnostics(tiny_cub_root, twin_root,
                                                                                              tmp_path):
    root = tmp_path / "CUB_200_2011"
    shutil.copytree(tiny_cub_root, root)
    write_gt_masked_folders(root, progress=False)
    strategies = ["none", "early", "late", "dfr", "groupdro"]
    gt = ["--mask_source", "gt"]
    probes = ["--freeze_backbone", "--probe_heads", "cls,mean,cls_mean,late:mean,late:masked_mean,late:cls_mean"]
    for masking, flags in (("none", []), ("early", ["--patch_tokens_only"]), ("late", gt),
                           ("late", [*gt, "--fm_second_last_block", "--class_token_only"]),
                           ("late", [*gt, *probes])):
        run = tmp_path / f"{masking}{len(flags)}"
        argv = ["--masking", masking, *train_argv(root, run, "--model_arch", "toy_tokennet", "--epochs", "1"), *flags]
        assert cli.main(strategies, argv) == 0
        out = json.loads((run / "results.json").read_text())
        assert out["model_arch"] == "toy_tokennet" and out["waterbirds"]["num_images"] > 0
        diagnostics = out["diagnostics"]
        assert diagnostics["attribution"] == "|gradient x input|", diagnostics
        assert 0 <= diagnostics["fg_attribution"] <= 1 and diagnostics["fg_attribution_images"] == 12
        if "--probe_heads" in flags:
            assert set(out["probes"]) == {"cls", "mean", "cls_mean", "late:mean", "late:masked_mean",
                                          "late:cls_mean"}
    wb = ["--dataset", "waterbirds", "--diagnostics", "none", "--model_arch", "toy_tokennet", "--freeze_backbone"]
    base, dfr = tmp_path / "wb_base", tmp_path / "wb_dfr"
    assert cli.main(strategies, [*train_argv(twin_root, base, *wb), "--masking", "groupdro"]) == 0
    assert cli.main(strategies, [*train_argv(twin_root, dfr, *wb), "--masking", "dfr", "--dfr_from", str(base),
                                 "--dfr_retrains", "2"]) == 0
    for run in (base, dfr):
        assert "worst_group" in json.loads((run / "results.json").read_text())["test"]


@pytest.mark.parametrize("entry", [["-m", "bgmask"], ["early_masking_and_baseline/train.py"],
                                   ["late_masking/train.py"]])
def test_every_entry_points_help_prints_every_flag(entry):
    """--help formats every help text (argparse reads '%' as a format character) and lists the benchmarks."""
    done = subprocess.run([sys.executable, *entry, "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    text = " ".join(done.stdout.split())  # help lines wrap at the terminal's width
    assert "--dataset" in text and "waterbirds" in text and "~30% more compute" in text


def test_every_file_the_docs_cite_exists():
    """A path of the repository named in README.md or docs (tests, modules, scripts, configs) exists; placeholders
    (NAME, MODEL) aside."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("*/README.md"))]
    pattern = re.compile(r"(?<![\w/.-])((?:tests|bgmask|scripts|configs)/[\w./-]+\.(?:py|sh|yaml|sbatch))")
    cited = {(doc, path) for doc in docs for path in pattern.findall(doc.read_text())
             if not re.search(r"\b[A-Z]{3,}\b", path)}  # NAME, MODEL: placeholders
    assert len(cited) > 30
    missing = [(str(doc.relative_to(REPO)), path) for doc, path in cited
               if not (REPO / path).exists() and not (doc.parent / path).exists()]  # from the root or the doc's folder
    assert sorted(missing) == []
