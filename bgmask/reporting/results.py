"""Collect run results (``results.json``) into a paper-style table (Markdown, CSV, JSON) and a bar chart."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from bgmask import strategies
from bgmask.data.groups import wilson_interval
from bgmask.diagnostics import VIEWS
from bgmask.models import heads
from bgmask.models.backbones import arch_adapter


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
    wb_worst_counts: tuple[int, int] | None = None  # (correct, images) of the worst Waterbirds group
    mask_downsample: str = "-"  # late masking: how the masks reached the feature grid ("nearest-exact" or "area")
    num_classes: int | None = None  # of the benchmark (chance = 100 / num_classes)
    synthetic: bool = False  # the data is the synthetic benchmark (:func:`is_synthetic_cub`)
    weights: str = "random init"  # where the backbone's weights came from (:func:`weights_label`)
    probe_head: str | None = None  # the probe head's name (``--probe_heads``) of a probe run's entry

    @property
    def row_key(self) -> tuple[str, str, str]:
        return self.model_arch, self.head, self.regime

    @property
    def column(self) -> str:
        """The table column: the strategy, or ``strategy:detail[:detail]`` for late masking after the second-last
        stage or block and/or with area mask downsampling (other methods than upstream's default, so other columns)."""
        details = [d for d in (None if self.variant in ("last", None) else self.variant,
                               "area" if self.mask_downsample == "area" else None) if d]
        return ":".join([self.masking, *details])

    @property
    def ood_gap(self) -> float | None:
        return None if self.wb_top1 is None else self.cub_top1 - self.wb_top1


def _regime_of(args: dict) -> str:
    if args.get("freeze_backbone"):
        return "frozen"
    pretrained = args.get("start_weights") == "DEFAULT" or args.get("pretrained_path")
    return "fine-tuned" if pretrained else "from scratch"


def _head_of(args: dict, results: dict) -> str:
    adapter = arch_adapter(results.get("model_arch", ""))
    head = heads.vit_head_of(args.get("class_token_only"), args.get("patch_tokens_only"))
    return heads.label(head) if adapter is not None and head in adapter.heads else "-"


def is_synthetic_cub(root: str | os.PathLike | None) -> bool:
    """Whether a CUB-format folder was made by the synthetic generator (:mod:`bgmask.data.synthetic`): it holds the
    generator's ``habitats.txt`` (no CUB or Waterbirds release has one), one line ``<class id> <habitat>`` per class
    of ``classes.txt`` with the generator's habitat names. Anything else, a missing folder included, is not."""
    from bgmask.data.synthetic import HABITAT_NAMES

    if not root:
        return False
    root = Path(root)
    try:
        habitats = (root / "habitats.txt").read_text().split("\n")
        classes = (root / "classes.txt").read_text().split("\n")
    except (OSError, UnicodeDecodeError):
        return False
    habitats, classes = [h.split() for h in habitats if h.strip()], [c for c in classes if c.strip()]
    return bool(habitats) and len(habitats) == len(classes) and all(
        len(h) == 2 and h[0].isdigit() and h[1] in HABITAT_NAMES for h in habitats)


def _data_root(args: dict, run_dir: Path) -> Path | None:
    """The run's ``--data_path``; a relative one as given (from where collect_results runs), else relative to a
    folder above the run folder (the checkout the run was started from)."""
    if not args.get("data_path"):
        return None
    path = Path(args["data_path"])
    if path.is_absolute() or path.exists():
        return path
    return next((parent / path for parent in run_dir.resolve().parents if (parent / path).exists()), path)


def weights_label(args: dict) -> str:
    """Where a run's backbone weights came from, for titles: ``synthetic-pretrained`` (a weights folder written by
    :mod:`bgmask.pretraining.pretrain`, whose ``config.json`` says so, or a path in its cache), ``hub-pretrained``
    (``--start_weights DEFAULT``), ``local weights`` (another ``--pretrained_path``) or ``random init``."""
    path = args.get("pretrained_path")
    if path:
        try:
            config = json.loads((Path(path).parent / "config.json").read_text())
            synthetic = config.get("pretrained_cfg", {}).get("tag") == "bgmask_synthetic"
        except (OSError, ValueError, AttributeError):
            synthetic = "/bgmask/pretrained/" in Path(path).as_posix()  # the default cache, on another machine
        return "synthetic-pretrained" if synthetic else "local weights"
    return "hub-pretrained" if args.get("start_weights") == "DEFAULT" else "random init"


def _classes_of(results: dict, data_root: Path | None) -> int | None:
    if results.get("num_classes"):
        return int(results["num_classes"])
    try:
        return sum(1 for line in (data_root / "classes.txt").read_text().splitlines() if line.strip())
    except (OSError, TypeError):
        return None


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """Read ``run_dir/results.json`` (and ``args.yaml`` for the regime and head) as one table entry; a run with
    probe heads gives its first head (:func:`load_runs` gives all)."""
    return load_runs(run_dir)[0]


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
    data_root = _data_root(args, run_dir)
    common = {"run_dir": str(run_dir), "model_arch": results["model_arch"], "regime": _regime_of(args),
              "seed": args.get("seed"), "data_path": None if data_root is None else str(data_root),
              "image_size": results.get("image_size"), "num_classes": _classes_of(results, data_root),
              "synthetic": is_synthetic_cub(data_root), "weights": weights_label(args)}
    if "probes" not in results:
        return [_entry(results, common, _head_of(args, results), results["masking"],
                       results.get("mask_source", "-"), results.get("diagnostics"), results.get("variant", "last"),
                       mask_downsample=results.get("mask_downsample", "nearest-exact")
                       if results["masking"] == "late" else "-")]
    entries = []
    for k, (head, metrics) in enumerate(results["probes"].items()):
        late = head.startswith(heads.LATE)
        masking = "late" if late else ("early" if results["masking"] == "early" else "none")
        label = heads.label(head)
        entries.append(_entry(metrics, common, label, masking, results.get("mask_source", "-") if late else "-",
                              metrics.get("diagnostics", results.get("diagnostics") if k == 0 else None),
                              has_gallery=k == 0, probe_head=head,
                              mask_downsample=results.get("mask_downsample", "nearest-exact") if late else "-"))
    return entries


def _entry(metrics: dict, common: dict, head: str, masking: str, mask_source: str, diagnostics,
           variant: str = "last", has_gallery: bool = True, mask_downsample: str = "-",
           probe_head: str | None = None) -> RunResult:
    wb = metrics.get("waterbirds") or {}
    groups = [g for g in (wb.get("groups") or {}).values() if g.get("num_images")]
    worst = min(groups, key=lambda g: g["correct"] / g["num_images"]) if groups else None
    return RunResult(**common, head=head, masking=masking, mask_source=mask_source, variant=variant,
                     has_gallery=has_gallery, mask_downsample=mask_downsample, probe_head=probe_head,
                     wb_worst_counts=(worst["correct"], worst["num_images"]) if worst else None,
                     cub_top1=metrics["cub_test"]["top1"], cub_images=metrics["cub_test"]["num_images"],
                     wb_top1=wb.get("top1"), wb_images=wb.get("num_images", 0), wb_worst_group=wb.get("worst_group"),
                     cub_correct=metrics["cub_test"].get("correct"), wb_correct=wb.get("correct"),
                     diagnostics=diagnostics)


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
