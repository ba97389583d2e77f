"""What ``scripts/collect_results.py`` writes: the results tables (markdown, CSV, JSON) and the figures beside them
(drawn by :mod:`bgmask.reporting.figures` and :mod:`bgmask.reporting.gallery`)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from bgmask.reporting.figures import diagnostics_plan, draw, group_plan, results_plan
from bgmask.reporting.gallery import plot_attribution_gallery
from bgmask.reporting.group_results import group_markdown, group_table
from bgmask.reporting.results import Accuracy, accuracy, build_table, diagnostics_table, to_markdown
from bgmask.reporting.runs import RunResult

# The keys of an entry in OUT/results.json (the paper table's runs), in this order.
TABLE_ENTRY = ("run_dir", "model_arch", "regime", "head", "masking", "mask_source", "cub_top1", "cub_images", "wb_top1",
               "wb_images", "wb_worst_group", "cub_correct", "wb_correct", "seed", "diagnostics", "data_path",
               "image_size", "variant", "has_gallery", "wb_worst_counts", "mask_downsample", "num_classes",
               "synthetic", "weights", "probe_head")


def write_outputs(runs: list[RunResult], out_dir: str | os.PathLike, note: str = "") -> dict[str, Path]:
    """Write results.md, results.csv, results.json and results.png into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, table = build_table(runs)
    md = ("Top-1 accuracy (%) on the CUB test split (CUB) and on the same images with Waterbirds backgrounds (WB), "
          "with its 95 % Wilson interval over the test images [low, high], or mean ± std over seeds (n runs); "
          "gap = CUB - WB; WB worst = worst (y, place) group (means over seeds).\n\n"
          + (note + "\n\n" if note else "")
          + to_markdown(header, table))
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "json": out_dir / "results.json",
             "png": out_dir / "results.png"}
    paths["md"].write_text(md)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)
    paths["json"].write_text(json.dumps(
        [{k: getattr(r, k) for k in TABLE_ENTRY} | {"ood_gap": r.ood_gap, "cub_interval": accuracy([r], "cub").__dict__,
                       "wb_interval": (accuracy([r], "wb") or Accuracy(float("nan"))).__dict__} for r in runs],
        indent=2) + "\n")
    draw(results_plan(runs), paths["png"])
    with_diagnostics = [r for r in runs if r.diagnostics and "bg_gap" in r.diagnostics]
    if with_diagnostics:
        header, table = diagnostics_table(with_diagnostics)
        with open(paths["md"], "a") as f:
            f.write("\nBackground reliance (docs/diagnostics.md): top-1 (%) on the Backgrounds-Challenge views of the "
                    "CUB test set, BG-Gap = mixed_same - mixed_rand, FG-attr = share of the attribution inside the "
                    "bird.\n\n" + to_markdown(header, table))
        paths["diagnostics_png"] = out_dir / "diagnostics.png"
        draw(diagnostics_plan(with_diagnostics), paths["diagnostics_png"])
        gallery = plot_attribution_gallery(with_diagnostics, out_dir / "attribution_gallery.png")
        if gallery is not None:
            paths["gallery_png"] = gallery
    return paths


def write_group_outputs(runs: list[RunResult], out_dir: str | os.PathLike) -> dict[str, Path]:
    """The group-protocol table (group_results.md / .csv) and its figure (group_results.png)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, table = group_table(runs)
    paths = {"group_md": out_dir / "group_results.md", "group_csv": out_dir / "group_results.csv",
             "group_png": out_dir / "group_results.png"}
    paths["group_md"].write_text(group_markdown(runs))
    with open(paths["group_csv"], "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    draw(group_plan(runs), paths["group_png"])
    return paths
