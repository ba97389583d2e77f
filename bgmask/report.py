"""What ``scripts/collect_results.py`` writes: the results tables (markdown, CSV, JSON) and the figures beside them."""

from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

from bgmask.diagnostics import VIEWS, gallery_path
from bgmask.group_results import (
    GROUP_FIGURES,
    GroupRunResult,
    chance,
    collapsed_onto,
    group_class,
    group_markdown,
    group_table,
    reference_rows,
)
from bgmask.results import (
    Accuracy,
    RunResult,
    accuracy,
    build_table,
    column_label,
    diagnostics_table,
    group_cells,
    strategy_columns,
    to_markdown,
)


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
        [r.__dict__ | {"ood_gap": r.ood_gap, "cub_interval": accuracy([r], "cub").__dict__,
                       "wb_interval": (accuracy([r], "wb") or Accuracy(float("nan"))).__dict__} for r in runs],
        indent=2) + "\n")
    plot_accuracy_bars(runs, paths["png"])
    with_diagnostics = [r for r in runs if r.diagnostics and "bg_gap" in r.diagnostics]
    if with_diagnostics:
        header, table = diagnostics_table(with_diagnostics)
        with open(paths["md"], "a") as f:
            f.write("\nBackground reliance (docs/diagnostics.md): top-1 (%) on the Backgrounds-Challenge views of the "
                    "CUB test set, BG-Gap = mixed_same - mixed_rand, FG-attr = share of the attribution inside the "
                    "bird.\n\n" + to_markdown(header, table))
        paths["diagnostics_png"] = out_dir / "diagnostics.png"
        plot_diagnostics(with_diagnostics, paths["diagnostics_png"])
        gallery = plot_attribution_gallery(with_diagnostics, out_dir / "attribution_gallery.png")
        if gallery is not None:
            paths["gallery_png"] = gallery
    return paths


def write_group_outputs(runs: list[GroupRunResult], out_dir: str | os.PathLike) -> dict[str, Path]:
    """The group-protocol table (group_results.md / .csv) and its figure (group_results.png)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, table = group_table(runs)
    paths = {"group_md": out_dir / "group_results.md", "group_csv": out_dir / "group_results.csv",
             "group_png": out_dir / "group_results.png"}
    paths["group_md"].write_text(group_markdown(runs))
    with open(paths["group_csv"], "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    plot_group_protocol(runs, paths["group_png"])
    return paths


def plot_group_protocol(runs: list[GroupRunResult], path: Path) -> None:
    """Per dataset/architecture/head/regime: worst group and both averages per strategy (the mean over seeds with
    the min–max as error bars, or one run's Wilson intervals); collapsed runs hatched; chance as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({r.row_key for r in runs})
    fig, axes = panel_grid(plt, len(keys), 8.0, 4.2, per_row=2)
    colors = {"worst_group": "#d65f5f", "adjusted_average": "#4878d0", "average": "#6acc64"}
    order = [header_row[4] for header_row in group_table(runs)[1]]
    for ax, key in zip(axes, keys):
        block = [r for r in runs if r.row_key == key]
        labels = [lab for lab in dict.fromkeys(order) if any(r.label == lab for r in block)]
        width = 0.8 / len(GROUP_FIGURES)
        for k, figure in enumerate(GROUP_FIGURES):
            for i, lab in enumerate(labels):
                cell = [r for r in block if r.label == lab]
                values = [r.figure(figure) or 0.0 for r in cell]
                mean = sum(values) / len(values)
                if len(cell) > 1:
                    err = [[mean - min(values)], [max(values) - mean]]
                else:
                    iv = (cell[0].sets.get("test", {}).get("intervals") or {}).get(figure)
                    err = [[mean - iv[0]], [iv[1] - mean]] if iv else None
                test = [r.sets.get("test", {}) for r in cell]
                collapsed = sum(collapsed_onto(m, sorted({group_class(g) for g in m.get("groups", {})})) is not None
                                for m in test if m.get("groups"))
                x = i + (k - 1) * width
                ax.bar(x, mean, width=width, color=colors[figure], yerr=err, capsize=2,
                       hatch="//" if collapsed else None, edgecolor="black" if collapsed else None,
                       label=figure.replace("_", " ") if i == 0 else None)
                ax.text(x, mean + 1.5, f"{mean:.0f}", ha="center", fontsize=6)
                if collapsed and k == 0:
                    ax.text(i, 98, f"{collapsed}/{len(cell)} collapsed", ha="center", fontsize=6)
        num_classes = len({group_class(g) for r in block for g in r.sets.get("test", {}).get("groups", {})}) or 2
        ax.axhline(chance(num_classes)["worst_group"], color="grey", ls="--", lw=0.8, label="chance")
        reference = constant_reference(block)
        if reference is not None:
            ax.axhline(reference, color="#4878d0", ls=":", lw=1.0, label="constant predictor, adjusted average")
        ax.set_xticks(range(len(labels)), [textwrap.fill(lab, 16) for lab in labels], fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_ylabel("test top-1 (%)")
        seeds = max(sum(r.label == lab for r in block) for lab in labels)
        dataset, arch, head, regime = key
        ax.set_title(f"{dataset}: {arch}{'' if head == '-' else f' ({head})'}, {regime}"
                     f"{f', mean of {seeds} seeds (bars: min-max)' if seeds > 1 else ''}; hatched: a run collapsed "
                     f"onto one class", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def constant_reference(block: list[GroupRunResult]) -> float | None:
    """The adjusted average of the constant majority-class predictor on the block's test split (its table row)."""
    row = reference_rows(block[0].row_key, block[0], "test")
    return float(row[0][7]) if row else None


def plot_diagnostics(runs: list[RunResult], path: Path) -> None:
    """Per architecture/head/regime: top-1 on each view, one bar per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({r.row_key for r in runs})
    fig, axes = panel_grid(plt, len(keys), 5.0, 3.6)
    colors = {"none": "#4878d0", "early": "#6acc64", "late": "#d65f5f"}
    for ax, key in zip(axes, keys):
        cell = {r.column: r for r in runs if r.row_key == key}
        present = [s for s in strategy_columns(runs) if s in cell]
        width = 0.8 / max(1, len(present))
        for k, s in enumerate(present):
            d = cell[s].diagnostics
            xs = [i + (k - (len(present) - 1) / 2) * width for i in range(len(VIEWS))]
            ax.bar(xs, [d[v]["top1"] for v in VIEWS], width=width, color=colors.get(s.split(":")[0]),
                   label=f"{column_label(s)} (BG-Gap {d['bg_gap']:.0f}, FG-attr {d['fg_attribution']:.2f})")
        ax.set_xticks(range(len(VIEWS)), [v.replace("_", "-") for v in VIEWS], fontsize=8)
        ax.set_ylim(0, 105)
        arch, head, regime = key
        ax.set_title(f"{arch}{'' if head == '-' else f' ({head})'}, {regime}", fontsize=9)
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attribution_gallery(runs: list[RunResult], path: Path) -> Path | None:
    """Per test image (rows): the image, then each run's attribution overlaid on it (columns). A probe run keeps the
    maps of its first head only."""
    import torch
    from PIL import Image

    galleries = [(r, torch.load(gallery_path(r.run_dir), weights_only=False)) for r in runs
                 if r.has_gallery and gallery_path(r.run_dir).is_file()]
    if not galleries or not galleries[0][0].data_path:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel_paths = galleries[0][1]["paths"]
    fig, axes = plt.subplots(len(rel_paths), 1 + len(galleries), squeeze=False,
                             figsize=(1.6 * (1 + len(galleries)), 1.6 * len(rel_paths)))
    for row, rel in enumerate(rel_paths):
        maps = {}
        for r, g in galleries:
            if rel in g["paths"]:
                maps[r.run_dir] = g["maps"][g["paths"].index(rel)].float().numpy()
        size = next(iter(maps.values())).shape if maps else (galleries[0][0].image_size,) * 2
        image = Image.open(Path(galleries[0][0].data_path) / "images" / rel).convert("RGB")
        w, h = image.size
        side = min(w, h)  # the evaluation's centre square, at the attribution's resolution
        image = image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)).resize(size[::-1])
        axes[row][0].imshow(image)
        for col, (r, _) in enumerate(galleries, start=1):
            axes[row][col].imshow(image)
            if r.run_dir in maps:
                axes[row][col].imshow(maps[r.run_dir], cmap="jet", alpha=0.5)
            if row == 0:
                head = "" if r.head == "-" else f" {r.head}"
                axes[0][col].set_title(f"{r.model_arch.split('_')[0]}{head}, {r.regime}\n{column_label(r.column)}",
                                       fontsize=7)
        axes[0][0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    # Many runs make a wide figure: cap it at about 2000 pixels.
    fig.savefig(path, dpi=min(110, 2000 / fig.get_figwidth()))
    plt.close(fig)
    return path


def panel_grid(plt, panels: int, width: float, height: float, per_row: int = 3):
    """A figure with ``panels`` axes, at most ``per_row`` per row (unused axes hidden); the axes as a flat list."""
    cols = min(per_row, max(1, panels))
    rows = -(-max(1, panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.axis("off")
    return fig, flat[:panels]


def plot_accuracy_bars(runs: list[RunResult], path: Path) -> None:
    """Grouped bars: CUB test vs Waterbirds top-1 for each strategy, one panel per architecture/head/regime; error
    bars are the 95 % Wilson intervals (one run) or the std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({r.row_key for r in runs})
    fig, axes = panel_grid(plt, len(keys), 4.2, 3.6)
    for ax, key in zip(axes, keys):
        cells = group_cells([r for r in runs if r.row_key == key])[key]
        present = [s for s in strategy_columns(runs) if s in cells]
        xs = range(len(present))
        cub = [accuracy(cells[s], "cub") for s in present]
        wb = [accuracy(cells[s], "wb") or Accuracy(0.0) for s in present]
        bars = ((-0.2, cub, "CUB test", "#4878d0"), (0.2, wb, "Waterbirds (OOD)", "#ee854a"))
        for offset, accs, label, color in bars:
            errors = list(zip(*(a.error for a in accs)))
            ax.bar([x + offset for x in xs], [a.value for a in accs], width=0.4, label=label, color=color,
                   yerr=errors, capsize=3, error_kw={"elinewidth": 0.8})
            for x, a in zip(xs, accs):
                ax.text(x + offset, a.value + a.error[1] + 1, f"{a.value:.0f}", ha="center", fontsize=8)
        ax.set_xticks(list(xs), [column_label(s).replace(" (", "\n(") for s in present])
        ax.set_ylim(0, 105)
        arch, head, regime = key
        ax.set_title(f"{arch}{'' if head == '-' else f' ({head})'}, {regime}", fontsize=9)
        ax.set_ylabel("top-1 (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))
    fig.savefig(path, dpi=120)
    plt.close(fig)
