"""The group protocol's table and figure (``--dataset waterbirds`` / ``csv`` runs), with what a number must beat.

Each block of the table (dataset, architecture, head, regime) starts with two reference rows computed from the test
split's counts: the constant predictor of the training split's majority class (every group of that class right,
every other group wrong: worst group 0 %) and chance (1/K in every group). A run whose every group accuracy lies
within the 95 % Wilson interval of a constant predictor's (for some class) has collapsed onto that class: it is
marked ``collapsed`` in the table and hatched in the figure, whatever its averages say. Runs that differ only in
their seed get a summary row: the mean and the min–max across seeds.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from bgmask import strategies
from bgmask.data.groups import wilson_interval
from bgmask.reporting.results import _fmt, to_markdown
from bgmask.reporting.runs import RunResult

GROUP_FIGURES = ("worst_group", "adjusted_average", "average")


# ------------------------------------------------------------------------------------------- reference rows
def group_class(name: str) -> int:
    """The class of a group from its name (``y{class}_...``, as the benchmarks name them)."""
    match = re.match(r"y(\d+)_", name)
    if match is None:
        raise ValueError(f"cannot read the class of group {name!r} (expected y<class>_...)")
    return int(match.group(1))


def constant_predictor(metrics: dict, label: int, train_sizes: dict[str, int] | None = None) -> dict:
    """The figures of a predictor that answers ``label`` for every image, from a set's group counts."""
    groups = metrics["groups"]
    accs = {g: 100.0 if group_class(g) == label else 0.0 for g in groups}
    counts = {g: v["num_images"] for g, v in groups.items()}
    n = sum(counts.values())
    weights = {g: float((train_sizes or counts).get(g, 0)) for g in groups}
    total_w = sum(weights.values()) or 1.0
    return {"groups": accs, "worst_group": min(accs.values()),
            "average": sum(accs[g] * counts[g] for g in groups) / n,
            "adjusted_average": sum(accs[g] * weights[g] for g in groups) / total_w}


def chance(num_classes: int) -> dict:
    value = 100.0 / num_classes
    return {"worst_group": value, "adjusted_average": value, "average": value}


def majority_class(train_sizes: dict[str, int]) -> int:
    per_class: dict[int, int] = {}
    for g, n in train_sizes.items():
        per_class[group_class(g)] = per_class.get(group_class(g), 0) + n
    return max(sorted(per_class), key=lambda c: per_class[c])


def collapsed_onto(metrics: dict, classes: list[int]) -> int | None:
    """The class a run collapsed onto: every group's accuracy within the 95 % Wilson interval of the constant
    predictor of that class at the group's size; None when no constant predictor explains the run."""
    groups = metrics.get("groups") or {}
    if not groups:
        return None
    for label in classes:
        inside = True
        for g, v in groups.items():
            n = v["num_images"]
            low, high = wilson_interval(n if group_class(g) == label else 0, n)
            inside &= low - 1e-9 <= v["top1"] <= high + 1e-9
        if inside:
            return label
    return None


def train_sizes_of(run: RunResult) -> dict[str, int] | None:
    path = Path(run.run_dir) / "results.json"
    sizes = json.loads(path.read_text()).get("train_group_sizes") if path.is_file() else None
    return {str(k): int(v) for k, v in sizes.items()} if sizes else None


# ------------------------------------------------------------------------------------------------- table
def _cell(value: float | None, interval=None) -> str:
    return _fmt(value) + (f" [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "")


def table_order(r: RunResult) -> tuple:
    """The group table's order of runs: block, strategy (registry order), imbalance options, seed."""
    order = strategies.names()
    return r.block, order.index(r.masking) if r.masking in order else 99, r.balance, r.seed or 0


def group_table(runs: list[RunResult], split: str = "test") -> tuple[list[str], list[list[str]]]:
    """Per block: the reference rows, then one row per run (the ``split`` set's worst group, adjusted average and
    average with their 95 % Wilson intervals, the last epoch's worst group, the selection and the selected epoch,
    ``collapsed`` when a constant predictor explains it), then per strategy with several seeds their mean and
    [min–max]."""
    header = ["dataset", "architecture", "head", "regime", "strategy", "seed",
              *(f"{split} {f.replace('_', ' ')}" for f in GROUP_FIGURES), f"{split} worst group, last epoch",
              "selection", "epoch", "collapsed"]
    table = []
    for key in sorted({r.block for r in runs}):
        block = sorted((r for r in runs if r.block == key), key=table_order)
        table += reference_rows(key, block[0], split)
        for r in block:
            table.append(run_row(r, split))
        labels = list(dict.fromkeys(r.label for r in block))
        for label in labels:
            seeds = [r for r in block if r.label == label]
            if len(seeds) > 1:
                table.append(seed_summary_row(key, label, seeds, split))
    return header, table


def reference_rows(key: tuple, run: RunResult, split: str) -> list[list[str]]:
    metrics = run.sets.get(split)
    if not metrics or not metrics.get("groups"):
        return []
    sizes = train_sizes_of(run)
    classes = sorted({group_class(g) for g in metrics["groups"]})
    label = majority_class(sizes) if sizes else classes[0]
    const = constant_predictor(metrics, label, sizes)
    rand = chance(len(classes))
    blank = ["–", "–", "–", "reference"]  # last epoch, selection, epoch; the collapsed column names the row
    return [[*key, f"constant (always class {label})", "–", *(_fmt(const[f]) for f in GROUP_FIGURES), *blank],
            [*key, f"chance (1/{len(classes)})", "–", *(_fmt(rand[f]) for f in GROUP_FIGURES), *blank]]


def run_row(r: RunResult, split: str) -> list[str]:
    m = r.sets.get(split, {})
    cells = [_cell(m.get(f), (m.get("intervals") or {}).get(f)) for f in GROUP_FIGURES]
    last = (r.last_epoch or {}).get(split, {}).get("worst_group") if r.last_epoch else m.get("worst_group")
    chosen = r.best.get("selected_on", "")
    metric = next((k for k in GROUP_FIGURES if k in r.best), "top1" if "top1" in r.best else "")
    selection = f"{chosen} {metric.replace('_', ' ')} {_fmt(r.best.get(metric))}" if chosen else "–"
    if r.best.get("refit"):  # DFR: fitted on that set, so its figure there is not a selection score
        selection = f"refit on {chosen}"
    if r.best.get("note"):
        selection += " (tie-broken)"
    classes = sorted({group_class(g) for g in m.get("groups", {})})
    onto = collapsed_onto(m, classes) if classes else None
    return [*r.block, r.label, str(r.seed), *cells, _fmt(last), selection, str(r.best.get("epoch", "–")),
            "–" if onto is None else f"collapsed (class {onto})"]


def seed_summary_row(key: tuple, label: str, runs: list[RunResult], split: str) -> list[str]:
    cells = []
    for f in GROUP_FIGURES:
        values = [r.figure(f, split) for r in runs if r.figure(f, split) is not None]
        cells.append(f"{statistics.mean(values):.1f} [{min(values):.1f}–{max(values):.1f}]" if values else "–")
    collapsed = sum(row[-1] != "–" for row in (run_row(r, split) for r in runs))
    return [*key, label, f"mean of {len(runs)}", *cells, "–", "–", "–", f"{collapsed}/{len(runs)} collapsed"]


def group_markdown(runs: list[RunResult]) -> str:
    header, table = group_table(runs)
    return ("Group protocol (group_DRO): top-1 (%) on the test split: the worst (y, attribute) group, the adjusted "
            "average (each group's accuracy weighted by its size in training, as group_DRO / WILDS / DFR report it) "
            "and the average over all test images, each with its 95 % Wilson interval; the best epoch was selected "
            "on the named set and metric (ties broken by the adjusted average, then the validation loss). Reference "
            "rows: the constant predictor of the training majority class and chance, from the test split's counts; "
            "a run is 'collapsed' when every group accuracy lies within a constant predictor's 95 % interval. Runs "
            "of several seeds: mean [min–max] across seeds.\n\n" + to_markdown(header, table))
