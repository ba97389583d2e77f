"""Collect run results (``results.json``) into a paper-style table (Markdown, CSV, JSON) and a bar chart."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("none", "early", "late")
STRATEGY_NAMES = {"none": "baseline", "early": "early masking", "late": "late masking"}


@dataclass(frozen=True)
class RunResult:
    """The numbers of one classifier run that the table needs."""

    run_dir: str
    model_arch: str
    regime: str  # "frozen", "fine-tuned" (pretrained weights) or "from scratch"
    head: str
    masking: str
    mask_source: str
    cub_top1: float
    cub_images: int
    wb_top1: float | None
    wb_images: int
    wb_worst_group: float | None

    @property
    def row_key(self) -> tuple[str, str, str]:
        return self.model_arch, self.head, self.regime

    @property
    def ood_gap(self) -> float | None:
        return None if self.wb_top1 is None else self.cub_top1 - self.wb_top1


def _regime_of(args: dict) -> str:
    if args.get("freeze_backbone"):
        return "frozen"
    pretrained = args.get("start_weights") == "DEFAULT" or args.get("pretrained_path")
    return "fine-tuned" if pretrained else "from scratch"


def _head_of(args: dict, results: dict) -> str:
    if not (results.get("model_arch", "").startswith("vit") or "vit" in results.get("model_arch", "")):
        return "-"
    if args.get("class_token_only"):
        return "CLS"
    if args.get("patch_tokens_only"):
        return "GAP"
    return "CLS+GAP"


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """Read ``run_dir/results.json`` (and ``args.yaml`` for the regime and head)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished (or the folder is not a run).")
    results = json.loads(path.read_text())
    args = {}
    if (run_dir / "args.yaml").is_file():
        import yaml

        args = yaml.safe_load((run_dir / "args.yaml").read_text()) or {}
    wb = results.get("waterbirds") or {}
    return RunResult(
        run_dir=str(run_dir), model_arch=results["model_arch"],
        regime=_regime_of(args), head=_head_of(args, results),
        masking=results["masking"], mask_source=results.get("mask_source", "-"),
        cub_top1=results["cub_test"]["top1"], cub_images=results["cub_test"]["num_images"],
        wb_top1=wb.get("top1"), wb_images=wb.get("num_images", 0), wb_worst_group=wb.get("worst_group"))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def build_table(runs: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Rows: architecture x head x regime. Columns: per strategy CUB / Waterbirds / gap / worst group."""
    header = ["architecture", "head", "regime"]
    for s in STRATEGIES:
        name = STRATEGY_NAMES[s]
        header += [f"{name} CUB", f"{name} WB", f"{name} gap", f"{name} WB worst"]
    rows = {}
    for run in runs:
        if run.row_key in rows and run.masking in rows[run.row_key]:
            raise ValueError(f"two runs for the same table cell ({run.row_key}, {run.masking}): "
                             f"{rows[run.row_key][run.masking].run_dir} and {run.run_dir}")
        rows.setdefault(run.row_key, {})[run.masking] = run
    table = []
    for key in sorted(rows):
        line = list(key[:1]) + [key[1], key[2]]
        for s in STRATEGIES:
            r = rows[key].get(s)
            line += [_fmt(r.cub_top1), _fmt(r.wb_top1), _fmt(r.ood_gap), _fmt(r.wb_worst_group)] if r else ["–"] * 4
        table.append(line)
    return header, table


def to_markdown(header: list[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_outputs(runs: list[RunResult], out_dir: str | os.PathLike, note: str = "") -> dict[str, Path]:
    """Write results.md, results.csv, results.json and results.png into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, table = build_table(runs)
    md = ("Top-1 accuracy (%) on the CUB test split (CUB) and on the same images with Waterbirds backgrounds (WB); "
          "gap = CUB - WB; WB worst = worst (y, place) group.\n\n" + (note + "\n\n" if note else "")
          + to_markdown(header, table))
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "json": out_dir / "results.json",
             "png": out_dir / "results.png"}
    paths["md"].write_text(md)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)
    paths["json"].write_text(json.dumps([r.__dict__ | {"ood_gap": r.ood_gap} for r in runs], indent=2) + "\n")
    plot_accuracy_bars(runs, paths["png"])
    return paths


def plot_accuracy_bars(runs: list[RunResult], path: Path) -> None:
    """Grouped bars: CUB test vs Waterbirds top-1 for each strategy, one panel per architecture/head/regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({r.row_key for r in runs})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        by_strategy = {r.masking: r for r in runs if r.row_key == key}
        present = [s for s in STRATEGIES if s in by_strategy]
        xs = range(len(present))
        cub = [by_strategy[s].cub_top1 for s in present]
        wb = [by_strategy[s].wb_top1 or 0.0 for s in present]
        ax.bar([x - 0.2 for x in xs], cub, width=0.4, label="CUB test", color="#4878d0")
        ax.bar([x + 0.2 for x in xs], wb, width=0.4, label="Waterbirds (OOD)", color="#ee854a")
        for x, c, w in zip(xs, cub, wb):
            ax.text(x - 0.2, c + 1, f"{c:.0f}", ha="center", fontsize=8)
            ax.text(x + 0.2, w + 1, f"{w:.0f}", ha="center", fontsize=8)
        ax.set_xticks(list(xs), [STRATEGY_NAMES[s] for s in present])
        ax.set_ylim(0, 105)
        arch, head, regime = key
        ax.set_title(f"{arch}{'' if head == '-' else f' ({head})'}, {regime}", fontsize=9)
        ax.set_ylabel("top-1 (%)")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
