"""The run folders as table entries: :class:`RunResult` (one run, or one probe head of it, with its evaluation sets
by name) and :func:`load_runs`, one reader for every benchmark's ``results.json`` and ``args.yaml``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bgmask import strategies
from bgmask.models import heads
from bgmask.models.backbones import arch_adapter


@dataclass(frozen=True)
class RunResult:
    """One table entry: a classifier run (or one probe head of it) with its evaluation sets' metrics, keyed by the
    set's name as results.json writes them (``cub_test``, ``waterbirds``; ``val``, ``test``). The paper's table
    reads the runs scored on ``cub_test`` (:func:`in_paper_table`); the group protocol's table, the others."""

    run_dir: str
    model_arch: str
    regime: str  # "frozen", "fine-tuned" (pretrained weights) or "from scratch"
    head: str
    masking: str
    sets: dict  # {evaluation set: its metrics (top1, correct, num_images; groups, worst_group... where grouped)}
    dataset: str = "cub"
    mask_source: str = "-"
    seed: int | None = None
    diagnostics: dict | None = None  # results.json "diagnostics" (views, bg_gap, fg_attribution) when computed
    data_path: str | None = None
    image_size: int | None = None
    variant: str = "last"  # late masking: where the features are masked ("last" or "second_last" stage/block)
    has_gallery: bool = True  # the run folder's attribution_gallery.pt is this entry's (a probe run's: its first head)
    mask_downsample: str = "-"  # late masking: how the masks reached the feature grid ("nearest-exact" or "area")
    num_classes: int | None = None  # of the benchmark (chance = 100 / num_classes)
    synthetic: bool = False  # the data is the synthetic benchmark (:func:`is_synthetic_cub`)
    weights: str = "random init"  # where the backbone's weights came from (:func:`weights_label`)
    probe_head: str | None = None  # the probe head's name (``--probe_heads``) of a probe run's entry
    best: dict = field(default_factory=dict)  # results.json "best": the selected epoch and what selected it
    balance: str = ""  # the imbalance options the run used ("class-balanced sampler", "group reweighting")
    last_epoch: dict | None = None  # the last epoch's sets when the selected epoch is reported

    @property
    def row_key(self) -> tuple[str, str, str]:
        return self.model_arch, self.head, self.regime

    @property
    def block(self) -> tuple[str, str, str, str]:
        """The group table's block: dataset, architecture, head, regime."""
        return self.dataset, *self.row_key

    @property
    def column(self) -> str:
        """The table column: the strategy, or ``strategy:detail[:detail]`` for late masking after the second-last
        stage or block and/or with area mask downsampling (other methods than upstream's default, so other columns)."""
        details = [d for d in (None if self.variant in ("last", None) else self.variant,
                               "area" if self.mask_downsample == "area" else None) if d]
        return ":".join([self.masking, *details])

    @property
    def label(self) -> str:
        """The group table's row label: the strategy, with the imbalance options it used."""
        name = strategies.label(self.masking)
        return f"{name} + {self.balance}" if self.balance else name

    def figure(self, name: str, split: str = "test") -> float | None:
        """A figure (``top1``, ``worst_group``, ``adjusted_average``...) of an evaluation set; None where absent."""
        return self.sets.get(split, {}).get(name)

    cub_top1 = property(lambda self: self.sets["cub_test"]["top1"])
    cub_images = property(lambda self: self.sets["cub_test"]["num_images"])
    cub_correct = property(lambda self: self.figure("correct", "cub_test"))
    wb_top1 = property(lambda self: self.figure("top1", "waterbirds"))
    wb_images = property(lambda self: self.figure("num_images", "waterbirds") or 0)
    wb_correct = property(lambda self: self.figure("correct", "waterbirds"))
    wb_worst_group = property(lambda self: self.figure("worst_group", "waterbirds"))

    @property
    def wb_worst_counts(self) -> tuple[int, int] | None:
        """(correct, images) of the worst Waterbirds group."""
        groups = [g for g in (self.figure("groups", "waterbirds") or {}).values() if g.get("num_images")]
        worst = min(groups, key=lambda g: g["correct"] / g["num_images"]) if groups else None
        return (worst["correct"], worst["num_images"]) if worst else None

    @property
    def ood_gap(self) -> float | None:
        return None if self.wb_top1 is None else self.cub_top1 - self.wb_top1


PAPER_SELECTION = "cub_test"  # the paper benchmark's selection set: a run scored on it goes to the paper's table


def in_paper_table(run: RunResult) -> bool:
    """Whether an entry belongs to the paper's CUB / Waterbirds table (else to the group protocol's)."""
    return PAPER_SELECTION in run.sets


def evaluation_sets(metrics: dict) -> dict:
    """The evaluation sets among results.json's entries (or a probe head's): ``{name: metrics}``."""
    return {k: v for k, v in metrics.items() if isinstance(v, dict) and "top1" in v and "num_images" in v}


def balance_of(args: dict) -> str:
    parts = []
    if args.get("class_balance", "none") not in ("none", None):
        parts.append(f"class-balanced {args['class_balance']}")
    if args.get("reweight_groups"):
        parts.append("group reweighting")
    return ", ".join(parts)


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
    head is a late-masking entry, the others are entries of the run's images (baseline, or early masking). One path
    for every benchmark: each entry holds the run's evaluation sets by name."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished (or the folder is not a run).")
    results = json.loads(path.read_text())
    args = _yaml(run_dir / "args.yaml")
    # DFR stands in the block of the model it refits (its regime and weights)
    model_args = _yaml(Path(args["dfr_from"]) / "args.yaml") if args.get("dfr_from") else args
    model_args = model_args or args
    data_root = _data_root(args, run_dir)
    common = {"run_dir": str(run_dir), "dataset": results.get("dataset", "cub"), "model_arch": results["model_arch"],
              "regime": _regime_of(model_args), "seed": args.get("seed"), "head": _head_of(args, results),
              "data_path": None if data_root is None else str(data_root), "image_size": results.get("image_size"),
              "num_classes": _classes_of(results, data_root), "synthetic": is_synthetic_cub(data_root),
              "weights": weights_label(model_args), "best": results.get("best", {}), "balance": balance_of(args),
              "last_epoch": results.get("last_epoch")}
    downsample = results.get("mask_downsample", "nearest-exact")
    if "probes" not in results:
        return [RunResult(**common, masking=results["masking"], sets=evaluation_sets(results),
                          mask_source=results.get("mask_source", "-"), diagnostics=results.get("diagnostics"),
                          variant=results.get("variant", "last"),
                          mask_downsample=downsample if results["masking"] == "late" else "-")]
    entries = []
    for k, (head, metrics) in enumerate(results["probes"].items()):
        late = head.startswith(heads.LATE)
        masking = "late" if late else ("early" if results["masking"] == "early" else "none")
        entries.append(RunResult(**{**common, "head": heads.label(head)}, masking=masking,
                                 sets=evaluation_sets(metrics),
                                 mask_source=results.get("mask_source", "-") if late else "-",
                                 diagnostics=metrics.get("diagnostics", results.get("diagnostics") if k == 0 else None),
                                 has_gallery=k == 0, probe_head=head, mask_downsample=downsample if late else "-"))
    return entries


def _yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}
