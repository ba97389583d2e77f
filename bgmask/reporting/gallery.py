"""attribution_gallery.png: the attribution maps each run kept (``attribution_gallery.pt``, written by the
diagnostics) over the test images they explain, one row per run of the table, one column per image.

Rows follow one fixed order (regime, architecture, head, then the table's strategy order, then seed), so every
regime's block lists its strategies alike; every run of the table has its row, with a note where its folder holds
no maps for it (older probe runs kept their first head's maps only). Each map is scaled to its own maximum (the
colour bar), and each cell says the run's predicted class against the true one where the file recorded them.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgmask.diagnostics.attribution import gallery_path
from bgmask.reporting.figures import arch_name, data_note, strategy_colour
from bgmask.reporting.results import column_label, strategy_columns
from bgmask.reporting.runs import RunResult

CELL_INCHES = 1.6  # at the saved 100 dpi: 160 px per image
MAX_IMAGES = 6


@dataclass
class GalleryRow:
    run: RunResult
    label: str  # regime, architecture and head, seed
    strategy: str  # the strategy key
    colour: str  # the strategy's colour (its label's)
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # image path -> map scaled to [0, 1]
    predicted: dict[str, int] = field(default_factory=dict)  # image path -> predicted class (0-based)
    note: str = ""  # why the row has no maps


@dataclass
class GalleryPlan:
    title: str
    images: list[str]  # test images (paths relative to images/), the columns
    true: dict[str, int | None]  # image path -> true class (0-based)
    rows: list[GalleryRow]
    data_path: str | None


def gallery_order(runs: list[RunResult]) -> list[RunResult]:
    """Every run, by regime, architecture, head, then strategy in the table's column order, then seed."""
    columns = strategy_columns(runs)
    return sorted(runs, key=lambda r: (r.regime, r.model_arch, r.head, columns.index(r.column), r.seed or 0))


def _entry_gallery(run: RunResult, cache: dict) -> dict | None:
    """The maps, labels and predictions of this entry in its folder's gallery file, or None."""
    path = gallery_path(run.run_dir)
    if path not in cache:
        import torch

        cache[path] = torch.load(path, weights_only=False) if path.is_file() else None
    g = cache[path]
    if g is None:
        return None
    if run.probe_head is not None and run.probe_head in g.get("heads", {}):
        return {"paths": g["paths"], **g["heads"][run.probe_head]}
    return g if run.has_gallery else None


def gallery_plan(runs: list[RunResult]) -> GalleryPlan | None:
    """What the gallery shows; None when no run kept maps."""
    cache: dict = {}
    rows, seen = [], {}
    methods = {}
    weights = {r.weights for r in runs}
    for run in gallery_order(runs):
        seeds = sum(r.row_key == run.row_key and r.column == run.column for r in runs) > 1
        head = "" if run.head in ("-", "") else f" ({run.head})"
        label = f"{run.regime}{'' if len(weights) == 1 else f', {run.weights}'}\n" \
                f"{arch_name(run.model_arch, run.weights)}{head}" + (f"\nseed {run.seed}" if seeds else "")
        row = GalleryRow(run, label, run.column, strategy_colour(run.column))
        g = _entry_gallery(run, cache)
        if g is None:
            row.note = ("no maps saved for this probe head (this run's file keeps its first head's only)"
                        if run.probe_head else "no attribution maps saved in this run folder")
        else:
            for k, rel in enumerate(g["paths"]):
                m = g["maps"][k].float().numpy()
                row.maps[rel] = m / m.max() if m.max() > 0 else m
                seen[rel] = seen.get(rel, 0) + 1
                if g.get("predictions"):
                    row.predicted[rel] = int(g["predictions"][k])
                if g.get("labels"):
                    seen.setdefault(("label", rel), int(g["labels"][k]))
            if isinstance(run.diagnostics, dict) and run.diagnostics.get("attribution"):
                methods.setdefault(run.diagnostics["attribution"], set()).add(arch_name(run.model_arch, run.weights))
        rows.append(row)
    if not seen:
        return None
    images = sorted((k for k in seen if isinstance(k, str)), key=lambda rel: -seen[rel])[:MAX_IMAGES]
    true = {rel: seen.get(("label", rel), _class_of_folder(rel)) for rel in images}
    method = "; ".join(f"{m} ({', '.join(sorted(a))})" for m, a in methods.items()) or "attribution"
    title = (f"Attribution of the true class: {method}; {next(iter(weights)) + ' ' if len(weights) == 1 else ''}"
             f"backbones. Each map scaled to its own maximum" + data_note([r.synthetic for r in runs]))
    return GalleryPlan(title, images, true, rows, next((r.data_path for r in runs if r.data_path), None))


def _class_of_folder(rel: str) -> int | None:
    """The class of a CUB-format image path, from its folder (``001.Name/...`` is class 0)."""
    head = rel.split("/")[0].split(".")[0]
    return int(head) - 1 if head.isdigit() else None


def _image(data_path: str | None, rel: str, shape) -> np.ndarray | None:
    """The evaluation's centre square of the test image, at the map's resolution."""
    from PIL import Image

    path = Path(data_path or "") / "images" / rel
    if not data_path or not path.is_file():
        return None
    image = Image.open(path).convert("RGB")
    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    return np.asarray(image.resize((shape[1], shape[0])))


def _middle(fig, cell) -> float:
    """The vertical middle of a grid cell, in figure coordinates."""
    box = cell.get_position(fig)
    return box.y0 + box.height / 2


def _class_name(rel: str) -> str:
    return rel.split("/")[0].split(".", 1)[-1].replace("_", " ")


def plot_attribution_gallery(runs: list[RunResult], path: Path) -> Path | None:
    """Draw the gallery into ``path``; None (nothing written) when no run kept attribution maps."""
    plan = gallery_plan(runs)
    if plan is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n_cols = len(plan.images)
    ratios = [1.0] + [1.0 if row.maps else 0.4 for row in plan.rows]  # a row without maps: its label and why
    label_w, top_h, right_w = 2.3, 1.2, 1.1
    fig = plt.figure(figsize=(label_w + CELL_INCHES * n_cols + right_w, top_h + CELL_INCHES * 1.15 * sum(ratios)))
    width, height = fig.get_figwidth(), fig.get_figheight()
    grid = fig.add_gridspec(len(ratios), n_cols, left=label_w / width, right=1 - right_w / width,
                            top=1 - top_h / height, bottom=0.1 / height, hspace=0.22, wspace=0.05,
                            height_ratios=ratios)
    predicted = any(row.predicted for row in plan.rows)
    for col, rel in enumerate(plan.images):
        ax = fig.add_subplot(grid[0, col])
        image = _image(plan.data_path, rel, (224, 224))
        if image is not None:
            ax.imshow(image)
        true = plan.true[rel]
        ax.set_title(("true " + ("?" if true is None else f"{true + 1:03d}") + "\n"
                      + textwrap.shorten(_class_name(rel), 26, placeholder="…")), fontsize=8)
        ax.axis("off")
    fig.text(0.1 / width, _middle(fig, grid[0, 0]), "test image", fontsize=10, va="center")
    for r, row in enumerate(plan.rows, start=1):
        middle = _middle(fig, grid[r, 0])
        fig.text(0.1 / width, middle + 0.04 / height, row.label, fontsize=9, va="bottom")
        fig.text(0.1 / width, middle - 0.04 / height, column_label(row.strategy), fontsize=9.5, va="top",
                 color=row.colour, fontweight="bold")
        for col, rel in enumerate(plan.images):
            ax = fig.add_subplot(grid[r, col])
            ax.set_xticks([])
            ax.set_yticks([])
            m = row.maps.get(rel)
            if m is None:
                ax.axis("off")
                if col == 0:
                    ax.text(0.05, 0.5, row.note or "not in this run's gallery", va="center", fontsize=8.5,
                            color="dimgrey", transform=ax.transAxes)
                continue
            image = _image(plan.data_path, rel, m.shape)
            if image is not None:
                ax.imshow(image)
            ax.imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            pred, true = row.predicted.get(rel), plan.true[rel]
            if pred is not None:
                right = true is not None and pred == true
                ax.set_title(f"pred {pred + 1:03d} {'✓' if right else '✗'}", fontsize=8, pad=2,
                             color="#1a7f37" if right else "#c0392b")
            elif predicted:
                ax.set_title("pred not saved", fontsize=7, color="dimgrey", pad=2)
    bar = fig.add_axes((1 - 0.75 / width, 1 - (top_h + 3.2) / height, 0.18 / width, 3.0 / height))
    fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), cax=bar).set_label(
        "attribution / the map's maximum", fontsize=8)
    title = plan.title + ("" if predicted else ". Predicted classes not recorded by these runs (older files)")
    fig.suptitle(textwrap.fill(title, int(width * 12)), fontsize=10, y=1 - 0.12 / height, va="top")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
