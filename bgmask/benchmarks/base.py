"""What a benchmark is, and the registry that names them (the same shape as :mod:`bgmask.strategies`).

A benchmark is one module: a :class:`Benchmark` subclass decorated with :func:`register`. It is the one place that
knows a dataset's files, and it owns the settings that name them (``Options``: a dataclass whose fields become
flags, as a strategy's do; the run reads them as ``cfg.benchmark_options``). Given what the strategy asks for
(:class:`DataNeeds`: original or masked images, masks or not) it builds

* the training split (and, with ``--train_split < 1``, a validation part of it),
* a dict of named evaluation sets (:class:`EvalSet`), each with optional per-item groups (:class:`Groups`) from
  which the evaluation loop computes per-group and worst-group top-1,

and, optionally, the images and bird masks the background diagnostics are built from. ``--dataset NAME`` picks it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from torch.utils.data import Dataset, Subset

from bgmask.data.groups import Groups
from bgmask.data.needs import DataNeeds
from bgmask.data.transforms import build_eval_transform, build_train_transform
from bgmask.errors import ConfigError
from bgmask.infra.registry import Registry

if TYPE_CHECKING:
    from bgmask.config import TrainConfig
    from bgmask.data.transforms import DeviceTail

@dataclass
class EvalSet:
    """A named evaluation set: its dataset, optional groups, and notes recorded with its metrics."""

    dataset: Dataset
    groups: Groups | None = None
    notes: dict = field(default_factory=dict)


@dataclass
class BenchmarkData:
    """The datasets of one run."""

    train: Dataset
    eval_sets: dict[str, EvalSet]
    num_classes: int
    image_size: int
    selection: str  # the evaluation set scored every epoch and used for model selection
    selection_metric: str = "top1"  # what selects there: top1, or worst_group on a set with groups
    score_all_each_time: bool = False  # score every evaluation set at each evaluation, not only at the end
    # The selection set is a validation split (not a test set): the run then reports every set with the weights of
    # the selected epoch (the last epoch's figures go to "last_epoch"), and DFR may fit on it.
    validation_selection: bool = False
    val: Dataset | None = None
    train_tail: DeviceTail | None = None  # finishes the training images on the device (--device_tail)
    train_groups: Groups | None = None  # the group of every training item (--reweight_groups, GroupDRO)
    # The training split with the evaluation transform (no augmentation): DFR fits its feature scaler on it.
    train_plain: Dataset | None = None

    def sets_to_score(self, final: bool, eval_mode: str) -> dict[str, EvalSet]:
        """What an evaluation scores: every set at the end; before it, the selection set only (the validation part
        with ``--eval_mode val``) unless the benchmark scores all each time."""
        each_time = self.score_all_each_time
        sets = self.eval_sets if final or each_time else {self.selection: self.eval_sets[self.selection]}
        return {"val": EvalSet(self.val), **(self.eval_sets if final else {})} if eval_mode == "val" else sets


class Benchmark:
    """Base class. A subclass names itself, builds its data and, optionally, its diagnostics images."""

    name: ClassVar[str]  # --dataset value
    label: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for --help
    selection: ClassVar[str]  # the evaluation set that selects the best epoch (with --eval_mode test)
    # How a new linear head starts under --head_init auto: the paper's CUB-200 protocol keeps upstream's kaiming init
    # (std sqrt(2 / K): 0.1 for 200 classes); the group benchmarks have 2 classes (std 1.0), so they start their heads
    # as group_DRO, DFR and SubpopBench do (timm's trunc_normal_(0.02)).
    default_head_init: ClassVar[str] = "timm"
    Options: ClassVar[type | None] = None  # a dataclass of this benchmark's settings (fields become flags)

    def options(self, cfg: TrainConfig):
        """This benchmark's settings in ``cfg`` (its ``Options``' defaults when the config holds none)."""
        opts = cfg.benchmark_options
        if self.Options is None:
            return None
        return opts if type(opts) is self.Options else self.Options()  # a subclass is another benchmark's

    def resolve(self, cfg: TrainConfig, needs: DataNeeds) -> TrainConfig:
        """Fill in settings whose default depends on what the strategy needs (e.g. the masked image folders)."""
        return cfg

    def check(self, cfg: TrainConfig, needs: DataNeeds) -> None:
        """Refuse what this benchmark cannot provide, before anything is built (raise ConfigError)."""

    def build(self, cfg: TrainConfig, needs: DataNeeds, image_size: int, device_tail: bool = False) -> BenchmarkData:
        raise NotImplementedError

    @staticmethod
    def transforms(cfg: TrainConfig, image_size: int, device_tail: bool = False):
        """The run's training transform (the augmentation flags; with ``device_tail`` it ends in uint8 pixels the
        device finishes) and evaluation transform: the same for every benchmark and strategy."""
        aug = cfg.aug
        train = build_train_transform(image_size, aug.augmentations_to_use, aug.aa, aug.color_jitter, aug.reprob,
                                      aug.remode, aug.recount, aug.train_interpolation, device_tail=device_tail,
                                      fast=aug.fast_augment)
        return train, build_eval_transform(image_size, aug.crop_pct, aug.eval_interpolation)

    def diagnostics_images(self, cfg: TrainConfig):
        """The test images with bird masks the diagnostics are built from (``labels``, ``paths``, ``image_path(i)``,
        ``mask_path(i)``), or a string saying why there are none."""
        return f"the {self.name!r} benchmark has no bird masks for the diagnostics"

    def results_info(self, cfg: TrainConfig, needs: DataNeeds) -> dict:
        """Extra keys for results.json (e.g. which folders were read)."""
        return {}


def resolve_head_init(cfg: TrainConfig, benchmark: Benchmark) -> TrainConfig:
    """``--head_init auto``: the benchmark's default (the paper's CUB protocol: upstream's; the group benchmarks:
    timm's). The resolved name is what args.yaml and results.json record; the command line and ``run`` both
    resolve it, so a config built either way reaches the model with a concrete init."""
    if cfg.model.head_init != "auto":
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head_init=benchmark.default_head_init))


def resolve_config(cfg: TrainConfig, benchmark: Benchmark, needs: DataNeeds) -> TrainConfig:
    """The settings whose default depends on the benchmark and the strategy: the folders the strategy's data needs
    (:meth:`Benchmark.resolve`, e.g. early masking's masked image folders) and ``--head_init auto``
    (:func:`resolve_head_init`). :func:`bgmask.run.pipeline.run` calls it, so a config built in Python trains on what
    the same command line would; resolving twice changes nothing. A config without this benchmark's options gets their
    defaults (a config built in Python)."""
    opts = benchmark.options(cfg)
    if opts is not cfg.benchmark_options:
        if cfg.benchmark_options is not None:
            own = benchmark.Options.__name__ if benchmark.Options else "none"
            raise ConfigError(f"the config holds {type(cfg.benchmark_options).__name__} settings; --dataset "
                              f"{benchmark.name} takes {own}.")
        cfg = dataclasses.replace(cfg, benchmark_options=opts)
    return resolve_head_init(benchmark.resolve(cfg, needs), benchmark)


def split_train_val(dataset, labels: np.ndarray, fraction: float, seed: int):
    """Stratified split: ``fraction`` of each class for training, the rest for validation (None at 1)."""
    if fraction >= 1:
        return dataset, None
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, round(len(idx) * fraction))
        train_idx += idx[:k].tolist()
        val_idx += idx[k:].tolist()
    return Subset(dataset, sorted(train_idx)), Subset(dataset, sorted(val_idx))


def selection_metric(cfg: TrainConfig, grouped: bool) -> str:
    """The metric that selects the best epoch: ``--selection_metric``, or with ``auto`` the worst group where the
    selection set has groups and top-1 otherwise (``average`` is top-1 over all images)."""
    choice = cfg.data.selection_metric
    if choice == "auto":
        return "worst_group" if grouped else "top1"
    if choice == "worst_group" and not grouped:
        raise ConfigError(f"--selection_metric worst_group needs groups in the selection set; --dataset "
                          f"{cfg.data.dataset} has none there.")
    return "top1" if choice == "average" else choice


_REGISTRY: Registry[Benchmark] = Registry(
    "benchmark", "unknown --dataset {name!r}.{hint} Known: {known}. A new benchmark is a module with a @register-ed "
                 "Benchmark subclass, imported before the run (see docs/architecture.md).")
register, get, names = _REGISTRY.register, _REGISTRY.get, _REGISTRY.names
