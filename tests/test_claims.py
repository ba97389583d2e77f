"""Claims computed from run folders: the verdict rule, seed pairing, the seed-spread rule and the files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bgmask.data.groups import difference_interval
from bgmask.reporting.claims import (
    CLAIM_EARLY,
    CLAIM_GAP,
    CLAIM_OOD,
    SEED_RULE,
    Measure,
    compare,
    compare_change,
    load_spread,
    paper_claims,
)
from bgmask.reporting.runs import load_runs

REPO = Path(__file__).resolve().parents[1]


def run_folder(root: Path, name: str, wb_correct: int, masking: str = "none", seed: int = 0, arch="convnext_atto",
               head_flags: dict | None = None, probes: dict | None = None, total: int = 400) -> Path:
    """A finished run as the trainer writes it (the fields the tables read)."""
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {"cub_test": {"top1": 50.0, "correct": 200, "num_images": 400},
               "waterbirds": {"top1": 100 * wb_correct / total, "correct": wb_correct, "num_images": total}}
    results = {"model_arch": arch, "masking": masking, "image_size": 64, **metrics}
    if probes:
        results["probes"] = {head: {"cub_test": metrics["cub_test"],
                                    "waterbirds": {"top1": 100 * c / total, "correct": c, "num_images": total}}
                             for head, c in probes.items()}
    (folder / "results.json").write_text(json.dumps(results))
    args = {"seed": seed, "freeze_backbone": True, "pretrained_path": "w.safetensors", **(head_flags or {})}
    (folder / "args.yaml").write_text(yaml.safe_dump(args))
    return folder


def evidence_of(tmp_path, folders, spread=None):
    runs = [r for f in folders for r in load_runs(f)]
    return {f"{ev.claim[0]}|{ev.label}": ev for ev in paper_claims(runs, spread)}


def test_the_verdict_rule_on_run_folders_holds_direction_only_does_not_hold_and_a_tie(tmp_path):
    base = run_folder(tmp_path, "base", 80)  # 20 %
    early = run_folder(tmp_path, "early", 160, "early")  # 40 %: far above
    late = run_folder(tmp_path, "late", 92, "late")  # 23 %: above, inside the interval
    ev = evidence_of(tmp_path, [base, early, late], spread={("convnext_atto", "frozen", "-", "wb"): 2.0})
    assert ev["1|convnext_atto frozen: early − baseline"].verdict == "holds"
    assert ev["1|convnext_atto frozen: late − baseline"].verdict == "direction only"
    assert ev["2|convnext_atto frozen: early − late"].verdict == "holds"
    d = ev["1|convnext_atto frozen: early − baseline"]
    assert d.difference == pytest.approx(20.0) and d.low > 0 and d.method == "Newcombe, single seed"
    tie = evidence_of(tmp_path, [base, run_folder(tmp_path, "late_tie", 80, "late")])
    assert tie["1|convnext_atto frozen: late − baseline"].verdict == "does not hold"
    below = evidence_of(tmp_path, [base, run_folder(tmp_path, "late_below", 60, "late")])
    assert below["1|convnext_atto frozen: late − baseline"].verdict == "does not hold"


def test_a_missing_run_is_not_evaluated_and_a_single_seed_needs_the_seed_spread():
    assert compare(CLAIM_OOD, "x", [], [Measure(0, 20.0, 80, 400)]).verdict == "not evaluated"
    a, b = [Measure(0, 30.0, 120, 400)], [Measure(0, 20.0, 80, 400)]  # +10 points, Newcombe excludes 0
    assert compare(CLAIM_OOD, "x", a, b).verdict == "direction only"  # no spread measured: never "holds"
    assert compare(CLAIM_OOD, "x", a, b, spread_sd=2.0).verdict == "holds"  # 10 > 1.96 * sqrt(2) * 2 = 5.5
    within = compare(CLAIM_OOD, "x", a, b, spread_sd=4.0)  # 10 < 11.1: inside what seeds alone move
    assert within.verdict == "direction only" and "seed spread" in within.note
    assert SEED_RULE == pytest.approx(2.772, abs=1e-3)


def test_seeds_are_paired_and_their_spread_sets_the_interval():
    a = [Measure(s, v) for s, v in enumerate([30.0, 32.0, 31.0])]
    b = [Measure(s, v) for s, v in enumerate([20.0, 21.0, 19.0])]
    ev = compare(CLAIM_OOD, "x", a, b)
    assert ev.seeds == 3 and ev.method == "t over 3 paired seeds" and ev.verdict == "holds"
    assert ev.difference == pytest.approx(11.0) and ev.low == pytest.approx(11.0 - 4.303 * 1.0 / 3 ** 0.5, abs=1e-3)
    noisy = [Measure(s, v) for s, v in enumerate([40.0, 15.0, 31.0])]  # mean +8.7, sd of the differences 12.6
    assert compare(CLAIM_OOD, "x", noisy, b).verdict == "direction only"
    unpaired = [Measure(s + 10, v) for s, v in enumerate([30.0, 32.0])]
    assert compare(CLAIM_OOD, "x", unpaired, b).seeds == 1  # no common seeds: one run per side


def test_a_change_of_a_gain_between_two_settings_combines_both_intervals():
    """(a_f - b_f) - (a_c - b_c): one seed by MOVER over the two Newcombe intervals, seeds by a paired t."""
    fine = ([Measure(0, 40.0, 160, 400)], [Measure(0, 20.0, 80, 400)])  # gain +20
    coarse = ([Measure(0, 18.0, 72, 400)], [Measure(0, 20.0, 80, 400)])  # gain -2
    ev = compare_change("8. x", "x", fine, coarse, spread_sd=2.0)
    (f, fl, fh), (c, cl, ch) = difference_interval(160, 400, 80, 400), difference_interval(72, 400, 80, 400)
    assert ev.difference == pytest.approx(22.0)
    assert ev.low == pytest.approx(22.0 - ((f - fl) ** 2 + (ch - c) ** 2) ** 0.5)
    assert ev.high == pytest.approx(22.0 + ((fh - f) ** 2 + (c - cl) ** 2) ** 0.5)
    assert ev.high - ev.low > fh - fl  # wider than either gain's own interval
    assert ev.verdict == "holds" and ev.method.startswith("MOVER")
    # The seed threshold of a change is 1.96 * 2 * sd (four runs): 22 points is within it at sd 6 (23.5), not at 2.
    assert compare_change("8. x", "x", fine, coarse, spread_sd=6.0).verdict == "direction only"
    assert compare_change("8. x", "x", fine, coarse).verdict == "direction only"  # no spread: never "holds"
    assert compare_change("8. x", "x", coarse, fine, spread_sd=2.0).verdict == "does not hold"
    small = ([Measure(0, 24.0, 96, 400)], [Measure(0, 20.0, 80, 400)])  # +4 against -2: inside the intervals
    assert compare_change("8. x", "x", small, coarse, spread_sd=0.5).verdict == "direction only"
    assert compare_change("8. x", "x", fine, ([], coarse[1])).verdict == "not evaluated"
    seeds = [([Measure(s, 30.0 + s)], [Measure(s, 20.0)], [Measure(s, 21.0 - s)], [Measure(s, 20.0)]) for s in range(3)]
    paired = compare_change("8. x", "x", ([m for r in seeds for m in r[0]], [m for r in seeds for m in r[1]]),
                            ([m for r in seeds for m in r[2]], [m for r in seeds for m in r[3]]))
    # per-seed changes 9, 11, 13: mean 11, sd 2
    assert paired.seeds == 3 and paired.difference == pytest.approx(11.0)
    assert paired.low == pytest.approx(11.0 - 4.303 * 2.0 / 3 ** 0.5, abs=1e-3) and paired.verdict == "holds"


def test_the_vit_head_claim_compares_gap_with_the_other_heads_under_early_masking(tmp_path):
    run = run_folder(tmp_path, "vit_early", 0, "early", arch="vit_small_patch14_dinov2",
                     probes={"mean": 120, "cls": 140, "cls_mean": 100})
    ev = [e for e in paper_claims(load_runs(run)) if e.claim == CLAIM_GAP]
    by = {e.label.rsplit(": ", 1)[1]: e for e in ev}
    assert set(by) == {"GAP − CLS head", "GAP − CLS+GAP head"}
    assert by["GAP − CLS head"].verdict == "does not hold" and by["GAP − CLS+GAP head"].difference == 5.0
    assert not [e for e in paper_claims(load_runs(run)) if e.claim == CLAIM_EARLY]  # no baseline in this folder


def test_a_late_only_head_is_compared_with_the_baseline_of_its_plain_head(tmp_path):
    """The mean over the bird's tokens (late:masked_mean) exists only with late masking: its baseline is GAP's."""
    run = run_folder(tmp_path, "vit_probes", 0, "late", arch="vit_small_patch14_dinov2",
                     probes={"mean": 80, "late:mean": 100, "late:masked_mean": 160})
    ev = {e.label: e for e in paper_claims(load_runs(run), {("vit_small_patch14_dinov2", "frozen", "GAP", "wb"): 2.0})
          if e.claim == CLAIM_OOD}
    fg = ev["vit_small_patch14_dinov2 frozen, GAP (fg mean) head: late − baseline"]
    assert fg.difference == pytest.approx(20.0) and fg.verdict == "holds"
    assert ev["vit_small_patch14_dinov2 frozen, GAP head: late − baseline"].difference == pytest.approx(5.0)


def test_claim_ids_follow_the_table_not_the_order_the_runs_are_given_in(tmp_path):
    folders = [run_folder(tmp_path, "late", 92, "late"), run_folder(tmp_path, "base", 80),
               run_folder(tmp_path, "vit", 0, "early", arch="vit_small_patch14_dinov2", probes={"mean": 9, "cls": 8}),
               run_folder(tmp_path, "early", 160, "early")]
    runs = [r for f in folders for r in load_runs(f)]
    labels = [e.label for e in paper_claims(runs)]
    assert labels == [e.label for e in paper_claims(runs[::-1])]
    assert labels[:2] == ["convnext_atto frozen: early − baseline", "convnext_atto frozen: late − baseline"]


def test_collect_results_writes_the_claims_next_to_the_tables(tmp_path):
    folders = [run_folder(tmp_path / "runs", "base", 80), run_folder(tmp_path / "runs", "early", 160, "early")]
    spread = tmp_path / "spread.json"
    spread.write_text(json.dumps({"regimes": [{"model_arch": "convnext_atto", "regime": "frozen", "head": "-",
                                               "split": "wb", "sd": 3.0}]}))
    assert load_spread(spread) == {("convnext_atto", "frozen", "-", "wb"): 3.0}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "scripts/collect_results.py"), *map(str, folders), "--out",
                           str(out), "--seed_spread", str(spread)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    claims = json.loads((out / "claims.json").read_text())
    rows = {c["label"]: c for c in claims["comparisons"] if c["claim"].startswith("1.")}
    assert rows["convnext_atto frozen: early − baseline"]["verdict"] == "holds"
    assert rows["convnext_atto frozen: early − baseline"]["id"] == "C1.1"
    md = (out / "claims.md").read_text()
    assert "| C1.1 | convnext_atto frozen: early − baseline | +20.0 [" in md and "**holds**" in md


def test_the_grid_control_compares_grids_at_one_input_with_paired_seeds(tmp_path):
    folders = []
    for seed in (0, 1, 2):
        folders.append(run_folder(tmp_path, f"base_s{seed}", 80 + seed, seed=seed))
        for variant, wb in (("last", 40), ("second_last", 70), ("third_last", 100)):
            folder = run_folder(tmp_path, f"late_{variant}_s{seed}", wb + 2 * seed, "late", seed=seed)
            results = json.loads((folder / "results.json").read_text())
            (folder / "results.json").write_text(json.dumps({**results, "variant": variant}))
            folders.append(folder)
    proc = subprocess.run([sys.executable, str(REPO / "scripts/study/grid_control.py"), *map(str, folders), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    rows = {c["label"]: c for c in json.loads((tmp_path / "out/claims.json").read_text())["comparisons"]}
    finer = rows["frozen: late 8x8 − late 2x2"]
    assert finer["seeds"] == 3 and finer["difference"] == pytest.approx(15.0) and finer["verdict"] == "holds"
    assert rows["frozen: late 8x8 − baseline"]["difference"] == pytest.approx(5.25)  # 25 + 0.5 s vs 20 + 0.25 s
    assert rows["frozen: late 2x2 − baseline"]["verdict"] == "does not hold" and finer["id"].startswith("G6.")
