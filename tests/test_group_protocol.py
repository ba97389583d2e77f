"""The field's group protocol: group metrics and the adjusted average by hand, the Waterbirds benchmark on its own
splits, a user's CSV dataset with every strategy, malformed inputs stopped before training, the synthetic twin's
split structure, and DFR."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bgmask import cli
from bgmask.data.groups import Groups, group_metrics, wilson_interval
from bgmask.data.masks import write_gt_masked_folders
from bgmask.data.synthetic import WATER_HABITAT
from bgmask.strategies.dfr import balanced_subset, reweight
from tests.test_classifier import train_argv

STRATEGIES = ["none", "early", "late", "dfr"]


def test_group_metrics_and_the_adjusted_average_by_hand():
    # groups (y, place): hits / images in the set, and their sizes in training (3498 / 184 / 56 / 1057 shape)
    correct, total = np.array([90.0, 30.0, 5.0, 40.0]), np.array([100.0, 50.0, 20.0, 50.0])
    groups = Groups(np.zeros(0), ("y0_place0", "y0_place1", "y1_place0", "y1_place1"), train_sizes=(70, 4, 1, 25))
    m = group_metrics(correct, total, groups)
    assert m["worst_group"] == 25.0  # y1_place0, which is not the smallest group of this set
    assert m["average"] == pytest.approx(100 * 165 / 220)
    assert m["adjusted_average"] == pytest.approx(0.70 * 90 + 0.04 * 60 + 0.01 * 25 + 0.25 * 80)
    assert m["groups"]["y0_place1"] == {"top1": 60.0, "num_images": 50, "correct": 30,
                                        "interval": wilson_interval(30, 50)}
    assert m["intervals"]["worst_group"] == wilson_interval(5, 20)
    assert m["intervals"]["average"] == wilson_interval(165, 220)
    weights = np.array([70, 4, 1, 25]) / 100
    n_eff = 1 / np.sum(weights ** 2 / total)
    assert m["intervals"]["adjusted_average"] == pytest.approx(
        wilson_interval(m["adjusted_average"] / 100 * n_eff, n_eff))
    # weighted by the set's own sizes, the adjusted average is the average, with the same interval
    own = group_metrics(correct, total, Groups(np.zeros(0), groups.names, train_sizes=(100, 50, 20, 50)))
    assert own["adjusted_average"] == pytest.approx(own["average"])
    assert own["intervals"]["adjusted_average"] == pytest.approx(own["intervals"]["average"])


# ------------------------------------------------------------------------------------------------- the twin
# The twin with the release's two habitats: the twin_root fixture (tests/conftest.py).
# sha256 of the test split's Waterbirds composites (names, places, bytes) before the train split was correlated
TEST_SPLIT_DIGESTS = {"tiny": "7eea7904aea6eb255cff841246cc8e380fbc2126396f600de5dc6715e1ceb619",
                      "two_habitats": "cce9253491fdec6a1447e44edb6aa847bd19c06b9838b0fa76ac58463a24d0c8"}


def metadata(waterbirds_root: Path) -> list[dict]:
    return list(csv.DictReader(open(waterbirds_root / "metadata.csv", newline="")))


@pytest.mark.parametrize("name", ["tiny", "two_habitats"])
def test_the_twins_test_split_is_byte_identical_and_its_train_split_correlated(name, tiny_cub_root, twin_root):
    wb = (tiny_cub_root if name == "tiny" else twin_root) / "waterbird_complete95_forest2water2"
    rows = metadata(wb)
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: int(r["img_id"])):
        if r["split"] == "2":
            h.update(r["img_filename"].encode())
            h.update(r["place"].encode())
            h.update((wb / r["img_filename"]).read_bytes())
    assert h.hexdigest() == TEST_SPLIT_DIGESTS[name]
    if name == "two_habitats":  # the real release's land / water
        train = [r for r in rows if r["split"] == "0"]
        own = np.mean([(r["y"] == "1") == (int(r["place"]) == WATER_HABITAT) for r in train])
        assert own >= 0.85  # 95 % drawn; 47 images
        val = [r for r in rows if r["split"] == "1"]
        assert 0.2 <= np.mean([(r["y"] == "1") == (int(r["place"]) == WATER_HABITAT) for r in val]) <= 0.8


# ------------------------------------------------------------------------------------------- waterbirds
def waterbirds_argv(root, run, *extra):
    return ["--dataset", "waterbirds", *train_argv(root, run, "--epochs", "2", "--diagnostics", "none", *extra)]


def test_the_waterbirds_protocol_trains_on_split_0_and_reports_val_and_test(tiny_cub_root, tmp_path):
    run = tmp_path / "wb"
    assert cli.main(STRATEGIES, waterbirds_argv(tiny_cub_root, run)) == 0
    out = json.loads((run / "results.json").read_text())
    rows = metadata(tiny_cub_root / "waterbird_complete95_forest2water2")
    assert out["dataset"] == "waterbirds" and out["num_classes"] == 2
    for split, key in (("val", "1"), ("test", "2")):
        part = [r for r in rows if r["split"] == key]
        m = out[split]
        assert m["num_images"] == len(part)
        assert sum(g["num_images"] for g in m["groups"].values()) == len(part)
        assert m["worst_group"] == min(g["top1"] for g in m["groups"].values())
        assert {"average", "adjusted_average", "intervals"} <= set(m)
    train = [r for r in rows if r["split"] == "0"]
    sizes = out["train_group_sizes"]
    assert sum(sizes.values()) == len(train)
    assert sizes["y1_place1"] == sum(r["y"] == "1" and r["place"] == "1" for r in train)
    assert out["best"]["selected_on"] == "val"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val_worst = [r["val"]["worst_group"] for r in log if "val" in r]
    assert len(val_worst) == 2 and out["best"]["worst_group"] == max(val_worst)
    # ties on the worst group break on the adjusted average, then on the lower validation loss
    # (bgmask.training.selection)
    keys = [(r["val"]["worst_group"], r["val"]["adjusted_average"], -r["val"]["loss"]) for r in log if "val" in r]
    assert out["best"]["epoch"] == 1 + keys.index(max(keys))
    # every set is reported with the selected epoch's weights; the last epoch's figures are kept apart
    assert out["val"]["worst_group"] == out["best"]["worst_group"] and "last_epoch" in out
    assert out["reported"] == f"the selected epoch ({out['best']['epoch']})"


def test_the_reported_figures_are_the_selected_epochs_not_the_last(tiny_cub_root, tmp_path):
    """The reported figures are those --eval_only gives for best.pt, not the last epoch's."""
    run = tmp_path / "wb"
    assert cli.main(STRATEGIES, waterbirds_argv(tiny_cub_root, run, "--epochs", "3")) == 0
    out = json.loads((run / "results.json").read_text())
    again = tmp_path / "again"
    argv = waterbirds_argv(tiny_cub_root, again, "--epochs", "3", "--eval_only", "--checkpoint", str(run / "best.pt"))
    assert cli.main(STRATEGIES, argv) == 0
    scored = json.loads((again / "results.json").read_text())
    assert scored["test"] == out["test"] and scored["val"] == out["val"]
    if out["best"]["epoch"] != 3:
        assert out["last_epoch"]["test"] != out["test"]


def test_a_broken_waterbirds_metadata_stops_before_training(tiny_cub_copy, tmp_path, capsys):
    path = tiny_cub_copy / "waterbird_complete95_forest2water2" / "metadata.csv"
    text = path.read_text().splitlines()
    text[1] = ",".join(v if k != 3 else "7" for k, v in enumerate(text[1].split(",")))
    path.write_text("\n".join(text) + "\n")
    assert cli.main(STRATEGIES, waterbirds_argv(tiny_cub_copy, tmp_path / "r")) == 2
    assert "split must be 0 (train), 1 (val) or 2 (test)" in capsys.readouterr().err
    assert not (tmp_path / "r" / "last.pt").exists()


# --------------------------------------------------------------------------------------------------- csv
def write_csv(root: Path, out: Path, with_a: bool = True, with_mask: bool = True) -> Path:
    """A CSV dataset over the tiny CUB images: CUB's train split is train, its test split half val, half test."""
    lines = (root / "images.txt").read_text().splitlines()
    labels = (root / "image_class_labels.txt").read_text().splitlines()
    splits = (root / "train_test_split.txt").read_text().splitlines()
    header = ["filename", "split", "y", *(["a"] if with_a else []), *(["mask"] if with_mask else [])]
    rows = []
    for k, (line, label, split) in enumerate(zip(lines, labels, splits)):
        rel = line.split()[1]
        part = "train" if split.split()[1] == "1" else ("val" if k % 2 else "test")
        row = [str(root / "images" / rel), part, str(int(label.split()[1]) - 1)]
        row += [["ocean", "shore"][k % 2]] if with_a else []
        row += [str(root / "segmentations" / Path(rel).with_suffix(".png"))] if with_mask else []
        rows.append(row)
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return out


def csv_argv(path, run, *extra):
    return ["--dataset", "csv", *train_argv(path, run, "--epochs", "1", *extra)]


@pytest.mark.parametrize("masking,flags", [("none", []), ("early", []), ("late", ["--mask_source", "gt"])])
def test_a_users_csv_dataset_trains_with_every_strategy(tiny_cub_root, tmp_path, masking, flags):
    data = write_csv(tiny_cub_root, tmp_path / "data.csv")
    run = tmp_path / masking
    assert cli.main(STRATEGIES, ["--masking", masking, *csv_argv(data, run, *flags)]) == 0
    out = json.loads((run / "results.json").read_text())
    rows = list(csv.DictReader(open(data)))
    assert out["num_classes"] == 4 and out["dataset"] == "csv"
    for split in ("val", "test"):
        n = sum(r["split"] == split for r in rows)
        assert out[split]["num_images"] == n and sum(g["num_images"] for g in out[split]["groups"].values()) == n
        assert set(out[split]["groups"]) <= {f"y{y}_a{a}" for y in range(4) for a in ("ocean", "shore")}
    assert out["best"]["selected_on"] == "val" and "worst_group" in out["best"]
    assert "fg_attribution" in out["diagnostics"]


@pytest.mark.parametrize("break_it,message", [
    (lambda rows: [r[:2] + r[3:] for r in rows], "lacks the column(s) y"),
    (lambda rows: [rows[0], [rows[1][0], "holdout", *rows[1][2:]], *rows[2:]], "split must be train/val/test"),
    (lambda rows: [rows[0], *[[r[0], r[1], "9" if r[1] == "test" else r[2], *r[3:]] for r in rows[1:]]],
     "train split has no image of class(es)"),
    (lambda rows: [rows[0], [rows[1][0] + ".missing", *rows[1][1:]], *rows[2:]], "image files listed in"),
])
def test_a_malformed_csv_stops_before_training(tiny_cub_root, tmp_path, capsys, break_it, message):
    data = write_csv(tiny_cub_root, tmp_path / "data.csv")
    rows = list(csv.reader(open(data)))
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows(break_it(rows))
    assert cli.main(STRATEGIES, csv_argv(data, tmp_path / "r")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_masks_of_another_size_and_a_missing_mask_column_are_refused(tiny_cub_root, tmp_path, capsys):
    data = write_csv(tiny_cub_root, tmp_path / "data.csv")
    rows = list(csv.reader(open(data)))
    small = tmp_path / "small.png"
    from PIL import Image

    Image.new("L", (5, 5)).save(small)
    rows[1][-1] = str(small)
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert cli.main(STRATEGIES, csv_argv(data, tmp_path / "r")) == 2
    assert "do not have their image's size" in capsys.readouterr().err
    plain = write_csv(tiny_cub_root, tmp_path / "plain.csv", with_mask=False)
    assert cli.main(STRATEGIES, ["--masking", "early", *csv_argv(plain, tmp_path / "e")]) == 2
    assert "has no mask column" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- DFR
def test_dfr_reweights_away_from_a_spurious_feature():
    """Feature 0 is the class, noisy; feature 1 the background, which in a minority group points the other way.
    Refitted on group-balanced data, the layer leans on feature 0 and the worst group recovers."""
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, 2, n)
    agree = rng.random(n) < 0.5  # balanced validation data: background independent of the class
    background = np.where(agree, y, 1 - y)
    x = np.stack([y + rng.normal(0, 0.6, n), 3 * background + rng.normal(0, 0.1, n), rng.normal(0, 1, n)], 1)
    groups = y * 2 + background
    w, b, report = reweight(x, y, groups, 2, [1.0, 0.1, 0.01], 1, 5, seed=0)
    pred = (x @ w.T + b).argmax(1)
    worst = min((pred[groups == g] == y[groups == g]).mean() for g in range(4))
    assert worst > 0.75 and abs(w[1, 1] - w[0, 1]) < abs(w[1, 0] - w[0, 0])
    assert set(report["tuning_worst_group"]) == {"1.0", "0.1", "0.01"}
    sub = balanced_subset(groups, np.random.default_rng(1))
    assert len(set(np.bincount(groups[sub]).tolist())) == 1
    from bgmask.errors import DatasetError

    with pytest.raises(DatasetError, match="holds one class only"):
        reweight(x[y == 0], y[y == 0], groups[y == 0], 2, [1.0], 1, 1, seed=0)


def test_dfr_refits_a_baselines_last_layer_on_the_waterbirds_validation_split(twin_root, tmp_path):
    base = tmp_path / "baseline"
    frozen = ["--freeze_backbone"]
    assert cli.main(STRATEGIES, waterbirds_argv(twin_root, base, *frozen)) == 0
    run = tmp_path / "dfr"
    argv = ["--masking", "dfr", *waterbirds_argv(twin_root, run, *frozen, "--dfr_from", str(base),
                                                  "--dfr_retrains", "3")]
    assert cli.main(STRATEGIES, argv) == 0
    out = json.loads((run / "results.json").read_text())
    # the DFR code's base model: the baseline's final checkpoint; the final scaler from its training embeddings
    assert out["masking"] == "dfr" and out["refit"]["from"].endswith("last.pt")
    assert out["refit"]["scaler_fitted_on"] == "training split" and "degenerate_c_grid" in out["refit"]
    missing = ["--masking", "dfr", *waterbirds_argv(twin_root, tmp_path / "d2", *frozen, "--dfr_from", str(tmp_path))]
    assert cli.main(STRATEGIES, missing) == 2 and not (tmp_path / "d2" / "args.yaml").exists()
    assert out["test"]["num_images"] == json.loads((base / "results.json").read_text())["test"]["num_images"]
    assert "worst_group" in out["test"] and "adjusted_average" in out["test"]


def test_collect_results_tables_group_protocol_runs_beside_the_paper_table(twin_root, tmp_path):
    import subprocess
    import sys

    run = tmp_path / "runs" / "wb_baseline"
    assert cli.main(STRATEGIES, waterbirds_argv(twin_root, run)) == 0
    out = tmp_path / "tables"
    done = subprocess.run([sys.executable, "scripts/collect_results.py", str(run), "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    test = json.loads((run / "results.json").read_text())["test"]
    header, constant, chance, values = list(csv.reader(open(out / "group_results.csv")))
    assert constant[4].startswith("constant (always class ") and chance[4] == "chance (1/2)"
    cell = values[header.index("test worst group")]
    low, high = test["intervals"]["worst_group"]
    assert cell == f"{test['worst_group']:.1f} [{low:.1f}, {high:.1f}]"
    assert (out / "group_results.png").stat().st_size > 0 and not (out / "results.md").exists()


def test_a_stub_model_with_known_hits_gives_every_group_figure_through_the_evaluation_loop():
    """tests/test_group_metrics.py's stub (known hits per (y, place) group), evaluated with training group sizes:
    the adjusted average and the intervals come out of engine.evaluate exactly as by hand, on batches of any size."""
    import torch
    from torch.utils.data import DataLoader

    from bgmask.training.engine import AmpSettings, IndexedDataset, ShardSampler, evaluate
    from tests.test_group_metrics import GROUPS, Stub, stub_data

    items, waterbird_y, places = stub_data()
    train_sizes = (3498, 184, 56, 1057)  # the release's y0_place0, y0_place1, y1_place0, y1_place1
    groups = Groups(waterbird_y * 2 + places, ("y0_place0", "y0_place1", "y1_place0", "y1_place1"),
                    train_sizes=train_sizes)
    for batch_size in (1, 7):
        loader = DataLoader(IndexedDataset(items), batch_size=batch_size, sampler=ShardSampler(len(items)))
        m = evaluate(Stub(), loader, torch.device("cpu"), AmpSettings(), groups=groups, progress=False)["logits"]
        accs = [hits / n for (n, hits) in GROUPS.values()]  # GROUPS is in the names' order
        assert m["adjusted_average"] == pytest.approx(100 * np.dot(train_sizes, accs) / sum(train_sizes))
        assert m["average"] == pytest.approx(70.0) and m["worst_group"] == pytest.approx(100 / 3)
        assert m["intervals"]["worst_group"] == wilson_interval(1, 3)
        assert [m["groups"][g]["correct"] for g in groups.names] == [h for (_, h) in GROUPS.values()]


def test_dfr_fits_more_than_two_classes_one_vs_rest():
    rng = np.random.default_rng(0)
    n = 600
    y, a = rng.integers(0, 3, n), rng.integers(0, 2, n)
    x = np.stack([y + rng.normal(0, 0.5, n), a + rng.normal(0, 0.1, n), rng.normal(0, 1, n)], 1)
    w, b, _ = reweight(x, y, y * 2 + a, 3, [1.0, 0.1], 1, 3, seed=0)
    assert w.shape == (3, 3) and ((x @ w.T + b).argmax(1) == y).mean() > 0.7


def test_dfr_refuses_to_fit_on_a_test_split(tiny_cub_root, tmp_path, capsys):
    """A CSV without val rows selects on test; DFR fitted there would report figures of its own fitting data."""
    data = write_csv(tiny_cub_root, tmp_path / "data.csv")
    rows = [r for r in csv.reader(open(data))]
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[[r[0], "test" if r[1] == "val" else r[1], *r[2:]] for r in rows[1:]]])
    argv = ["--masking", "dfr", "--freeze_backbone", *csv_argv(data, tmp_path / "dfr")]
    with pytest.warns(UserWarning, match="no val split"):
        assert cli.main(STRATEGIES, argv) == 2
    assert "fits the last layer on a validation split" in capsys.readouterr().err


def test_a_csv_saved_with_a_byte_order_mark_reads(tiny_cub_root, tmp_path):
    data = write_csv(tiny_cub_root, tmp_path / "data.csv")
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    from bgmask.benchmarks.csv_table import Table

    assert Table.read(data).num_classes == 4


def test_early_masking_on_the_waterbirds_folder_itself_reads_its_masked_twin(tiny_cub_copy, tmp_path):
    write_gt_masked_folders(tiny_cub_copy, progress=False)
    wb = tiny_cub_copy / "waterbird_complete95_forest2water2"
    argv = ["--masking", "early", "--dataset", "waterbirds",
            *train_argv(wb, tmp_path / "r", "--epochs", "1", "--diagnostics", "none")]
    assert cli.main(STRATEGIES, argv) == 0
    out = json.loads((tmp_path / "r" / "results.json").read_text())
    assert out["waterbirds_images"].endswith("waterbird_complete95_forest2water2_masked")
