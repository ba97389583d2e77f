"""CUB-200-2011 with Waterbirds: the paper's benchmark (``--dataset cub``).

Training on CUB's train split (200 classes), evaluation on the CUB test split (``cub_test``, which selects the best
epoch) and on Waterbirds (``waterbirds``: the same test birds on Places backgrounds, grouped by (waterbird y,
place) from its ``metadata.csv``). The folders a strategy reads under the CUB root:

================  =================================  ===================================================
needs             images (train, test, Waterbirds)   masks (train, test, Waterbirds)
================  =================================  ===================================================
original          ``--image_sub_path_train/_test``,  -
                  ``--ood_image_sub_path``
masked            the masked folders written by      -
                  ``generate_masks.py`` (explicit
                  flags win)
predicted masks   as original                        ``--mask_sub_path`` (CUB), ``--ood_mask_sub_path``
ground truth      as original                        ``segmentations`` for all three (Waterbirds keeps every
                                                     bird at its CUB position)
================  =================================  ===================================================
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch.utils.data import Subset

from bgmask.benchmarks.base import (
    Benchmark,
    BenchmarkData,
    DataNeeds,
    EvalSet,
    register,
    selection_metric,
    split_train_val,
)
from bgmask.config import TrainConfig, option
from bgmask.data.cub import GT_MASK_SUB_PATH, WATERBIRDS_SUB_PATH, CUBDataset, missing_folder_hint
from bgmask.data.groups import Groups
from bgmask.data.masks import MASK_FOLDERS
from bgmask.errors import ConfigError, DatasetError

IMAGE_FLAGS = ("image_sub_path_train", "image_sub_path_test", "ood_image_sub_path")


@dataclass
class WaterbirdsFolders:
    """The Waterbirds folders under ``--data_path`` (the cub benchmark's OOD set, the waterbirds benchmark's data)."""

    section: ClassVar[str] = "benchmark folders (cub, waterbirds)"
    ood_image_sub_path: str = option(WATERBIRDS_SUB_PATH, "Waterbirds (OOD) image folder under data_path")
    ood_mask_sub_path: str = option(MASK_FOLDERS[WATERBIRDS_SUB_PATH][0], "precomputed masks for the Waterbirds "
                                                                          "images")


@dataclass
class CUBOptions(WaterbirdsFolders):
    """The cub benchmark's settings: its folders, each relative to ``--data_path``, and its Waterbirds evaluation."""

    section: ClassVar[str] = "benchmark: cub (waterbirds reads --ood_image_sub_path and --ood_mask_sub_path too)"
    image_sub_path_train: str = option("images", "training image folder under data_path")
    image_sub_path_test: str = option("images", "CUB test image folder under data_path")
    mask_sub_path: str = option(MASK_FOLDERS["images"][0], "precomputed masks for the CUB images (same relative "
                                                           "paths, .png), for strategies that load predicted masks")
    skip_ood_eval: bool = option(False, "train and test without the Waterbirds evaluation (recorded in results.json); "
                                        "without it a missing Waterbirds folder stops the run before training")
    eval_ood_each_time: bool = option(False, "score Waterbirds at every evaluation, not only at the end")
    diagnostics_mask_sub_path: str = option(GT_MASK_SUB_PATH, "bird masks for the diagnostics: CUB's segmentations/ "
                                                             "(> 0 is bird) or a mask folder")


def masked_folders(opts, needs: DataNeeds):
    """Masked images: the image folders of ``opts`` left at their defaults switch to the masked folders of
    generate_masks.py (explicit flags win)."""
    if needs.images != "masked":
        return opts
    masked = {"images": MASK_FOLDERS["images"][1], WATERBIRDS_SUB_PATH: MASK_FOLDERS[WATERBIRDS_SUB_PATH][1]}
    defaults, changes = type(opts)(), {}
    for flag in (f.name for f in dataclasses.fields(opts) if f.name in IMAGE_FLAGS):
        value = getattr(opts, flag)
        if value == getattr(defaults, flag) and value in masked:
            changes[flag] = masked[value]
    return dataclasses.replace(opts, **changes)


def waterbirds_groups(y, places, num_places: int | None = None,
                      train_sizes: tuple[int, ...] | None = None) -> Groups:
    """Waterbirds' groups: (waterbird y, place), named ``y{y}_place{p}``, with top-1 per place (``per_place``).
    ``num_places`` defaults to the places seen; give it to keep several splits' group ids aligned."""
    places = np.asarray(places)
    if num_places is None:
        num_places = int(places.max()) + 1 if len(places) else 0
    names = tuple(f"y{wy}_place{p}" for wy in range(2) for p in range(num_places))
    per_place = {str(p): (p, num_places + p) for p in range(num_places)}
    return Groups(np.asarray(y) * num_places + places, names, {"per_place": per_place}, train_sizes)


@register
class CUBWithWaterbirds(Benchmark):
    name = "cub"
    label = "CUB-200-2011 + Waterbirds"
    summary = "train on CUB, test on CUB and on Waterbirds (per place and (y, place) group)"
    selection = "cub_test"
    default_head_init = "upstream"  # the paper's protocol: upstream's kaiming init (docs/fidelity.md)

    Options = CUBOptions

    def resolve(self, cfg: TrainConfig, needs: DataNeeds) -> TrainConfig:
        """Masked images: image folders left at their defaults switch to the masked folders of generate_masks.py."""
        return dataclasses.replace(cfg, benchmark_options=masked_folders(self.options(cfg), needs))

    def check(self, cfg: TrainConfig, needs: DataNeeds) -> None:
        if not Path(cfg.data.data_path).is_dir():
            raise ConfigError(f"--data_path {cfg.data.data_path} is a file; the cub benchmark takes the CUB_200_2011 "
                              f"folder (holds images.txt). A CSV dataset is --dataset csv.")

    def folders(self, cfg: TrainConfig, needs: DataNeeds) -> tuple[tuple[str, str, str | None], tuple | None]:
        """(train, test, Waterbirds) image folders and mask folders (None: no masks)."""
        opts: CUBOptions = self.options(cfg)
        images = (opts.image_sub_path_train, opts.image_sub_path_test, opts.ood_image_sub_path)
        if needs.masks is None:
            return images, None
        if needs.masks == "ground_truth":
            return images, (GT_MASK_SUB_PATH,) * 3
        return images, (opts.mask_sub_path, opts.mask_sub_path, opts.ood_mask_sub_path)

    def build(self, cfg: TrainConfig, needs: DataNeeds, image_size: int, device_tail: bool = False) -> BenchmarkData:
        """Train (+ validation part), CUB test and, unless skipped, Waterbirds.

        With masks the items are ``(image, mask, label)``, transformed jointly: one transform for every strategy,
        which replays the image's random draws on the mask (the image tensor is the same). With ``device_tail``
        the training images come as uint8 :class:`~bgmask.data.transforms.RawImage` and
        ``BenchmarkData.train_tail`` finishes them on the device.
        """
        data, opts = cfg.data, self.options(cfg)
        (train_dir, test_dir, ood_dir), masks = self.folders(cfg, needs)
        train_masks, test_masks, ood_masks = masks or (None, None, None)
        train_tf, eval_tf = self.transforms(cfg, image_size, device_tail)
        full_train = CUBDataset(data.data_path, "train", train_dir, train_masks, transform=train_tf)
        train, val = split_train_val(full_train, full_train.labels, data.train_split, cfg.run.seed)
        if val is not None:  # validation images use the eval transform
            val = Subset(CUBDataset(data.data_path, "train", train_dir, train_masks, transform=eval_tf), val.indices)
        sets = {"cub_test": self.eval_set(CUBDataset(data.data_path, "test", test_dir, test_masks,
                                                     transform=eval_tf))}
        if opts.skip_ood_eval:
            warnings.warn("Waterbirds (OOD) evaluation is skipped (--skip_ood_eval); results.json records it.",
                          stacklevel=2)
        else:
            waterbirds = waterbirds_data(data.data_path, ood_dir, ood_masks, eval_tf)
            if waterbirds is not None:
                sets["waterbirds"] = self.eval_set(waterbirds, waterbirds=True)
        return BenchmarkData(train=train, eval_sets=sets, num_classes=full_train.num_classes, image_size=image_size,
                             selection=self.selection, selection_metric=selection_metric(cfg, grouped=False), val=val,
                             train_tail=train_tf.device_tail, score_all_each_time=opts.eval_ood_each_time)

    @staticmethod
    def eval_set(ds: CUBDataset, waterbirds: bool = False) -> EvalSet:
        notes = {"skipped_missing_files": len(ds.skipped)} if ds.skipped else {}
        if waterbirds and ds.places is None:
            notes["group_metrics"] = f"absent: no metadata.csv in {ds.image_root} or the Waterbirds release"
        groups = waterbirds_groups(ds.waterbird_y, ds.places) if ds.places is not None else None
        return EvalSet(ds, groups, notes)

    def diagnostics_images(self, cfg: TrainConfig):
        root, sub = Path(cfg.data.data_path), self.options(cfg).diagnostics_mask_sub_path
        if not (root / sub).is_dir():
            warnings.warn(f"background diagnostics skipped: no bird masks in {root / sub}. "
                          f"{missing_folder_hint(root, sub)}", stacklevel=2)
            return f"no masks in {root / sub}"
        return CUBDataset(root, "test", "images", sub, transform=None, mask_threshold=None)

    def results_info(self, cfg: TrainConfig, needs: DataNeeds) -> dict:
        opts = self.options(cfg)
        info = {flag: getattr(opts, flag) for flag in IMAGE_FLAGS} if needs.masks is None else {}
        return {**info, **({"waterbirds": {"skipped": "--skip_ood_eval"}} if opts.skip_ood_eval else {})}


def waterbirds_data(data_path: str, ood_sub: str | None, ood_masks: str | None, eval_tf) -> CUBDataset | None:
    """The Waterbirds (OOD) test set; None without a Waterbirds folder.

    A missing folder stops the run before training, saying what supplies it. Without ``metadata.csv`` in the folder
    (a masked copy made before Waterbirds' metadata was there), the original release's file is used; without any,
    the run warns and results.json says that group metrics are absent.
    """
    if not ood_sub:
        return None
    root = Path(data_path)
    ood_dir = root / ood_sub  # also right for an absolute ood_sub
    if not ood_dir.is_dir():
        original = root / WATERBIRDS_SUB_PATH
        found = f" The original Waterbirds folder {original} is there, but this run evaluates on {ood_sub}/." \
            if ood_dir != original and original.is_dir() else ""
        raise DatasetError(f"The Waterbirds folder {ood_dir} does not exist.{found} "
                           f"{missing_folder_hint(root, ood_sub)} Or pass --skip_ood_eval to train without the "
                           f"Waterbirds evaluation (recorded in results.json).")
    metadata = ood_dir / "metadata.csv"
    if not metadata.is_file() and (root / WATERBIRDS_SUB_PATH / "metadata.csv").is_file():
        metadata = root / WATERBIRDS_SUB_PATH / "metadata.csv"
    if not metadata.is_file():
        warnings.warn(f"{ood_dir / 'metadata.csv'} is missing: Waterbirds top-1 is computed, but not the per-place "
                      f"and (y, place) group metrics. Copy metadata.csv from the {WATERBIRDS_SUB_PATH} release "
                      f"into {ood_dir}/.", stacklevel=2)
    return CUBDataset(root, "test", ood_sub, ood_masks, transform=eval_tf, skip_missing=True,
                      metadata_csv=metadata if metadata.is_file() else None)
