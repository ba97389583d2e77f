#!/usr/bin/env python
r"""Tables, figure and boundary-token statistics of the grid-resolution study (scripts/study/grid_resolution.sh).

Example: python scripts/study/grid_resolution.py --study_dir runs/grid_resolution --data_root data/grid_resolution \\
             --grids 4 6 8 --out runs/grid_resolution
Reads the runs under STUDY_DIR/grid<G>/ (one folder per run, results.json + args.yaml) and the wall times in
STUDY_DIR/logs/timings.tsv; measures on each grid's CUB test masks how the bird meets the feature grid. Writes
OUT/grid_resolution.md, .csv, .json and .png, and the trends across grids as claims (OUT/claims.md, claims.json; ids
T8.k and T9.k, the verdict rule of bgmask/reporting/claims.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bgmask.data.cub import GT_MASK_SUB_PATH, CUBDataset
from bgmask.data.groups import difference_interval, wilson_interval
from bgmask.data.transforms import build_eval_transform
from bgmask.models.masking import NEAREST, MaskGrid, grid_fractions, grid_statistics
from bgmask.reporting.claims import Measure, compare, compare_change, load_spread, number, write_claims
from bgmask.reporting.figures import data_note, strategy_colour
from bgmask.reporting.runs import RunResult, is_synthetic_cub, load_runs

# The study's backbones: the masked map's stride (input pixels per feature) and a label.
BACKBONES = {"convnext_atto": (16, "ConvNeXt-atto (second-last stage)"), "vit_small_patch14_dinov2": (14, "ViT-S/14")}
# The paper's grids, measured on the synthetic birds for reference: ConvNeXt's last stage at 518 px is 16x16 (512 px
# tiles it exactly), a ViT/14 at 518 px has 37x37 tokens.
PAPER_GRIDS = (("ConvNeXt, last stage, paper (512 px)", 512, 16), ("ViT/14, paper (518 px)", 518, 37))
AREA = MaskGrid("area", 0.5)
# The study's strategy names and the strategy keys of the shared colours (bgmask.reporting.figures.strategy_colour).
DEFAULT_SPREAD = Path(__file__).resolve().parents[2] / "docs" / "seed_spread.json"
CONFOUNDED = "image size, input resolution and pretrained weights change with the grid"
CLAIM_GAIN_GROWS = f"8. Late masking's Waterbirds gain over the baseline grows with the grid ({CONFOUNDED})"
CLAIM_LATE_RISES = f"9. Late masking's Waterbirds top-1 rises with the grid ({CONFOUNDED})"
STRATEGY_KEYS = {"early": "early", "late": "late", "late (area)": "late:area", "late (fg mean)": "late:fg_mean",
                 "late (fg mean, area)": "late:fg_mean:area"}


def boundary_statistics(cub_root: str | Path, image_size: int, grid: int, batch_size: int = 50) -> dict[str, float]:
    """How the CUB test split's ground-truth birds meet a ``grid`` x ``grid`` feature map at ``image_size`` px (the
    evaluation transform's geometry): :func:`bgmask.models.masking.grid_fractions`, with late masking's kept cells by
    nearest-exact (``*``) and by area >= 0.5 (``area_*``)."""
    data = CUBDataset(cub_root, "test", mask_sub_path=GT_MASK_SUB_PATH, transform=build_eval_transform(image_size))
    sums: dict[str, dict[str, float]] = {"nearest": {}, "area": {}}
    for _, masks, _ in DataLoader(data, batch_size=batch_size):
        for name, to_grid in (("nearest", NEAREST), ("area", AREA)):
            for key, value in grid_statistics(masks, (grid, grid), to_grid).items():
                sums[name][key] = sums[name].get(key, 0.0) + value
    out = grid_fractions(sums["nearest"])
    out.update({f"area_{k}": v for k, v in grid_fractions(sums["area"]).items() if k != "boundary"})
    return out


@dataclass
class Cell:
    """One entry of the study: a head of a run at one grid size."""

    grid: int
    model: str
    regime: str
    head: str
    strategy: str  # baseline, early, late, late (fg mean), late (area), late (fg mean, area)
    seed: int | None
    cub: float
    cub_interval: tuple[float, float] | None
    wb: float | None
    wb_interval: tuple[float, float] | None
    worst: float | None
    worst_interval: tuple[float, float] | None
    bg_gap: float | None
    fg_attr: float | None
    wall_s: float | None
    run: str
    wb_counts: tuple[int, int] | None = None
    worst_counts: tuple[int, int] | None = None


def strategy_of(entry: RunResult) -> str:
    if entry.masking == "none":
        return "baseline"
    if entry.masking != "late":
        return entry.masking
    details = [d for d, on in (("fg mean", "fg mean" in entry.head), ("area", entry.mask_downsample == "area")) if on]
    return f"late ({', '.join(details)})" if details else "late"


def base_head(head: str) -> str:
    return head.replace(" (fg mean)", "")


def read_timings(study_dir: Path) -> dict[str, float]:
    path = study_dir / "logs" / "timings.tsv"
    times: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, _, seconds = line.partition("\t")
            if seconds.strip():
                times[name] = float(seconds)  # a stage run twice: its last time
    return times


def collect_cells(study_dir: Path, grids: list[int]) -> list[Cell]:
    times = read_timings(study_dir)
    cells = []
    for grid in grids:
        folder = study_dir / f"grid{grid}"
        # run folders only: tables/ (the grid's collect_results output) has a results.json too
        run_dirs = [p for p in folder.glob("*") if (p / "results.json").is_file() and (p / "args.yaml").is_file()]
        for run_dir in sorted(run_dirs):
            for e in load_runs(run_dir):
                diag = e.diagnostics if isinstance(e.diagnostics, dict) else {}
                attr = diag.get("fg_attribution")
                cells.append(Cell(
                    grid=grid, model=e.model_arch, regime=e.regime, head=base_head(e.head), strategy=strategy_of(e),
                    seed=e.seed, cub=e.cub_top1,
                    cub_interval=wilson_interval(e.cub_correct, e.cub_images) if e.cub_correct is not None else None,
                    wb=e.wb_top1,
                    wb_interval=wilson_interval(e.wb_correct, e.wb_images) if e.wb_correct is not None else None,
                    worst=e.wb_worst_group,
                    worst_interval=wilson_interval(*e.wb_worst_counts) if e.wb_worst_counts else None,
                    bg_gap=diag.get("bg_gap"), fg_attr=attr.get("mean") if isinstance(attr, dict) else attr,
                    wall_s=times.get(f"grid{grid}_{run_dir.name}"), run=str(run_dir),
                    wb_counts=(e.wb_correct, e.wb_images) if e.wb_correct is not None else None,
                    worst_counts=e.wb_worst_counts))
    return cells


def gains(cells: list[Cell]) -> list[dict]:
    """Each masked cell against the baseline of its grid, model, regime, head and seed: Waterbirds top-1 and worst
    group differences with Newcombe's interval."""
    base = {(c.grid, c.model, c.regime, c.head, c.seed): c for c in cells if c.strategy == "baseline"}
    rows = []
    for c in cells:
        b = base.get((c.grid, c.model, c.regime, c.head, c.seed))
        if c.strategy == "baseline" or b is None or not (c.wb_counts and b.wb_counts):
            continue
        row = {"grid": c.grid, "model": c.model, "regime": c.regime, "head": c.head, "strategy": c.strategy,
               "seed": c.seed, "wb_gain": difference_interval(*c.wb_counts, *b.wb_counts), "worst_gain": None,
               "cub_change": c.cub - b.cub}
        if c.worst_counts and b.worst_counts:
            row["worst_gain"] = difference_interval(*c.worst_counts, *b.worst_counts)
        rows.append(row)
    return rows


def trend_claims(cells: list[Cell], spread: dict[tuple, float]) -> list:
    """Claims 8 and 9 across grids, for every late-masking variant of a (model, regime, head) row and every pair of
    grids (coarse, fine): the change of its Waterbirds gain over the baseline
    (:func:`bgmask.reporting.claims.compare_change`) and the change of its own top-1
    (:func:`bgmask.reporting.claims.compare`). Single-seed verdicts use the seed spread of the row's baseline regime,
    measured at the demo's grid (4x4)."""
    by_key: dict[tuple, list[Measure]] = {}
    for c in cells:
        if c.wb is not None:
            counts = c.wb_counts or (None, None)
            by_key.setdefault((c.model, c.regime, c.head, c.strategy, c.grid), []).append(
                Measure(c.seed, c.wb, counts[0], counts[1], c.run))
    rows = sorted({k[:4] for k in by_key if k[3].startswith("late")})
    evidence = []
    for model, regime, head, strategy in rows:
        grids = sorted(g for (*key, g) in by_key if tuple(key) == (model, regime, head, strategy))
        sd = spread.get((model, regime, head, "wb"))
        row = f"{model_label(model, head)} {regime}, {strategy}"
        pairs = [(a, b) for i, a in enumerate(grids) for b in grids[i + 1:]]
        for coarse, fine in pairs:
            late = {g: by_key[(model, regime, head, strategy, g)] for g in (coarse, fine)}
            base = {g: by_key.get((model, regime, head, "baseline", g), []) for g in (coarse, fine)}
            label = f"{row}: gain at {fine}x{fine} − gain at {coarse}x{coarse}"
            evidence.append(compare_change(CLAIM_GAIN_GROWS, label, (late[fine], base[fine]),
                                           (late[coarse], base[coarse]), spread_sd=sd))
        for coarse, fine in pairs:
            evidence.append(compare(CLAIM_LATE_RISES, f"{row}: {fine}x{fine} − {coarse}x{coarse}",
                                    by_key[(model, regime, head, strategy, fine)],
                                    by_key[(model, regime, head, strategy, coarse)], spread_sd=sd))
    return number(evidence, prefix="T")


def _fmt(value, interval=None, digits=1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.{digits}f}"
    return text + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def _gain(g) -> str:
    return "–" if g is None else f"{g[0]:+.1f} [{g[1]:+.1f}, {g[2]:+.1f}]"


def model_label(model: str, head: str) -> str:
    label = BACKBONES.get(model, (None, model))[1]
    return label if head in ("-", "") else f"{label} {head}"


def write_markdown(path: Path, boundary: list[dict], cells: list[Cell], gain_rows: list[dict]) -> None:
    lines = ["### How the bird meets the feature grid (CUB test split, ground-truth masks)", "",
             "| grid | model | input px | bird tokens / image | boundary tokens / bird tokens | background in kept "
             "cells (nearest-exact / area) | bird in zeroed cells (nearest-exact / area) |",
             "|---|---|---|---|---|---|---|"]
    for b in boundary:
        lines.append(f"| {b['grid']}×{b['grid']} | {b['model']} | {b['image_size']} | {b['bird_tokens']:.1f} | "
                     f"{100 * b['boundary']:.1f} % | {100 * b['kept_background']:.1f} % / "
                     f"{100 * b['area_kept_background']:.1f} % | {100 * b['bird_dropped']:.1f} % / "
                     f"{100 * b['area_bird_dropped']:.1f} % |")
    lines += ["", "### Every run (top-1 %, 95 % Wilson intervals over the 400 test images; worst = worst Waterbirds "
              "(y, place) group)", "",
              "| grid | model | regime | strategy | seed | CUB | WB | worst | BG-Gap | FG-attr | wall s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    grids = sorted({r["grid"] for r in gain_rows})
    order = {"baseline": 0, "early": 1, "late": 2, "late (fg mean)": 3, "late (area)": 4, "late (fg mean, area)": 5}
    keys = sorted({(r["model"], r["head"], r["regime"], r["strategy"], r["seed"]) for r in gain_rows},
                  key=lambda k: (k[0], k[1], k[2], order.get(k[3], 9), k[4] or 0))
    for c in sorted(cells, key=lambda c: (c.model, c.head, c.regime, c.grid, order.get(c.strategy, 9), c.seed or 0)):
        lines.append(f"| {c.grid}×{c.grid} | {model_label(c.model, c.head)} | {c.regime} | {c.strategy} | {c.seed} | "
                     f"{_fmt(c.cub, c.cub_interval)} | {_fmt(c.wb, c.wb_interval)} | "
                     f"{_fmt(c.worst, c.worst_interval)} | {_fmt(c.bg_gap)} | {_fmt(c.fg_attr, digits=3)} | "
                     f"{_fmt(c.wall_s, digits=0)} |")
    lines += ["", "### Summary: Waterbirds top-1 gain over the baseline (points; one value per seed, then their mean)",
              "", "| model | regime | strategy | " + " | ".join(f"{g}×{g}" for g in grids) + " |",
              "|---|---|---|" + "---|" * len(grids)]
    for model, head, regime, strategy in sorted({k[:4] for k in keys},
                                                key=lambda k: (k[0], k[1], k[2], order.get(k[3], 9))):
        values = []
        for g in grids:
            seeds = sorted((r for r in gain_rows if (r["model"], r["head"], r["regime"], r["strategy"], r["grid"])
                            == (model, head, regime, strategy, g)), key=lambda r: r["seed"] or 0)
            gain = [r["wb_gain"][0] for r in seeds]
            values.append("–" if not gain else ", ".join(f"{v:+.1f}" for v in gain)
                          + (f" (mean {sum(gain) / len(gain):+.1f})" if len(gain) > 1 else ""))
        lines.append(f"| {model_label(model, head)} | {regime} | {strategy} | " + " | ".join(values) + " |")
    lines += ["", "### Against the baseline (points; Newcombe 95 % intervals, conservative for the shared test images)",
              "", "| model | regime | strategy | seed | " + " | ".join(f"{g}×{g} WB / worst / CUB" for g in grids)
              + " |", "|---|---|---|---|" + "---|" * len(grids)]
    for model, head, regime, strategy, seed in keys:
        by_grid = {r["grid"]: r for r in gain_rows if (r["model"], r["head"], r["regime"], r["strategy"], r["seed"])
                   == (model, head, regime, strategy, seed)}
        values = [f"{_gain(by_grid[g]['wb_gain'])} / {_gain(by_grid[g]['worst_gain'])} / "
                  f"{by_grid[g]['cub_change']:+.1f}" if g in by_grid else "–" for g in grids]
        lines.append(f"| {model_label(model, head)} | {regime} | {strategy} | {seed} | " + " | ".join(values) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_figure(path: Path, boundary: list[dict], gain_rows: list[dict], synthetic: list[bool] = ()) -> None:
    """The gains over the baseline per grid (one panel per model and regime, each strategy in its shared colour)
    and the boundary statistics; ``synthetic``: whether each grid's benchmark is the synthetic one (the title)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["head"], r["regime"]) for r in gain_rows if r["head"] in ("-", "GAP")},
                    key=lambda p: (p[0], p[1], p[2] != "frozen"))
    cols = max(2, math.ceil((len(panels) + 1) / 2))
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 7.0), squeeze=False)
    for ax, (model, head, regime) in zip(axes.flat, panels):
        second_last = "second-last" in BACKBONES.get(model, (None, ""))[1]  # the table's late:second_last column
        for strategy, column in STRATEGY_KEYS.items():
            colour = strategy_colour(column.replace("late", "late:second_last", 1) if second_last else column)
            seeds = sorted({r["seed"] or 0 for r in gain_rows})
            for k, seed in enumerate(seeds):  # one line per seed, later seeds shifted right and unlabelled
                key = (model, head, regime, strategy, seed)
                rows = sorted((r for r in gain_rows
                               if (r["model"], r["head"], r["regime"], r["strategy"], r["seed"] or 0) == key),
                              key=lambda r: r["grid"])
                if not rows:
                    continue
                x = [r["grid"] + 0.08 * k for r in rows]
                wb = [r["wb_gain"] for r in rows]
                ax.errorbar(x, [g[0] for g in wb], yerr=[[g[0] - g[1] for g in wb], [g[2] - g[0] for g in wb]],
                            color=colour, marker="o", capsize=3, alpha=1.0 if k == 0 else 0.6,
                            label=f"{strategy}: WB top-1" if k == 0 else None)
                worst = [(x_, r["worst_gain"][0]) for x_, r in zip(x, rows) if r["worst_gain"]]
                if worst:
                    ax.plot(*zip(*worst), color=colour, marker="s", linestyle="--", alpha=0.5,
                            label=f"{strategy}: worst group" if k == 0 else None)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(f"{model_label(model, head)}, {regime} (one line per seed)", fontsize=9)
        ax.set_xlabel("feature grid (G×G)")
        ax.set_ylabel("gain over the baseline (points)")
        ax.set_xticks(sorted({r["grid"] for r in gain_rows}))
        ax.legend(fontsize=6)
    ax = axes.flat[len(panels)]
    for model, marker in (("ConvNeXt", "o"), ("ViT", "^")):
        rows = sorted((b for b in boundary if b["model"].startswith(model) and "paper" not in b["model"]),
                      key=lambda b: b["grid"])
        paper = [b for b in boundary if b["model"].startswith(model) and "paper" in b["model"]]
        if rows:
            ax.plot([b["grid"] for b in rows], [100 * b["boundary"] for b in rows], marker=marker, color="k",
                    label=f"{model}: boundary / bird tokens")
            ax.plot([b["grid"] for b in rows], [100 * b["kept_background"] for b in rows], marker=marker,
                    color="tab:gray", label=f"{model}: background in kept cells")
        for b in paper:
            ax.plot([b["grid"]], [100 * b["boundary"]], marker=marker, color="k", markerfacecolor="none")
            ax.plot([b["grid"]], [100 * b["kept_background"]], marker=marker, color="tab:gray",
                    markerfacecolor="none")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({b["grid"] for b in boundary}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("feature grid (G×G; open markers: the paper's grids)")
    ax.set_ylabel("%")
    ax.set_title("how the bird meets the grid (test masks)", fontsize=9)
    ax.legend(fontsize=6)
    for extra in list(axes.flat)[len(panels) + 1:]:
        extra.axis("off")
    fig.suptitle(textwrap.fill("Late vs early masking against the feature-grid resolution" + data_note(list(synthetic)),
                               int(fig.get_figwidth() * 12)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study_dir", required=True, help="the study's output folder (holds grid<G>/ and logs/)")
    p.add_argument("--data_root", required=True, help="the study's benchmarks (holds grid<G>/CUB_200_2011)")
    p.add_argument("--grids", type=int, nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed_spread", default=str(DEFAULT_SPREAD),
                   help="seed spread per regime for single-seed verdicts (default: %(default)s; none: no file)")
    args = p.parse_args(argv)
    study_dir, data_root, out = Path(args.study_dir), Path(args.data_root), Path(args.out)
    grids = sorted(args.grids)
    missing = [g for g in grids if not (data_root / f"grid{g}" / "CUB_200_2011" / "images.txt").is_file()]
    if missing:
        print(f"error: no benchmark for grid(s) {missing} under {data_root} (grid<G>/CUB_200_2011)", file=sys.stderr)
        return 2
    boundary = []
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for grid in grids:
        cub_root = data_root / f"grid{grid}" / "CUB_200_2011"
        for stride, label in BACKBONES.values():
            boundary.append({"grid": grid, "model": label, "image_size": stride * grid,
                             **boundary_statistics(cub_root, stride * grid, grid)})
    finest = data_root / f"grid{grids[-1]}" / "CUB_200_2011"
    for label, size, grid in PAPER_GRIDS:
        boundary.append({"grid": grid, "model": label, "image_size": size, **boundary_statistics(finest, size, grid)})
    cells = collect_cells(study_dir, grids)
    if not cells:
        print(f"warning: no finished runs under {study_dir}/grid<G>/; writing the boundary statistics only",
              file=sys.stderr)
    gain_rows = gains(cells)
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(out / "grid_resolution.md", boundary, cells, gain_rows)
    with open(out / "grid_resolution.csv", "w", newline="") as f:
        fields = [k for k in asdict(cells[0]) if k not in ("wb_counts", "worst_counts")] if cells else []
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for c in cells:
            writer.writerow(asdict(c))
    (out / "grid_resolution.json").write_text(json.dumps(
        {"boundary": boundary, "cells": [asdict(c) for c in cells], "gains": gain_rows}, indent=1))
    trends = trend_claims(cells, load_spread(None if args.seed_spread == "none" else args.seed_spread))
    if trends:
        seeds = sorted({c.seed for c in cells if c.seed is not None})
        write_claims(trends, out, "Grid study: late masking across grids (confounded)",
                     note=f"Grids {', '.join(f'{g}x{g}' for g in grids)}; seeds {', '.join(map(str, seeds))}. Each "
                          f"grid has its own images, input size and pretrained backbone (the control, "
                          f"scripts/study/grid_control.sh, varies the grid alone). Synthetic benchmark.")
    if gain_rows:
        write_figure(out / "grid_resolution.png", boundary, gain_rows,
                     [is_synthetic_cub(data_root / f"grid{g}" / "CUB_200_2011") for g in grids])
    print((out / "grid_resolution.md").read_text())
    print(f"Wrote {out}/grid_resolution.md, .csv, .json" + (", .png" if gain_rows else "")
          + (f"; {out}/claims.md, claims.json" if trends else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
