"""What the figures show, checked on their plans (bgmask.reporting.figures, bgmask.reporting.gallery): the chance
line, one colour per strategy in every figure, "synthetic" in the titles exactly when the data is, the attribution
gallery's rows."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from bgmask.reporting.figures import diagnostics_plan, group_plan, results_plan, strategy_colour
from bgmask.reporting.gallery import gallery_plan
from bgmask.reporting.outputs import write_group_outputs, write_outputs
from bgmask.reporting.runs import RunResult, is_synthetic_cub, load_runs, weights_label
from tests.test_results import fake_run

VIEWS = ("only_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand")


def diagnostics(correct: int = 20, images: int = 400) -> dict:
    views = {v: {"top1": 100 * correct / images, "correct": correct, "num_images": images} for v in VIEWS}
    return {**views, "bg_gap": 0.0, "fg_attribution": 0.2, "attribution": "Grad-CAM on the pooled feature map"}


def run(tmp_path, name, masking="none", data=None, args=(), gallery=None, **results):
    """A finished run folder (tests/test_results.py's), its args.yaml naming ``data`` and ``args``; ``gallery``: the
    contents of its attribution_gallery.pt."""
    folder = fake_run(tmp_path, name, masking, **results)
    merged = {**yaml.safe_load((folder / "args.yaml").read_text()), "data_path": str(data) if data else None,
              **dict(args)}
    (folder / "args.yaml").write_text(yaml.safe_dump(merged))
    if gallery is not None:
        torch.save(gallery, folder / "attribution_gallery.pt")
    return folder


def gallery(paths, predictions=True, heads=()):
    g = {"paths": list(paths), "maps": torch.rand(len(paths), 8, 8).half(), "index": list(range(len(paths)))}
    if predictions:
        g |= {"labels": [0] * len(paths), "predictions": [1] * len(paths)}
    if heads:
        g["heads"] = {h: {k: g[k] for k in ("maps", "labels", "predictions")} for h in heads}
    return g


def group_run(masking, seed=0, balance="", synthetic=False, worst=0.0):
    groups = {f"y{c}_place{p}": {"top1": 50.0, "num_images": 10, "correct": 5} for c in (0, 1) for p in (0, 1)}
    test = {"groups": groups, "worst_group": worst, "adjusted_average": 60.0, "average": 55.0,
            "intervals": {"worst_group": (0.0, 27.8), "adjusted_average": (40.0, 78.0), "average": (35.0, 73.0)}}
    return RunResult(f"missing/{masking}{balance}{seed}", "convnext_atto", "frozen", "-", masking, {"test": test},
                     dataset="waterbirds", seed=seed, balance=balance, synthetic=synthetic, weights="random init")


def all_titles(plan) -> str:
    return " ".join([plan.title, *(p.title for p in plan.panels)])


@pytest.fixture
def paper_runs(tmp_path, tiny_cub_root):
    """Baseline, early and late masking on the synthetic benchmark (20 classes recorded), with diagnostics."""
    runs = []
    for masking in ("late", "none", "early"):
        folder = run(tmp_path, masking, masking, data=tiny_cub_root, num_classes=20, diagnostics=diagnostics())
        runs += load_runs(folder)
    return runs


def test_the_chance_line_is_100_over_the_number_of_classes(paper_runs, tmp_path, tiny_cub_root):
    for plan in (results_plan(paper_runs), diagnostics_plan(paper_runs)):
        assert [p.chance for p in plan.panels] == [100 / 20]
    # no num_classes in results.json: counted in the data's classes.txt (the tiny benchmark has 4)
    older = load_runs(run(tmp_path, "older", data=tiny_cub_root, diagnostics=diagnostics()))
    assert results_plan(older).panels[0].chance == 100 / 4 == diagnostics_plan(older).panels[0].chance
    assert [p.chance for p in group_plan([group_run("none"), group_run("early")]).panels] == [100 / 2]


def test_a_diagnostics_bar_has_the_wilson_interval_of_its_view(tmp_path):
    entry = load_runs(run(tmp_path, "r", cub=(100, 400), diagnostics=diagnostics(correct=50, images=100)))
    bar = diagnostics_plan(entry).panels[0].bars[0]
    assert bar.value == 50 and bar.error == pytest.approx((50 - 40.38, 59.62 - 50), abs=0.01)
    top1_only = diagnostics(correct=50, images=100)
    top1_only["only_fg"] = {"top1": 50.0}  # an older results.json: the view over the run's 400 CUB test images
    bar = diagnostics_plan(load_runs(run(tmp_path, "old", cub=(100, 400), diagnostics=top1_only))).panels[0].bars[0]
    assert 4.5 < bar.error[0] < 5.0  # 200/400: +-4.9


def test_every_figure_gives_a_strategy_one_colour_and_strategies_different_ones(paper_runs, tmp_path):
    seen: dict[str, set] = {}
    for plan in (results_plan(paper_runs), diagnostics_plan(paper_runs),
                 group_plan([group_run(m) for m in ("none", "early", "late")])):
        for bar in (b for p in plan.panels for b in p.bars):
            seen.setdefault(bar.strategy, set()).add(bar.colour)
    for row in gallery_plan(with_gallery(paper_runs, tmp_path)).rows:
        seen.setdefault(row.strategy, set()).add(row.colour)
    assert set(seen) == {"none", "early", "late"}
    assert all(colours == {strategy_colour(s)} for s, colours in seen.items())
    keys = ["none", "early", "late", "late:second_last", "late:area", "dfr", "groupdro", "none+group reweighting",
            "none+class-balanced sampler", "late:fg_mean"]
    assert len({strategy_colour(k) for k in keys}) == len(keys)
    bars = results_plan(paper_runs).panels[0].bars
    assert {b.style for b in bars} == {"solid", "hatched"}  # CUB vs Waterbirds: told apart by hatching, not colour


def test_titles_say_synthetic_for_the_synthetic_benchmark_and_never_for_real_data(paper_runs, tmp_path,
                                                                                   tiny_cub_root):
    plans = [results_plan(paper_runs), diagnostics_plan(paper_runs), group_plan([group_run("none", synthetic=True)])]
    assert all("synthetic benchmark" in plan.title for plan in plans)
    real = tmp_path / "real" / "CUB_200_2011"
    shutil.copytree(tiny_cub_root, real, ignore=shutil.ignore_patterns("images", "segmentations", "waterbird*"))
    (real / "habitats.txt").unlink()
    lookalike = tmp_path / "lookalike" / "CUB_200_2011"  # a user's own habitats.txt is no generator's
    shutil.copytree(real, lookalike)
    (lookalike / "habitats.txt").write_text("1 coniferous forest\n")
    assert is_synthetic_cub(tiny_cub_root) and not is_synthetic_cub(real) and not is_synthetic_cub(lookalike)
    assert not is_synthetic_cub(tmp_path / "nowhere")
    entries = load_runs(run(tmp_path, "r", data=real, diagnostics=diagnostics()))
    for plan in (results_plan(entries), diagnostics_plan(entries), group_plan([group_run("none")])):
        assert "synthetic" not in all_titles(plan)
    torch.save(gallery(["001.A/a.jpg"]), tmp_path / "r" / "attribution_gallery.pt")
    assert "synthetic" not in gallery_plan(entries).title
    assert "synthetic benchmark" in gallery_plan(with_gallery(paper_runs, tmp_path)).title


def with_gallery(runs, tmp_path):
    """The runs of ``paper_runs``, each with a gallery file."""
    for entry in runs:
        torch.save(gallery(["001.A/a.jpg"]), tmp_path / entry.masking / "attribution_gallery.pt")
    return runs


def test_the_weights_are_named_as_they_were_loaded(tmp_path, tiny_cub_root):
    weights = tmp_path / "cache" / "vit-56px-abc"
    weights.mkdir(parents=True)
    (weights / "model.safetensors").write_bytes(b"")
    (weights / "config.json").write_text(json.dumps({"pretrained_cfg": {"tag": "bgmask_synthetic"}}))
    assert weights_label({"pretrained_path": str(weights / "model.safetensors")}) == "synthetic-pretrained"
    assert weights_label({"start_weights": "DEFAULT"}) == "hub-pretrained"
    assert weights_label({}) == "random init"
    entries = load_runs(run(tmp_path, "vit", arch="vit_small_patch14_dinov2", data=tiny_cub_root,
                            args={"pretrained_path": str(weights / "model.safetensors")}))
    title = results_plan(entries).panels[0].title
    assert "synthetic-pretrained" in title and "dinov2" not in title and "vit_small_patch14" in title


def test_the_group_figure_starts_with_the_baseline_and_keeps_every_bar(tmp_path):
    runs = [group_run(m, seed=s) for m in ("late", "groupdro", "none") for s in (0, 1)]
    runs += [group_run("none", balance="group reweighting")]
    panel = group_plan(runs).panels[0]
    assert [label for _, label in panel.ticks][:2] == ["baseline", "baseline + group\nreweighting"]
    assert panel.bars[0].strategy == "none" and panel.bars[0].value == 0.0  # a 0 % bar is drawn (and labelled)
    assert all(b.value is not None for b in panel.bars)
    assert " - " not in panel.title and "(-)" not in panel.title and not panel.title.rstrip().endswith("-")
    assert "mean of 2 seeds" in panel.title


def test_the_gallery_has_every_run_in_one_order_in_every_regime(tmp_path, tiny_cub_root):
    paths = ["001.A/a.jpg", "002.B/b.jpg"]
    entries = []
    for regime, args in (("fine-tuned", {"start_weights": "DEFAULT"}), ("frozen", {"freeze_backbone": True})):
        for masking in ("late", "early", "none"):  # written in another order than the table's
            folder = run(tmp_path, f"{regime}_{masking}", masking, data=tiny_cub_root, args=args,
                         gallery=gallery(paths), diagnostics=diagnostics())
            entries += load_runs(folder)
    metrics = {"cub_test": {"top1": 50.0, "correct": 200, "num_images": 400}, "waterbirds": {"top1": 25.0}}
    probes = {"mean": metrics, "late:mean": metrics}
    vit = {"arch": "vit_small_patch14_dinov2", "data": tiny_cub_root, "args": {"freeze_backbone": True},
           "probes": probes}
    entries += load_runs(run(tmp_path, "probes", "late", gallery=gallery(paths, heads=probes), **vit))
    entries += load_runs(run(tmp_path, "old_probes", "early", gallery=gallery(paths, predictions=False), **vit))
    plan = gallery_plan(entries)
    assert sorted(id(r.run) for r in plan.rows) == sorted(id(e) for e in entries)  # every run of the table
    order = [(r.run.regime, r.run.model_arch, r.run.head, r.strategy) for r in plan.rows]
    assert [o[3] for o in order if o[0] == "fine-tuned"] == ["none", "early", "late"]
    assert [o[3] for o in order if o[0] == "frozen" and o[1] == "convnext_atto"] == ["none", "early", "late"]
    assert order == sorted(order, key=lambda o: (o[0], o[1], o[2], ["none", "early", "late"].index(o[3])))
    rows = {(r.run.run_dir.split("/")[-1], r.run.probe_head): r for r in plan.rows}
    assert set(rows[("probes", "late:mean")].maps) == set(paths)  # every head's maps are found
    assert rows[("probes", "late:mean")].predicted == {p: 1 for p in paths}
    assert not rows[("old_probes", "mean")].predicted and rows[("old_probes", "late:mean")].note  # an older file
    assert plan.images == paths and plan.true == {p: 0 for p in paths}


def test_the_figures_are_written(paper_runs, tmp_path):
    with_gallery(paper_runs, tmp_path)
    out = write_outputs(paper_runs, tmp_path / "out")
    out |= write_group_outputs([group_run("none"), group_run("early", seed=1)], tmp_path / "out")
    assert all(out[k].stat().st_size > 0 for k in ("png", "diagnostics_png", "gallery_png", "group_png"))
