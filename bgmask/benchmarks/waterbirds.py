"""Waterbirds with the group_DRO protocol (``--dataset waterbirds``).

A 2-class classifier (landbird 0 / waterbird 1) trained on Waterbirds' own train split (``split`` 0 of
``metadata.csv``, where 95 % of the birds sit on their own habitat type), the best epoch chosen on the validation
split (1) by its worst (y, place) group (``--selection_metric average`` for top-1), and both val and test (2)
reported with per-group top-1, the worst group, the average over all images and the adjusted average (each test
group's accuracy weighted by its size in training, as group_DRO, WILDS, JTT and DFR report it), each with its 95 %
Wilson interval.

``--data_path`` is the CUB root holding the Waterbirds folder (``--ood_image_sub_path``), as for the cub benchmark,
or the Waterbirds folder itself. Folders per strategy: original images from the Waterbirds folder; masked images
from its masked twin written by ``generate_masks.py`` (an explicit ``--ood_image_sub_path`` wins); predicted masks
from ``--ood_mask_sub_path``; ground-truth masks from CUB's ``segmentations/`` (Waterbirds keeps every bird at its
CUB position).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bgmask.benchmarks.base import Benchmark, BenchmarkData, DataNeeds, EvalSet, register, selection_metric
from bgmask.benchmarks.cub import WaterbirdsFolders, masked_folders, waterbirds_groups
from bgmask.config import TrainConfig
from bgmask.data.cub import GT_MASK_SUB_PATH, WATERBIRDS_SUB_PATH, WaterbirdsMetadata, mask_path_for
from bgmask.data.groups import Groups
from bgmask.data.table import TableDataset, check_files
from bgmask.errors import ConfigError, DatasetError
from bgmask.io import listing

SPLITS = {"train": 0, "val": 1, "test": 2}


class WaterbirdsLayout:
    """Where the Waterbirds images, metadata and masks of a run are, and the split table."""

    def __init__(self, cfg: TrainConfig, needs: DataNeeds):
        root, folders = Path(cfg.data.data_path), Waterbirds().options(cfg)
        if (root / "metadata.csv").is_file() and not (root / "images.txt").is_file():
            # --data_path is the Waterbirds folder itself; masked images are its masked twin beside it
            root, image_dir = root.parent, root
            self.original_dir = image_dir
            if needs.images == "masked":
                image_dir = root / folders.ood_image_sub_path
                if not (image_dir / "metadata.csv").is_file():
                    raise DatasetError(f"masked Waterbirds images are read from {image_dir} (--ood_image_sub_path), "
                                       f"which holds no metadata.csv; write it with mmsegmentation/tools/"
                                       f"generate_masks.py, or pass --ood_image_sub_path.")
        else:
            image_dir = root / folders.ood_image_sub_path
            self.original_dir = root / WATERBIRDS_SUB_PATH if (root / WATERBIRDS_SUB_PATH).is_dir() else image_dir
        self.root, self.image_dir = root, image_dir
        original = image_dir if (image_dir / "metadata.csv").is_file() else root / WATERBIRDS_SUB_PATH
        self.metadata_path = original / "metadata.csv"
        if not self.metadata_path.is_file():
            raise DatasetError(f"no Waterbirds metadata.csv in {image_dir} (nor in {root / WATERBIRDS_SUB_PATH}). "
                               f"--dataset waterbirds reads the release's metadata.csv (img_id, img_filename, y, "
                               f"split, place, place_filename); download waterbird_complete95_forest2water2.tar.gz "
                               f"and pass its folder, or the CUB root it sits in, as --data_path.")
        self.metadata = WaterbirdsMetadata.load(self.metadata_path)
        if needs.masks == "ground_truth":
            self.mask_dir = root / GT_MASK_SUB_PATH
        elif needs.masks == "predicted":
            self.mask_dir = root / folders.ood_mask_sub_path
        else:
            self.mask_dir = None
        self.rows = {split: sorted(p for p, s in self.metadata.split.items() if s == k) for split, k in SPLITS.items()}
        self.check()

    def check(self) -> None:
        meta, path = self.metadata, self.metadata_path
        bad = sorted({s for s in meta.split.values() if s not in SPLITS.values()})
        if bad:
            raise DatasetError(f"{path}: split must be 0 (train), 1 (val) or 2 (test); found {listing(bad)}.")
        bad = sorted({y for y in meta.y.values() if y not in (0, 1)})
        if bad:
            raise DatasetError(f"{path}: y must be 0 (landbird) or 1 (waterbird); found {listing(bad)}.")
        bad = sorted({p for p in meta.place.values() if p < 0})
        if bad:
            raise DatasetError(f"{path}: place must be a habitat index >= 0; found {listing(bad)}.")
        empty = [s for s, rows in self.rows.items() if not rows]
        if empty:
            raise DatasetError(f"{path} has no image in split(s) {', '.join(empty)}; the protocol trains on 0, "
                               f"selects on 1 and tests on 2.")

    def check_files(self) -> None:
        for split, rows in self.rows.items():
            check_files([self.image_dir / r for r in rows], f"Waterbirds {split} image", self.metadata_path)
            if self.mask_dir is not None:
                check_files([self.mask_dir / mask_path_for(r) for r in rows], f"Waterbirds {split} mask",
                            self.metadata_path)

    @property
    def num_places(self) -> int:
        return max(self.metadata.place.values()) + 1

    def groups(self, split: str, train_sizes: tuple[int, ...] | None) -> Groups:
        rows = self.rows[split]
        return waterbirds_groups([self.metadata.y[r] for r in rows], [self.metadata.place[r] for r in rows],
                                 self.num_places, train_sizes)

    def train_group_sizes(self) -> tuple[int, ...]:
        return self.groups("train", None).sizes()

    def dataset(self, split: str, transform, return_masks: bool, mask_dir: Path | None = None,
                soft: bool = False, image_dir: Path | None = None) -> TableDataset:
        rows, mask_dir, image_dir = self.rows[split], mask_dir or self.mask_dir, image_dir or self.image_dir
        return TableDataset([image_dir / r for r in rows], [self.metadata.y[r] for r in rows],
                            [mask_dir / mask_path_for(r) for r in rows] if mask_dir is not None else None, transform,
                            return_masks=return_masks, names=rows, mask_threshold=None if soft else 0)


@register
class Waterbirds(Benchmark):
    name = "waterbirds"
    label = "Waterbirds (group_DRO protocol)"
    summary = "2 classes on Waterbirds' own splits, selected and reported by worst group"
    selection = "val"
    Options = WaterbirdsFolders

    def resolve(self, cfg: TrainConfig, needs: DataNeeds) -> TrainConfig:
        """Masked images: the masked Waterbirds folder by default (as the cub benchmark's)."""
        return dataclasses.replace(cfg, benchmark_options=masked_folders(self.options(cfg), needs))

    def check(self, cfg: TrainConfig, needs: DataNeeds) -> None:
        if cfg.data.train_split < 1 or cfg.data.eval_mode == "val":
            raise ConfigError("--dataset waterbirds selects on the release's own validation split (1): leave "
                              "--train_split and --eval_mode at their defaults.")
        WaterbirdsLayout(cfg, needs).check_files()

    def build(self, cfg: TrainConfig, needs: DataNeeds, image_size: int, device_tail: bool = False) -> BenchmarkData:
        layout = WaterbirdsLayout(cfg, needs)
        train_tf, eval_tf = self.transforms(cfg, image_size, device_tail)
        sizes, masks = layout.train_group_sizes(), needs.masks is not None
        sets = {split: EvalSet(layout.dataset(split, eval_tf, masks), layout.groups(split, sizes))
                for split in ("val", "test")}
        return BenchmarkData(train=layout.dataset("train", train_tf, masks), eval_sets=sets, num_classes=2,
                             image_size=image_size, selection=self.selection,
                             selection_metric=selection_metric(cfg, grouped=True), validation_selection=True,
                             train_tail=train_tf.device_tail, train_groups=layout.groups("train", sizes),
                             train_plain=layout.dataset("train", eval_tf, masks))

    def diagnostics_images(self, cfg: TrainConfig):
        """The test split's original Waterbirds images with CUB's soft segmentations (each bird's mask: Waterbirds
        keeps it at its CUB position)."""
        layout = WaterbirdsLayout(cfg, DataNeeds())
        seg = layout.root / cfg.diagnostics.diagnostics_mask_sub_path
        if not seg.is_dir():
            return f"no masks in {seg}"
        return layout.dataset("test", None, True, mask_dir=seg, soft=True, image_dir=layout.original_dir)

    def results_info(self, cfg: TrainConfig, needs: DataNeeds) -> dict:
        layout = WaterbirdsLayout(cfg, needs)
        return {"waterbirds_images": str(layout.image_dir), "train_group_sizes": dict(zip(
            layout.groups("train", None).names, layout.train_group_sizes()))}
