"""Your own dataset as one CSV file (``--dataset csv --data_path DATASET.csv``).

Columns: ``filename`` (an image; relative to the CSV's folder, or absolute), ``split`` (``train``/``val``/``test``
or 0/1/2), ``y`` (the class, 0..K-1) and, optionally, ``a`` (an attribute: the groups are the (y, a) pairs, as in
SubpopBench's one-CSV-per-dataset format) and ``mask`` (the bird/object mask file, same size as the image, > 0 is
foreground). Every strategy runs on it: early masking masks the images with their ``mask`` on the fly, late masking
loads the masks with the images. The best epoch is chosen on ``val`` when there is one (on ``test`` otherwise), by
the worst group when ``a`` is given (``--selection_metric``).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bgmask.benchmarks.base import Benchmark, BenchmarkData, DataNeeds, EvalSet, register, selection_metric
from bgmask.config import TrainConfig
from bgmask.data.groups import Groups
from bgmask.data.table import TableDataset, check_files, check_mask_sizes
from bgmask.errors import ConfigError, DatasetError
from bgmask.io import listing

REQUIRED = ("filename", "split", "y")
SPLITS = {"train": "train", "val": "val", "test": "test", "0": "train", "1": "val", "2": "test"}


@dataclass
class Table:
    """A validated CSV: per split, the image and mask paths, labels and attribute values."""

    path: Path
    rows: dict[str, list[dict]]
    num_classes: int
    attributes: list[str] | None  # the distinct values of ``a``, sorted; None without the column
    has_masks: bool

    @classmethod
    def read(cls, path: Path) -> Table:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet exports start with a BOM
                reader = csv.DictReader(f)
                columns = [c.strip() for c in reader.fieldnames or []]
                raw = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DatasetError(f"cannot read {path} as a CSV file ({e}).") from None
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise DatasetError(f"{path} lacks the column(s) {', '.join(missing)}; a dataset CSV has filename, split, "
                               f"y and optionally a and mask (found: {', '.join(columns) or 'no header'}).")
        if not raw:
            raise DatasetError(f"{path} lists no images.")
        rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
        bad_split, bad_y = [], []
        for line, row in enumerate(raw, start=2):
            split = SPLITS.get(row["split"].lower())
            if split is None:
                bad_split.append(f"line {line}: {row['split']!r}")
                continue
            try:
                row["y"] = int(row["y"])
                if row["y"] < 0:
                    raise ValueError
            except ValueError:
                bad_y.append(f"line {line}: {row['y']!r}")
                continue
            rows[split].append(row)
        if bad_split:
            raise DatasetError(f"{path}: split must be train/val/test or 0/1/2; found {listing(bad_split)}.")
        if bad_y:
            raise DatasetError(f"{path}: y must be a class index 0..K-1; found {listing(bad_y)}.")
        if not rows["train"] or not rows["test"]:
            raise DatasetError(f"{path} needs train and test images (train: {len(rows['train'])}, test: "
                               f"{len(rows['test'])}).")
        num_classes = max(r["y"] for rs in rows.values() for r in rs) + 1
        absent = sorted(set(range(num_classes)) - {r["y"] for r in rows["train"]})
        if absent:
            raise DatasetError(f"{path}: the labels run 0..{num_classes - 1}, but the train split has no image of "
                               f"class(es) {listing(absent)}; labels must be 0..K-1 with every class in train.")
        attributes = sorted({r["a"] for rs in rows.values() for r in rs}) if "a" in columns else None
        if attributes is not None and "" in attributes:
            raise DatasetError(f"{path}: the a column is empty on some rows; give every image its attribute.")
        has_masks = "mask" in columns
        if has_masks and any(not r["mask"] for rs in rows.values() for r in rs):
            raise DatasetError(f"{path}: the mask column is empty on some rows; give every image its mask.")
        return cls(path, rows, num_classes, attributes, has_masks)

    def file(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.path.parent / p

    def check_files(self) -> None:
        for split, rows in self.rows.items():
            images = [self.file(r["filename"]) for r in rows]
            check_files(images, f"{split} image", self.path)
            if self.has_masks:
                masks = [self.file(r["mask"]) for r in rows]
                check_files(masks, f"{split} mask", self.path)
                check_mask_sizes(images, masks, self.path)

    def groups(self, split: str, train_sizes: tuple[int, ...] | None = None) -> Groups | None:
        if self.attributes is None:
            return None
        n_a = len(self.attributes)
        ids = [r["y"] * n_a + self.attributes.index(r["a"]) for r in self.rows[split]]
        names = tuple(f"y{y}_a{a}" for y in range(self.num_classes) for a in self.attributes)
        return Groups(np.array(ids, dtype=np.int64), names, train_sizes=train_sizes)

    def train_group_sizes(self) -> tuple[int, ...]:
        return self.groups("train").sizes()

    def dataset(self, split: str, transform, needs: DataNeeds, soft_masks: bool = False) -> TableDataset:
        rows = self.rows[split]
        masks = [self.file(r["mask"]) for r in rows] if self.has_masks and (needs.masks or needs.images == "masked"
                                                                             or soft_masks) else None
        return TableDataset([self.file(r["filename"]) for r in rows], [r["y"] for r in rows], masks, transform,
                            return_masks=bool(needs.masks) or soft_masks, masked_images=needs.images == "masked",
                            names=[r["filename"] for r in rows], mask_threshold=None if soft_masks else 0)


@register
class CSVBenchmark(Benchmark):
    name = "csv"
    label = "CSV dataset"
    summary = "your own dataset: one CSV with filename, split, y [, a, mask]"
    selection = "val"

    def table(self, cfg: TrainConfig) -> Table:
        path = Path(cfg.data.data_path)
        if not path.is_file():
            raise ConfigError(f"--dataset csv takes the CSV file as --data_path; {path} is not a file.")
        return Table.read(path)

    def check(self, cfg: TrainConfig, needs: DataNeeds) -> None:
        table = self.table(cfg)
        if (needs.masks or needs.images == "masked") and not table.has_masks:
            raise ConfigError(f"this strategy needs masks, and {table.path} has no mask column; add one (a mask "
                              f"file per image, > 0 is foreground) or train the baseline.")
        if cfg.data.train_split < 1 or cfg.data.eval_mode == "val":
            raise ConfigError("--dataset csv has its own val split (split val or 1): leave --train_split and "
                              "--eval_mode at their defaults.")
        table.check_files()

    def build(self, cfg: TrainConfig, needs: DataNeeds, image_size: int, device_tail: bool = False) -> BenchmarkData:
        table = self.table(cfg)
        train_tf, eval_tf = self.transforms(cfg, image_size, device_tail)
        sizes = table.train_group_sizes() if table.attributes is not None else None
        sets = {split: EvalSet(table.dataset(split, eval_tf, needs), table.groups(split, sizes))
                for split in ("val", "test") if table.rows[split]}
        selection = "val" if "val" in sets else "test"
        if selection == "test":
            warnings.warn(f"{table.path} has no val split: the best epoch is selected on the test split (an oracle "
                          f"choice, optimistic); add val rows for an honest selection.", stacklevel=2)
        metric = selection_metric(cfg, grouped=table.attributes is not None)
        return BenchmarkData(train=table.dataset("train", train_tf, needs), eval_sets=sets,
                             num_classes=table.num_classes, image_size=image_size, selection=selection,
                             selection_metric=metric, validation_selection=selection == "val",
                             train_tail=train_tf.device_tail,
                             train_groups=table.groups("train", sizes) if table.attributes is not None else None,
                             train_plain=table.dataset("train", eval_tf, needs))

    def diagnostics_images(self, cfg: TrainConfig):
        table = self.table(cfg)
        if not table.has_masks:
            return f"{table.path} has no mask column"
        return table.dataset("test", None, DataNeeds(), soft_masks=True)

    def results_info(self, cfg: TrainConfig, needs: DataNeeds) -> dict:
        return {"data_csv": str(Path(cfg.data.data_path).resolve())}
