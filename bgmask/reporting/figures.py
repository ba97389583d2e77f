"""The bar figures beside the tables (results.png, diagnostics.png, group_results.png). Every figure has one colour
per strategy (:func:`strategy_colour`), titles that say when the data is synthetic and whose weights the backbone
has (:func:`panel_title`, :func:`data_note`), a chance line, 95 % intervals and a value on every bar. A figure is
planned (:class:`FigurePlan`), then drawn (:func:`draw`); the tests check the plans."""

from __future__ import annotations

import statistics
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from bgmask import strategies
from bgmask.data.groups import wilson_interval
from bgmask.diagnostics.views import VIEWS
from bgmask.reporting.group_results import (
    GROUP_FIGURES,
    chance,
    collapsed_onto,
    group_class,
    reference_rows,
)
from bgmask.reporting.results import accuracy, column_label, group_cells, strategy_columns
from bgmask.reporting.runs import RunResult

# ----------------------------------------------------------------------------------- one colour per strategy
STRATEGY_COLOURS = {
    "none": "#4878d0", "none+class-balanced sampler": "#82c6e2", "none+group reweighting": "#2a3f8f",
    "early": "#6acc64",
    "late": "#d65f5f", "late:second_last": "#9c2f2f", "late:area": "#ee854a", "late:second_last:area": "#b35a1f",
    "late:fg_mean": "#dc7ec0", "late:fg_mean:area": "#a0508a", "dfr": "#956cb4", "groupdro": "#8c613c",
}
_SPARE_COLOURS = ("#d5bb67", "#17becf", "#bcbd22", "#e377c2", "#2ca02c", "#7f3c8d", "#11a579", "#f2b701")
CHANCE_STYLE = {"color": "black", "ls": "--", "lw": 0.9}
PRETRAINING_TAGS = ("_dinov2", "_dino", "_clip", "_siglip")  # timm names that say whose weights they ship with
VIEW_CAPTION = (
    "Views of the test images (docs/diagnostics.md): only-fg = background black; only-bg-b = the bird's bounding box "
    "black; only-bg-t = the box filled with the image's own background; mixed-same / mixed-rand = the bird pasted "
    "on the background of a test image of the same / of another class. BG-Gap = mixed-same − mixed-rand (background "
    "reliance); FG-attr = share of the attribution inside the bird. Early and late masking are scored with each "
    "view's oracle mask, so their background-only views sit at chance by construction.")


def strategy_colour(key: str) -> str:
    """The colour of a strategy in every figure. ``key`` is the table's strategy column (``none``, ``early``,
    ``late:second_last``...; :attr:`RunResult.column`) or a group run's :func:`group_key`. A variant without a
    colour of its own gets a shade of its strategy's; an unknown strategy a fixed spare colour."""
    if key in STRATEGY_COLOURS:
        return STRATEGY_COLOURS[key]
    base = key.split("+")[0].split(":")[0]
    digest = zlib.crc32(key.encode())
    if base in STRATEGY_COLOURS:
        return _shade(STRATEGY_COLOURS[base], 0.55 + 0.3 * (digest % 7) / 6)
    return _SPARE_COLOURS[digest % len(_SPARE_COLOURS)]


def _shade(colour: str, factor: float) -> str:
    """``colour`` darker (factor < 1) or mixed towards white (factor > 1, 2 = white)."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    rgb = [c * factor if factor <= 1 else c + (255 - c) * (factor - 1) for c in rgb]
    return "#" + "".join(f"{min(255, round(c)):02x}" for c in rgb)


def group_key(run: RunResult) -> str:
    """A group run's strategy key: its strategy, ``+`` the imbalance options it trained with."""
    return f"{run.masking}+{run.balance}" if run.balance else run.masking


def strategy_rank(key: str) -> tuple:
    """The tables' strategy order: baseline, early, late (each followed by its variants), then the registry's."""
    base = key.split("+")[0].split(":")[0]
    order = ["none", "early", "late", *(n for n in strategies.names() if n not in ("none", "early", "late"))]
    return order.index(base) if base in order else len(order), key != base, key


# ------------------------------------------------------------------------------------------- titles
def arch_name(arch: str, weights: str) -> str:
    """The architecture's timm name, without a pretraining tag (``_dinov2``) unless those weights were loaded."""
    if weights != "hub-pretrained":
        for tag in PRETRAINING_TAGS:
            if arch.endswith(tag):
                return arch.removesuffix(tag)
    return arch


def panel_title(arch: str, head: str, regime: str, weights: str, prefix: str = "") -> str:
    """``convnext_atto, frozen, synthetic-pretrained``; a ViT's head in brackets; no empty part."""
    model = arch_name(arch, weights) + (f" ({head})" if head and head.strip("-– ") else "")
    return ", ".join(p for p in (f"{prefix}: {model}" if prefix else model, regime, weights) if p)


def data_note(synthetic: list[bool]) -> str:
    """What a figure's title says of its data: every panel synthetic, some (then marked per panel) or none."""
    if synthetic and all(synthetic):
        return " (synthetic benchmark, scripts/make_synthetic_cub.py; not CUB-200 data)"
    return " (panels marked [synthetic benchmark] use generated data)" if any(synthetic) else ""


def _mark(title: str, synthetic: bool, every: list[bool]) -> str:  # a synthetic panel among real ones
    return title + (" [synthetic benchmark]" if synthetic and not all(every) else "")


# -------------------------------------------------------------------------------------------------- plans
@dataclass
class Bar:
    x: float
    value: float | None  # None: not measured (drawn as "n/a")
    error: tuple[float, float] | None  # distance below and above the value
    strategy: str  # its strategy key: the colour is strategy_colour(strategy)
    colour: str
    width: float
    style: str = "solid"  # a key of STYLES: what the bar measures when a strategy has several bars
    outlined: bool = False  # group protocol: a run collapsed onto one class


STYLES = {"solid": {}, "hatched": {"hatch": "///", "tint": 1.55}, "dotted": {"hatch": "..", "tint": 1.75}}


@dataclass
class Panel:
    title: str
    bars: list[Bar]
    ticks: list[tuple[float, str]]
    chance: float | None  # 100 / number of classes
    lines: list[tuple[float, str]] = field(default_factory=list)  # other reference lines (value, label)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (label, colour) below the panel
    notes: list[tuple[float, str]] = field(default_factory=list)  # (x, text) at the top of the panel


@dataclass
class FigurePlan:
    title: str
    panels: list[Panel]
    legend: list[tuple[str, str]]  # (label, style key of STYLES) for bars drawn in grey
    caption: str = ""
    size: tuple[float, float] = (4.4, 3.8)  # one panel, inches
    per_row: int = 3
    value_size: float = 7.5


def _wilson(correct: int | None, total: int | None, value: float) -> tuple[float, float] | None:
    if correct is None or not total:
        return None
    low, high = wilson_interval(correct, total)
    return value - low, high - value


def results_plan(runs: list[RunResult]) -> FigurePlan:
    """results.png: per architecture/head/regime, each strategy's CUB test top-1 (solid) and Waterbirds top-1
    (hatched) in the strategy's colour, with 95 % Wilson intervals (one run) or ± std over seeds."""
    every = [r.synthetic for r in runs]
    panels = []
    for key, cells, present in table_blocks(runs):
        first = cells[present[0]][0]
        bars = []
        for i, s in enumerate(present):
            for offset, split, style in ((-0.2, "cub", "solid"), (0.2, "wb", "hatched")):
                acc = accuracy(cells[s], split)
                bars.append(Bar(i + offset, None if acc is None else acc.value, None if acc is None else acc.error,
                                s, strategy_colour(s), 0.4, style))
        title = panel_title(key[0], key[1], key[2], first.weights)
        panels.append(Panel(_mark(title, first.synthetic, every), bars,
                            [(i, column_label(s).replace(" (", "\n(")) for i, s in enumerate(present)],
                            _chance_of(cells[s][0] for s in present)))
    seeds = max(len(c) for _, cells, _ in table_blocks(runs) for c in cells.values())
    return FigurePlan("Top-1 accuracy (%) per strategy: CUB test vs Waterbirds backgrounds" + data_note(every)
                      + ("\nerror bars: 95 % Wilson interval (one run); ± std over seeds where a cell has several"
                         if seeds > 1 else "\nerror bars: 95 % Wilson interval over the test images"),
                      panels, [("CUB test", "solid"), ("Waterbirds (OOD backgrounds)", "hatched")])


def table_blocks(runs: list[RunResult]) -> list[tuple[tuple, dict, list[str]]]:
    """Per architecture/head/regime, in order: its key, its cells by strategy column, the columns it has."""
    rows, columns = group_cells(runs), strategy_columns(runs)
    return [(key, rows[key], [s for s in columns if s in rows[key]]) for key in sorted(rows)]


def _chance_of(runs) -> float | None:
    classes = {r.num_classes for r in runs if r.num_classes}
    return 100.0 / classes.pop() if len(classes) == 1 else None


def diagnostics_plan(runs: list[RunResult]) -> FigurePlan:
    """diagnostics.png: per architecture/head/regime, each strategy's top-1 on each view. Intervals: the 95 % Wilson
    interval of the view's ``correct`` / ``num_images`` (results.json ``diagnostics``); a run that recorded top-1
    only is taken over its CUB test images (every view scores each test image once). Several seeds: ± std."""
    every = [r.synthetic for r in runs]
    panels = []
    for key, cells, present in table_blocks(runs):
        width = 0.8 / len(present)
        bars, legend = [], []
        for k, s in enumerate(present):
            cell = cells[s]
            for i, view in enumerate(VIEWS):
                value, error = _view_top1(cell, view)
                bars.append(Bar(i + (k - (len(present) - 1) / 2) * width, value, error, s, strategy_colour(s), width))
            gap = statistics.fmean(r.diagnostics["bg_gap"] for r in cell)
            attr = statistics.fmean(r.diagnostics["fg_attribution"] for r in cell)
            legend.append((f"{column_label(s)}: BG-Gap {gap:.0f}, FG-attr {attr:.2f}", strategy_colour(s)))
        first = cells[present[0]][0]
        title = panel_title(key[0], key[1], key[2], first.weights)
        panels.append(Panel(_mark(title, first.synthetic, every), bars,
                            [(i, v.replace("_", "-")) for i, v in enumerate(VIEWS)],
                            _chance_of(cells[s][0] for s in present), legend=legend))
    return FigurePlan("Background reliance: top-1 (%) on the Backgrounds-Challenge views of the test images"
                      + data_note(every) + "\nerror bars: 95 % Wilson interval (one run) or ± std over seeds",
                      panels, [], caption=VIEW_CAPTION, size=(5.4, 4.9), value_size=6.0)


def _view_top1(cell: list[RunResult], view: str) -> tuple[float, tuple[float, float] | None]:
    values = [r.diagnostics[view]["top1"] for r in cell]
    if len(cell) > 1:
        std = statistics.stdev(values)
        return statistics.fmean(values), (std, std)
    d, run = cell[0].diagnostics[view], cell[0]
    total = d.get("num_images") or run.cub_images
    correct = d.get("correct", round(d["top1"] * total / 100) if total else None)
    return values[0], _wilson(correct, total, values[0])


def group_plan(runs: list[RunResult]) -> FigurePlan:
    """group_results.png: per dataset/architecture/head/regime, each strategy's worst group (solid), adjusted
    average (hatched) and average (dotted) in the strategy's colour, baseline first; the mean over seeds with the
    min–max as error bars, or one run's Wilson intervals; runs collapsed onto one class outlined in black."""
    every = [r.synthetic for r in runs]
    panels = []
    for key in sorted({r.block for r in runs}):
        block = [r for r in runs if r.block == key]
        keys = sorted({group_key(r) for r in block}, key=strategy_rank)
        width = 0.8 / len(GROUP_FIGURES)
        bars, notes, seeds = [], [], 1
        for i, s in enumerate(keys):
            cell = [r for r in block if group_key(r) == s]
            seeds = max(seeds, len(cell))
            test = [r.sets.get("test", {}) for r in cell]
            collapsed = sum(collapsed_onto(m, sorted({group_class(g) for g in m["groups"]})) is not None
                            for m in test if m.get("groups"))
            if collapsed:
                notes.append((i, f"{collapsed}/{len(cell)} collapsed"))
            for k, (figure, style) in enumerate(zip(GROUP_FIGURES, ("solid", "hatched", "dotted"))):
                values = [r.figure(figure) for r in cell if r.figure(figure) is not None]
                mean = statistics.fmean(values) if values else None
                if len(values) > 1:
                    error = (mean - min(values), max(values) - mean)
                else:
                    iv = (test[0].get("intervals") or {}).get(figure)
                    error = (mean - iv[0], iv[1] - mean) if iv and mean is not None else None
                bars.append(Bar(i + (k - 1) * width, mean, error, s, strategy_colour(s), width, style,
                                outlined=bool(collapsed)))
        classes = {group_class(g) for r in block for g in r.sets.get("test", {}).get("groups", {})}
        lines = []
        row = reference_rows(key, block[0], "test")
        if row:
            lines.append((float(row[0][7]), "constant predictor, adjusted average"))
        dataset, arch, head, regime = key
        title = panel_title(arch, head, regime, block[0].weights, prefix=dataset) + (
            f"; mean of {seeds} seeds, bars min–max" if seeds > 1 else "")
        labels = {group_key(r): r.label for r in block}
        panels.append(Panel(_mark(title, block[0].synthetic, every), bars,
                            [(i, textwrap.fill(labels[s], 16)) for i, s in enumerate(keys)],
                            chance(len(classes))["worst_group"] if classes else None, lines=lines, notes=notes))
    return FigurePlan("Group protocol: test top-1 (%) per strategy" + data_note(every)
                      + "\nerror bars: 95 % Wilson interval (one run) or min–max over seeds; black outline: a run "
                        "collapsed onto one class", panels,
                      [(f.replace("_", " "), style) for f, style in zip(GROUP_FIGURES, ("solid", "hatched", "dotted"))],
                      size=(7.6, 4.2), per_row=2, value_size=7.0)


# ------------------------------------------------------------------------------------------------ drawing
def draw(plan: FigurePlan, path: Path) -> None:
    """Draw a planned bar figure into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = panel_grid(plt, len(plan.panels), *plan.size, per_row=plan.per_row)
    for ax, panel in zip(axes, plan.panels):
        for bar in panel.bars:
            _draw_bar(ax, bar, plan.value_size)
        if panel.chance is not None:
            ax.axhline(panel.chance, **CHANCE_STYLE)
            ax.annotate(f"chance\n{panel.chance:.3g} %", (1, panel.chance), xycoords=("axes fraction", "data"),
                        xytext=(3, 0), textcoords="offset points", ha="left", va="center", fontsize=6.5)
        for value, label in panel.lines:
            ax.axhline(value, color="dimgrey", ls=":", lw=1.0)
            ax.text(ax.get_xlim()[0], value + 0.8, f" {label} {value:.0f} %", ha="left", va="bottom", fontsize=6.5)
        for x, text in panel.notes:
            ax.text(x, 101, text, ha="center", va="bottom", fontsize=7)
        ax.set_xticks([x for x, _ in panel.ticks], [label for _, label in panel.ticks], fontsize=8)
        ax.set_ylim(0, 108)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(textwrap.fill(panel.title, 70), fontsize=8.5)
        if panel.legend:
            ax.legend([Patch(color=c) for _, c in panel.legend], [label for label, _ in panel.legend], fontsize=7,
                      loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    handles = [Patch(**_look("#a0a0a0", style)) for _, style in plan.legend]
    labels = [label for label, _ in plan.legend]
    if any(p.chance is not None for p in plan.panels):
        handles.append(Line2D([], [], **CHANCE_STYLE))
        labels.append("chance (100 / number of classes)")
    if handles:  # the title heads the legend (a suptitle and an outside legend would overlap)
        legend = fig.legend(handles, labels, loc="outside upper center", ncol=len(handles), fontsize=8,
                            frameon=False, title=plan.title, title_fontsize=9.5, alignment="center")
        legend.get_title().set_multialignment("center")
    else:
        fig.suptitle(plan.title, fontsize=9.5)
    if plan.caption:
        fig.supxlabel(textwrap.fill(plan.caption, int(fig.get_figwidth() * 17)), fontsize=7.5, x=0.01, ha="left",
                      multialignment="left")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _look(colour: str, style: str) -> dict:
    """How a bar of ``style`` in a strategy's ``colour`` is filled: solid, or a tint of the colour hatched in it."""
    spec = STYLES[style]
    return {"facecolor": _shade(colour, spec["tint"]) if spec else colour, "edgecolor": colour,
            "hatch": spec.get("hatch")}


def _draw_bar(ax, bar: Bar, fontsize: float) -> None:
    if bar.value is None:
        ax.text(bar.x, 1, "n/a", ha="center", va="bottom", fontsize=fontsize, rotation=90)
        return
    yerr = None if bar.error is None else [[bar.error[0]], [bar.error[1]]]
    ax.bar(bar.x, bar.value, width=bar.width, **_look(bar.colour, bar.style), linewidth=0.8, yerr=yerr, capsize=2,
           error_kw={"elinewidth": 0.8})
    if bar.outlined:
        ax.bar(bar.x, bar.value, width=bar.width, fill=False, edgecolor="black", linewidth=1.6)
    if bar.value < 0.5:  # a 0 % bar has no height: a stub in its colour shows where it stands
        ax.plot([bar.x - bar.width / 2, bar.x + bar.width / 2], [0.4, 0.4], color=bar.colour, lw=3,
                solid_capstyle="butt")
    top = bar.value + (bar.error[1] if bar.error else 0.0)
    ax.text(bar.x, top + 0.8, f"{bar.value:.0f}", ha="center", va="bottom", fontsize=fontsize)


def panel_grid(plt, panels: int, width: float, height: float, per_row: int = 3):
    """A figure with ``panels`` axes, at most ``per_row`` per row (unused axes hidden); the axes as a flat list."""
    cols = min(per_row, max(1, panels))
    rows = -(-max(1, panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.8), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.axis("off")
    return fig, flat[:panels]
