"""Collect run results (``results.json``) into a paper-style table (Markdown, CSV, JSON) and a bar chart."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bgmask import strategies
from bgmask.data.groups import wilson_interval
from bgmask.diagnostics.views import VIEWS
from bgmask.reporting.runs import RunResult


def strategy_columns(runs: list[RunResult]) -> list[str]:
    """The strategy columns of the table (:attr:`RunResult.column`): the paper's strategies (those with a
    ``table_column``), each followed by its variants the runs used (late masking after the second-last stage/block),
    then any other strategy the runs used (registry order, then names unknown here)."""
    used = {r.column for r in runs}
    paper = sorted((n for n in strategies.names() if strategies.get(n).table_column is not None),
                   key=lambda n: strategies.get(n).table_column)
    columns = []
    for name in paper:
        columns += [name, *sorted(c for c in used if c.startswith(f"{name}:"))]
    registered = [n for n in strategies.names() if n not in paper and n in used]
    return [*columns, *registered, *sorted(used - set(columns) - set(registered))]


def column_label(column: str) -> str:
    """``late`` -> ``late masking``; ``late:second_last:area`` -> ``late masking (second-last, area)``."""
    name, *details = column.split(":")
    return strategies.label(name) + (f" ({', '.join(d.replace('_', '-') for d in details)})" if details else "")


@dataclass(frozen=True)
class Accuracy:
    """One table value: a single run's top-1 with its Wilson interval, or the mean and std over seeds."""

    value: float
    low: float | None = None  # 95 % Wilson interval (single run)
    high: float | None = None
    std: float | None = None  # over seeds (several runs)
    runs: int = 1

    def __str__(self) -> str:
        if self.runs > 1:
            return f"{self.value:.1f} ± {self.std:.1f} (n={self.runs})"
        if self.low is None:
            return f"{self.value:.1f}"
        return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"

    @property
    def error(self) -> tuple[float, float]:
        """Distance below and above ``value`` for an error bar."""
        if self.runs > 1:
            return self.std, self.std
        if self.low is None:
            return 0.0, 0.0
        return self.value - self.low, self.high - self.value


def accuracy(runs: list[RunResult], split: str) -> Accuracy | None:
    """``split`` ('cub' or 'wb') top-1 of one run (with its interval) or of several seeds (mean ± std)."""
    values = [getattr(r, f"{split}_top1") for r in runs]
    if any(v is None for v in values):
        return None
    if len(runs) > 1:
        return Accuracy(statistics.fmean(values), std=statistics.stdev(values), runs=len(runs))
    run = runs[0]
    correct, total = getattr(run, f"{split}_correct"), getattr(run, f"{split}_images")
    if correct is None or not total:
        return Accuracy(values[0])
    return Accuracy(values[0], *wilson_interval(correct, total))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def group_cells(runs: list[RunResult]) -> dict[tuple[str, str, str], dict[str, list[RunResult]]]:
    """Runs per table row and strategy; several runs in one cell must be seeds of one configuration."""
    rows: dict[tuple[str, str, str], dict[str, list[RunResult]]] = {}
    for run in runs:
        cell = rows.setdefault(run.row_key, {}).setdefault(run.column, [])
        same_seed = [r for r in cell if r.seed == run.seed]
        if same_seed:
            raise ValueError(f"two runs for the same table cell ({run.row_key}, {run.column}) with the same seed "
                             f"{run.seed}: {same_seed[0].run_dir} and {run.run_dir}")
        cell.append(run)
    return rows


def build_table(runs: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Rows: architecture x head x regime. Columns: per strategy CUB / Waterbirds (95 % Wilson interval over the
    test images, or mean ± std over seeds) / gap / worst group."""
    header = ["architecture", "head", "regime"]
    columns = strategy_columns(runs)
    for s in columns:
        name = column_label(s)
        header += [f"{name} CUB", f"{name} WB", f"{name} gap", f"{name} WB worst"]
    rows = group_cells(runs)
    table = []
    for key in sorted(rows):
        line = list(key)
        for s in columns:
            cell = rows[key].get(s)
            if not cell:
                line += ["–"] * 4
                continue
            cub, wb = accuracy(cell, "cub"), accuracy(cell, "wb")
            gaps = [r.ood_gap for r in cell]
            worst = [r.wb_worst_group for r in cell]
            line += [str(cub), "–" if wb is None else str(wb), _fmt(_mean(gaps)), _fmt(_mean(worst))]
        table.append(line)
    return header, table


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else statistics.fmean(values)


def to_markdown(header: list[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def diagnostics_table(runs: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """One row per run: the view accuracies, BG-Gap and the attribution share inside the bird."""
    header = ["architecture", "head", "regime", "strategy", *VIEWS, "BG-Gap", "FG-attr"]
    table, columns = [], strategy_columns(runs)
    for r in sorted(runs, key=lambda r: (r.row_key, columns.index(r.column), r.seed or 0)):
        d = r.diagnostics
        table.append([*r.row_key, column_label(r.column), *(_fmt(d[v]["top1"]) for v in VIEWS),
                      _fmt(d["bg_gap"]), f"{d['fg_attribution']:.2f}"])
    return header, table
