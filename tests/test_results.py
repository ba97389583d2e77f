"""Results collection: Wilson intervals over the test images, mean ± std over seeds, table and figure."""

from __future__ import annotations

import json

import pytest
import yaml

from bgmask.reporting.outputs import write_outputs
from bgmask.reporting.results import accuracy, build_table, wilson_interval
from bgmask.reporting.runs import in_paper_table, load_run


def fake_run(tmp_path, name, masking="none", seed=0, cub=(300, 400), wb=(100, 400), arch="convnext_atto",
             **extra):
    run = tmp_path / name
    run.mkdir()
    results = {"model_arch": arch, "masking": masking, **extra,
               "cub_test": {"top1": 100 * cub[0] / cub[1], "correct": cub[0], "num_images": cub[1]},
               "waterbirds": {"top1": 100 * wb[0] / wb[1], "correct": wb[0], "num_images": wb[1],
                              "worst_group": 0.0}}
    (run / "results.json").write_text(json.dumps(results))
    (run / "args.yaml").write_text(yaml.safe_dump({"seed": seed, "model_arch": arch}))
    return run


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(40.38, abs=0.01) and high == pytest.approx(59.62, abs=0.01)
    # the roots of (p_hat - p)^2 = z^2 p (1 - p) / n, solved as a quadratic in p
    low, high = wilson_interval(0, 400)  # never below 0, and not degenerate at the edge
    assert low == 0.0 and high == pytest.approx(0.951229, abs=1e-5)
    low, high = wilson_interval(300, 400)  # about +-4 points at 400 images
    assert low == pytest.approx(70.532287, abs=1e-5) and high == pytest.approx(78.992099, abs=1e-5)


def test_one_run_gets_an_interval_and_seeds_get_mean_and_std(tmp_path):
    single = load_run(fake_run(tmp_path, "a"))
    assert str(accuracy([single], "cub")) == "75.0 [70.5, 79.0]"
    seeds = [load_run(fake_run(tmp_path, f"s{i}", masking="early", seed=i, cub=(c, 400)))
             for i, c in enumerate((280, 300, 320))]
    acc = accuracy(seeds, "cub")
    assert acc.runs == 3 and acc.value == pytest.approx(75.0) and acc.std == pytest.approx(5.0)
    header, table = build_table([single, *seeds])
    row = dict(zip(header, table[0]))
    assert row["baseline CUB"] == "75.0 [70.5, 79.0]" and row["early masking CUB"] == "75.0 ± 5.0 (n=3)"
    paths = write_outputs([single, *seeds], tmp_path / "out")
    assert paths["png"].stat().st_size > 0 and "Wilson" in paths["md"].read_text()


def test_two_runs_of_one_cell_with_the_same_seed_are_refused(tmp_path):
    runs = [load_run(fake_run(tmp_path, n)) for n in ("a", "b")]
    with pytest.raises(ValueError, match="same seed"):
        build_table(runs)


def test_late_masking_after_the_second_last_stage_is_its_own_column(tmp_path):
    """The paper's second-last variant is another method: its runs sit beside the default's, not in its cell."""
    runs = [load_run(fake_run(tmp_path, "base")),
            load_run(fake_run(tmp_path, "late", masking="late", variant="last", cub=(320, 400))),
            load_run(fake_run(tmp_path, "late2", masking="late", variant="second_last", cub=(280, 400)))]
    header, table = build_table(runs)
    row = dict(zip(header, table[0]))
    assert len(table) == 1
    assert row["late masking CUB"].startswith("80.0") and row["late masking (second-last) CUB"].startswith("70.0")
    assert header.index("late masking (second-last) CUB") > header.index("late masking CUB")
    assert write_outputs(runs, tmp_path / "out")["png"].is_file()


def test_late_masking_with_area_downsampling_is_its_own_column(tmp_path):
    """--mask_downsample area is another rule than upstream's nearest-exact: its own column, not a second seed."""
    runs = [load_run(fake_run(tmp_path, "base")),
            load_run(fake_run(tmp_path, "late2", masking="late", variant="second_last", cub=(280, 400))),
            load_run(fake_run(tmp_path, "late2_area", masking="late", variant="second_last", cub=(300, 400),
                              mask_downsample="area"))]
    header, table = build_table(runs)
    row = dict(zip(header, table[0]))
    assert row["late masking (second-last) CUB"].startswith("70.0")
    assert row["late masking (second-last, area) CUB"].startswith("75.0")


def test_one_reader_for_every_benchmark_keys_each_entry_by_its_evaluation_sets(tmp_path):
    """A paper run and a group-protocol run are read by the same function into the same entry type, each with its
    evaluation sets by name; the paper's table takes the runs scored on cub_test, the group table the others."""
    paper = load_run(fake_run(tmp_path, "cub", wb=(100, 400), dataset="cub", best={"epoch": 2, "top1": 75.0},
                              weights={"source": "none", "location": None, "resampled": None}))
    groups = {"y0_place0": {"top1": 90.0, "correct": 9, "num_images": 10},
              "y1_place0": {"top1": 20.0, "correct": 2, "num_images": 10}}
    grouped = {"top1": 55.0, "correct": 11, "num_images": 20, "groups": groups, "worst_group": 20.0,
               "average": 55.0, "adjusted_average": 80.0}
    run = tmp_path / "wb"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({
        "model_arch": "convnext_atto", "masking": "none", "dataset": "waterbirds", "val": grouped, "test": grouped,
        "best": {"epoch": 3, "selected_on": "val", "worst_group": 20.0}, "last_epoch": {"test": grouped},
        "train_group_sizes": {"y0_place0": 10, "y1_place0": 1}, "weights": {"source": "none"}}))
    (run / "args.yaml").write_text(yaml.safe_dump({"seed": 1, "class_balance": "sampler"}))
    group = load_run(run)
    assert type(paper) is type(group)
    assert set(paper.sets) == {"cub_test", "waterbirds"} and set(group.sets) == {"val", "test"}
    assert in_paper_table(paper) and not in_paper_table(group)
    # keyed by the sets, not the benchmark's name: a user's benchmark scored on cub_test joins the paper's table
    assert in_paper_table(load_run(fake_run(tmp_path, "own", dataset="cub_subset")))
    assert (paper.cub_top1, paper.cub_correct, paper.wb_top1, paper.wb_images) == (75.0, 300, 25.0, 400)
    assert group.figure("worst_group") == 20.0 and group.figure("adjusted_average", "val") == 80.0
    assert group.block == ("waterbirds", "convnext_atto", "-", "from scratch") and group.seed == 1
    assert group.label == "baseline + class-balanced sampler" and group.best["selected_on"] == "val"
