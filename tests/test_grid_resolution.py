"""The grid-resolution study: mask downsampling (nearest-exact vs area), how a bird meets a feature grid, the
difference interval, and the study's analysis and driver scripts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from bgmask import cli
from bgmask.data.groups import difference_interval
from bgmask.models import ModelSpec, create_classifier
from bgmask.models.masking import NEAREST, MaskGrid, grid_fractions, grid_statistics, mask_features
from bgmask.models.probes import ProbeHeads
from bgmask.run.model import build_model
from bgmask.strategies.late import LateMaskedClassifier

REPO = Path(__file__).resolve().parents[1]


def half_cell_mask() -> torch.Tensor:
    """8x8, 2x2 grid: cell (0, 0) all bird, cell (0, 1) half bird (its left columns), the bottom row background."""
    mask = torch.zeros(1, 8, 8)
    mask[0, :4, :6] = 1
    return mask


def test_area_downsampling_keeps_a_cell_by_its_bird_share_where_nearest_samples_one_pixel():
    mask = half_cell_mask()
    assert NEAREST(mask, (2, 2)).flatten().tolist() == [1, 0, 0, 0]  # cell (0, 1) samples pixel (2, 6): background
    assert MaskGrid("area", 0.5)(mask, (2, 2)).flatten().tolist() == [1, 1, 0, 0]  # half of it is bird
    assert MaskGrid("area", 0.6)(mask, (2, 2)).flatten().tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="unknown mask downsampling"):
        MaskGrid("bilinear")
    with pytest.raises(ValueError, match="threshold"):
        MaskGrid("area", 0.0)
    feats = torch.ones(1, 3, 2, 2)
    assert mask_features(feats, mask, MaskGrid("area"))[0, :, 0, 1].tolist() == [1, 1, 1]


def test_grid_statistics_count_boundary_tokens_kept_background_and_dropped_bird():
    mask = half_cell_mask()
    near = grid_fractions(grid_statistics(mask, (2, 2)))
    assert near["boundary"] == pytest.approx(0.5)  # 2 bird tokens, 1 of them mixed
    assert near["bird_tokens"] == 2 and near["kept_background"] == 0.0
    assert near["bird_dropped"] == pytest.approx(8 / 24)  # the half cell's 8 bird pixels are zeroed
    area = grid_fractions(grid_statistics(mask, (2, 2), MaskGrid("area")))
    assert area["kept_background"] == pytest.approx(8 / 32) and area["bird_dropped"] == 0.0
    with pytest.raises(ValueError, match="tile"):
        grid_statistics(torch.ones(1, 9, 9), (2, 2))


def test_difference_interval_matches_newcombes_worked_example():
    d, low, high = difference_interval(56, 70, 48, 80)  # Newcombe (1998), method 10: 0.2 (0.0524, 0.3339)
    assert d == pytest.approx(20.0) and low == pytest.approx(5.24, abs=0.01) and high == pytest.approx(33.39, abs=0.01)


def config(argv, tiny_cub_root, tmp_path):
    return cli.parse_config(["late"], ["--data_path", str(tiny_cub_root), "--snapshot_dir",
                                       str(tmp_path / "r"), *argv])


def test_the_downsampling_flag_reaches_the_late_model_and_the_probe_heads(tiny_cub_root, tmp_path):
    cfg, strategy = config(["--mask_downsample", "area", "--mask_area_threshold", "0.25"], tiny_cub_root, tmp_path)
    torch.manual_seed(0)
    clf = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3))
    model = strategy.wrap_model(cfg, clf)
    assert model.to_grid == MaskGrid("area", 0.25)
    assert strategy.results_info(cfg)["mask_downsample"] == "area"

    def probes(to_grid):
        torch.manual_seed(0)
        vit = create_classifier(ModelSpec(arch="vit_small_patch14_dinov2", num_classes=3, image_size=28,
                                          freeze_backbone=True))
        return ProbeHeads(vit, ["mean", "late:mean", "late:masked_mean"], 3, to_grid=to_grid).eval()

    # a --probe_heads run builds its probe heads with the flag's rule
    probe_cfg, probe_strategy = config(["--mask_downsample", "area", "--mask_area_threshold", "0.25", "--model_arch",
                                       "vit_small_patch14_dinov2", "--freeze_backbone", "--probe_heads",
                                       "mean,late:mean"], tiny_cub_root, tmp_path)
    session = SimpleNamespace(cfg=probe_cfg, info=SimpleNamespace(device=torch.device("cpu"), is_main=False,
                                                                  distributed=False))
    built, _ = build_model(session, probe_strategy, 3, 28)
    assert isinstance(built.module, ProbeHeads)
    assert built.module.single_head_model("late:mean").to_grid == MaskGrid("area", 0.25)
    area = probes(built.module.to_grid)
    # the area mask changes the late heads' logits on a mask that nearest-exact reads otherwise (2x2 token grid)
    images, masks = torch.randn(2, 3, 28, 28), torch.zeros(2, 28, 28)
    masks[:, :14, 14:18] = 1  # cell (0, 1): 4/14 of its columns bird; nearest samples column 21 (background)
    with torch.no_grad():
        a, n = area(images, masks), probes(NEAREST)(images, masks)
    assert torch.equal(a["mean"], n["mean"]) and not torch.allclose(a["late:mean"], n["late:mean"])
    with pytest.raises(SystemExit):
        config(["--mask_downsample", "bilinear"], tiny_cub_root, tmp_path)


def test_late_model_with_area_downsampling_equals_the_baseline_on_all_foreground_masks():
    torch.manual_seed(0)
    clf = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        late = LateMaskedClassifier(clf, second_last=True, to_grid=MaskGrid("area")).eval()
        assert torch.allclose(late(images, torch.ones(2, 64, 64)), clf(images), atol=1e-5)


# ------------------------------------------------------------------------------------------ the study's scripts
def study_module():
    spec = importlib.util.spec_from_file_location("grid_resolution", REPO / "scripts/study/grid_resolution.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def fake_run(folder: Path, name: str, masking: str, wb: int, worst: tuple[int, int], seed: int = 0,
             **extra) -> Path:
    run = folder / name
    run.mkdir(parents=True)
    groups = {"y0_place0": {"top1": 100.0 * worst[0] / worst[1], "correct": worst[0], "num_images": worst[1]},
              "y0_place1": {"top1": 90.0, "correct": 90, "num_images": 100}}
    results = {"model_arch": "convnext_atto", "masking": masking, **extra,
               "cub_test": {"top1": 75.0, "correct": 300, "num_images": 400},
               "waterbirds": {"top1": 100.0 * wb / 400, "correct": wb, "num_images": 400, "groups": groups,
                              "worst_group": 100.0 * worst[0] / worst[1]},
               "diagnostics": {"bg_gap": 30.0, "fg_attribution": 0.2}}
    (run / "results.json").write_text(json.dumps(results))
    (run / "args.yaml").write_text(yaml.safe_dump({"seed": seed, "freeze_backbone": True}))
    return run


def test_study_analysis_pairs_each_strategy_with_its_baseline_and_measures_the_grid(tiny_cub_root, tmp_path):
    module = study_module()
    study, data = tmp_path / "study", tmp_path / "data"
    for grid, late_wb in ((4, 100), (16, 160)):
        (data / f"grid{grid}").mkdir(parents=True)
        (data / f"grid{grid}" / "CUB_200_2011").symlink_to(tiny_cub_root)
        fake_run(study / f"grid{grid}", "convnext_frozen_baseline_s0", "none", 100, (0, 50))
        fake_run(study / f"grid{grid}", "convnext_frozen_late_s0", "late", late_wb, (10, 50), variant="second_last",
                 mask_downsample="nearest-exact")
    fake_run(study / "grid4", "convnext_frozen_baseline_s1", "none", 60, (0, 50), seed=1)  # a second seed
    fake_run(study / "grid4", "convnext_frozen_late_s1", "late", 100, (0, 50), seed=1, variant="second_last",
             mask_downsample="nearest-exact")
    fake_run(study / "grid16", "convnext_frozen_late_area_s0", "late", 120, (5, 50), variant="second_last",
             mask_downsample="area")
    (study / "logs").mkdir()
    (study / "logs" / "timings.tsv").write_text("grid16_convnext_frozen_late_s0\t42\n")
    (study / "grid4" / "tables").mkdir()  # a grid's collect_results output: a results.json that is not a run's
    (study / "grid4" / "tables" / "results.json").write_text("[]")
    assert module.main(["--study_dir", str(study), "--data_root", str(data), "--grids", "16", "4", "--out",
                        str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "grid_resolution.json").read_text())
    gains = {(g["grid"], g["strategy"]): g for g in report["gains"] if g["seed"] == 0}
    assert set(gains) == {(4, "late"), (16, "late"), (16, "late (area)")}
    seed1 = [g for g in report["gains"] if g["seed"] == 1]
    assert len(seed1) == 1 and seed1[0]["wb_gain"][0] == pytest.approx(10.0)  # against seed 1's own baseline
    assert gains[(4, "late")]["wb_gain"][0] == pytest.approx(0.0)
    assert gains[(16, "late")]["wb_gain"][0] == pytest.approx(15.0)  # (160 - 100) / 400
    assert gains[(16, "late")]["worst_gain"][0] == pytest.approx(20.0)  # the worst group's 10/50 against 0/50
    late4 = next(c for c in report["cells"] if c["grid"] == 16 and c["strategy"] == "late")
    assert late4["wall_s"] == 42 and late4["bg_gap"] == 30.0
    boundary = {(b["grid"], b["model"]): b for b in report["boundary"]}
    coarse, fine = boundary[(4, "ViT-S/14")], boundary[(16, "ViT-S/14")]
    assert 0 < fine["boundary"] < coarse["boundary"] <= 1  # a finer grid: fewer of the bird's tokens are mixed
    assert fine["bird_tokens"] > coarse["bird_tokens"]
    assert (37, "ViT/14, paper (518 px)") in boundary
    assert (tmp_path / "out" / "grid_resolution.png").stat().st_size > 0
    assert "late (area)" in (tmp_path / "out" / "grid_resolution.md").read_text()
    # The trends across grids as claims: late masking's gain and its own top-1, 4x4 -> 16x16 (seed 0, the one seed
    # both grids have); the area variant exists at one grid only, so it has no trend.
    claims = {ev["id"]: ev for ev in json.loads((tmp_path / "out" / "claims.json").read_text())["comparisons"]}
    assert set(claims) == {"T8.1", "T9.1"}
    assert claims["T8.1"]["difference"] == pytest.approx(15.0) and claims["T8.1"]["method"].startswith("MOVER")
    assert claims["T9.1"]["difference"] == pytest.approx(15.0) and claims["T9.1"]["seeds"] == 1
    assert claims["T8.1"]["verdict"] == "holds" and "16x16" in claims["T8.1"]["label"]


@pytest.mark.parametrize("env,message", [({"GRIDS": "4 x"}, "not a grid size"), ({"SEEDS": "-1"}, "not a seed")])
def test_study_driver_refuses_bad_settings_before_any_work(env, message, tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts/study/grid_resolution.sh")], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "o"), **env})
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "o").exists()
    help_text = subprocess.run(["bash", str(REPO / "scripts/study/grid_resolution.sh"), "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "GRIDS" in help_text and "SEEDS" in help_text and sys.executable


def test_masking_before_the_last_two_stages_masks_a_finer_grid_at_the_same_input(tiny_cub_root, tmp_path):
    """The grid study's control: at 64 px ConvNeXt-atto's third-last stage gives an 8x8 grid (the second-last 4x4,
    the last 2x2); what runs after the mask trains, and background features get no gradient."""
    cfg, strategy = config(["--fm_blocks_after_mask", "2", "--freeze_backbone"], tiny_cub_root, tmp_path)
    torch.manual_seed(0)
    clf = create_classifier(ModelSpec(arch="convnext_atto", num_classes=3, freeze_backbone=True))
    model = strategy.wrap_model(cfg, clf)
    assert model.after == 2 and strategy.results_info(cfg)["variant"] == "third_last"
    trained = {n.split(".")[3] for n, p in model.named_parameters() if p.requires_grad and ".stages." in n}
    assert trained == {"2", "3"}  # the two stages after the mask, not the ones before it
    images, masks = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64)
    masks[:, :32] = 1  # the top half is bird
    feats = clf.adapter.before_last(images, 2).detach().requires_grad_(True)
    assert feats.shape[-2:] == (8, 8)
    model.head_from_features(clf.adapter.last(clf.adapter.mask(feats, masks), 2)).sum().backward()
    assert feats.grad[:, :, 4:].abs().max() == 0 and feats.grad[:, :, :4].abs().max() > 0
    for argv, message in ((["--fm_blocks_after_mask", "-1"], "count >= 0"),
                          (["--fm_blocks_after_mask", "2", "--fm_second_last_block"], "not with")):
        bad, bad_strategy = config(argv, tiny_cub_root, tmp_path)
        with pytest.raises(cli.ConfigError, match=message):
            bad_strategy.check(bad)
    too_deep, deep_strategy = config(["--fm_blocks_after_mask", "4"], tiny_cub_root, tmp_path)
    with pytest.raises(ValueError, match="before 1 to 3 of them, not 4"):
        deep_strategy.wrap_model(too_deep, create_classifier(ModelSpec(arch="convnext_atto", num_classes=3)))
