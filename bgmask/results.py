"""Collect run results (``results.json``) into a paper-style table (Markdown, CSV, JSON) and a bar chart."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from bgmask import strategies
from bgmask.backbones import arch_layout

BUILTIN_STRATEGIES = ("none", "early", "late")  # always columns of the table, in this order


def strategy_columns(runs: list[RunResult]) -> list[str]:
    """The strategy columns of the table (:attr:`RunResult.column`): the built-in strategies, each followed by its
    variants the runs used (late masking after the second-last stage/block), then any other strategy the runs used
    (registry order, then names unknown here)."""
    used = {r.column for r in runs}
    columns = []
    for name in BUILTIN_STRATEGIES:
        columns += [name, *sorted(c for c in used if c.startswith(f"{name}:"))]
    registered = [n for n in strategies.names() if n not in BUILTIN_STRATEGIES and n in used]
    return [*columns, *registered, *sorted(used - set(columns) - set(registered))]


def column_label(column: str) -> str:
    """``late`` -> ``late masking``; ``late:second_last`` -> ``late masking (second-last)``."""
    name, _, variant = column.partition(":")
    return strategies.label(name) + (f" ({variant.replace('_', '-')})" if variant else "")


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
    cub_correct: int | None = None
    wb_correct: int | None = None
    seed: int | None = None
    diagnostics: dict | None = None  # results.json "diagnostics" (views, bg_gap, fg_attribution) when computed
    data_path: str | None = None
    image_size: int | None = None
    variant: str = "last"  # late masking: where the features are masked ("last" or "second_last" stage/block)
    has_gallery: bool = True  # the run folder's attribution_gallery.pt is this entry's (a probe run's: its first head)

    @property
    def row_key(self) -> tuple[str, str, str]:
        return self.model_arch, self.head, self.regime

    @property
    def column(self) -> str:
        """The table column: the strategy, or ``strategy:variant`` for late masking after the second-last stage or
        block (another method than after the last, so another column)."""
        return self.masking if self.variant in ("last", None) else f"{self.masking}:{self.variant}"

    @property
    def ood_gap(self) -> float | None:
        return None if self.wb_top1 is None else self.cub_top1 - self.wb_top1


def _regime_of(args: dict) -> str:
    if args.get("freeze_backbone"):
        return "frozen"
    pretrained = args.get("start_weights") == "DEFAULT" or args.get("pretrained_path")
    return "fine-tuned" if pretrained else "from scratch"


def _head_of(args: dict, results: dict) -> str:
    if arch_layout(results.get("model_arch", "")) != "tokens":
        return "-"
    if args.get("class_token_only"):
        return "CLS"
    if args.get("patch_tokens_only"):
        return "GAP"
    return "CLS+GAP"


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """Read ``run_dir/results.json`` (and ``args.yaml`` for the regime and head) as one table entry; a run with
    probe heads gives its first head (:func:`load_runs` gives all)."""
    return load_runs(run_dir)[0]


PROBE_HEAD_LABELS = {"cls": "CLS", "mean": "GAP", "cls_mean": "CLS+GAP", "masked_mean": "GAP (fg mean)", "pool": "-"}


def load_runs(run_dir: str | os.PathLike) -> list[RunResult]:
    """The table entries of one run folder: the run itself, or one per probe head (``--probe_heads``): a ``late:``
    head is a late-masking entry, the others are entries of the run's images (baseline, or early masking)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished (or the folder is not a run).")
    results = json.loads(path.read_text())
    args = {}
    if (run_dir / "args.yaml").is_file():
        import yaml

        args = yaml.safe_load((run_dir / "args.yaml").read_text()) or {}
    common = {"run_dir": str(run_dir), "model_arch": results["model_arch"], "regime": _regime_of(args),
              "seed": args.get("seed"), "data_path": args.get("data_path"), "image_size": results.get("image_size")}
    if "probes" not in results:
        return [_entry(results, common, _head_of(args, results), results["masking"],
                       results.get("mask_source", "-"), results.get("diagnostics"), results.get("variant", "last"))]
    entries = []
    for k, (head, metrics) in enumerate(results["probes"].items()):
        late = head.startswith("late:")
        base = head.removeprefix("late:")
        masking = "late" if late else ("early" if results["masking"] == "early" else "none")
        label = PROBE_HEAD_LABELS.get(base, base) if arch_layout(results["model_arch"]) == "tokens" else "-"
        entries.append(_entry(metrics, common, label, masking, results.get("mask_source", "-") if late else "-",
                              metrics.get("diagnostics", results.get("diagnostics") if k == 0 else None),
                              has_gallery=k == 0))
    return entries


def _entry(metrics: dict, common: dict, head: str, masking: str, mask_source: str, diagnostics,
           variant: str = "last", has_gallery: bool = True) -> RunResult:
    wb = metrics.get("waterbirds") or {}
    return RunResult(**common, head=head, masking=masking, mask_source=mask_source, variant=variant,
                     has_gallery=has_gallery,
                     cub_top1=metrics["cub_test"]["top1"], cub_images=metrics["cub_test"]["num_images"],
                     wb_top1=wb.get("top1"), wb_images=wb.get("num_images", 0), wb_worst_group=wb.get("worst_group"),
                     cub_correct=metrics["cub_test"].get("correct"), wb_correct=wb.get("correct"),
                     diagnostics=diagnostics)


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy ``correct / total``, in percent (over the test images)."""
    if total <= 0:
        return 0.0, 100.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


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


DIAGNOSTIC_VIEWS = ("only_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand")


def diagnostics_table(runs: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """One row per run: the view accuracies, BG-Gap and the attribution share inside the bird."""
    header = ["architecture", "head", "regime", "strategy", *DIAGNOSTIC_VIEWS, "BG-Gap", "FG-attr"]
    table, columns = [], strategy_columns(runs)
    for r in sorted(runs, key=lambda r: (r.row_key, columns.index(r.column), r.seed or 0)):
        d = r.diagnostics
        table.append([*r.row_key, column_label(r.column), *(_fmt(d[v]["top1"]) for v in DIAGNOSTIC_VIEWS),
                      _fmt(d["bg_gap"]), f"{d['fg_attribution']:.2f}"])
    return header, table


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
            xs = [i + (k - (len(present) - 1) / 2) * width for i in range(len(DIAGNOSTIC_VIEWS))]
            ax.bar(xs, [d[v]["top1"] for v in DIAGNOSTIC_VIEWS], width=width, color=colors.get(s.split(":")[0]),
                   label=f"{column_label(s)} (BG-Gap {d['bg_gap']:.0f}, FG-attr {d['fg_attribution']:.2f})")
        ax.set_xticks(range(len(DIAGNOSTIC_VIEWS)), [v.replace("_", "-") for v in DIAGNOSTIC_VIEWS], fontsize=8)
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

    from bgmask.diagnostics import gallery_path

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
