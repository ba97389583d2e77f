"""A toy benchmark, all in this one file: CUB's species grouped into genera, scored per species.

It is the proof that a benchmark is one module (tests/test_architecture.py trains every strategy on it). The label
is the genus, the last word of the CUB class name (``001.Black_footed_Albatross`` -> ``Albatross``); each test
image's group is its species, so worst-group top-1 is the worst-recognised species of any genus, a
subpopulation-shift measure as in BREEDS. Shipped benchmarks live in ``bgmask/benchmarks/``, where they are found
without being listed anywhere; this one is imported by its test. Run it with any entry point after importing it,
e.g. ``python -c "import tests.toy_benchmark, sys; from bgmask.cli import main; main(['none'], sys.argv[1:])"
--dataset cub_genera --data_path ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch.utils.data import Dataset

from bgmask.benchmarks import Benchmark, BenchmarkData, DataNeeds, EvalSet, register
from bgmask.config import TrainConfig, option
from bgmask.data.cub import GT_MASK_SUB_PATH, CUBDataset
from bgmask.data.groups import Groups
from bgmask.errors import ConfigError


def genera(root: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Per CUB class: its genus index; the genus names; the species names."""
    species = [line.split(" ", 1)[1].split(".", 1)[1] for line in (root / "classes.txt").read_text().splitlines()]
    genus_of = [name.rsplit("_", 1)[-1] for name in species]
    names = sorted(set(genus_of))
    return np.array([names.index(g) for g in genus_of]), names, species


class Relabelled(Dataset):
    """A CUB dataset whose labels are mapped (species -> genus); the images (and masks) are untouched."""

    def __init__(self, dataset: CUBDataset, mapping: np.ndarray):
        self.dataset, self.mapping = dataset, mapping
        self.labels = mapping[dataset.labels]
        self.transform = dataset.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        *item, label = self.dataset[i]
        return (*item, int(self.mapping[label]))


@dataclass
class GeneraOptions:
    """The benchmark's own settings: each field is a flag (``--genera_image_sub_path``) and an args.yaml key."""

    section: ClassVar[str] = "benchmark: cub_genera"
    genera_image_sub_path: str = option("images", "image folder under data_path")


@register
class CUBGenera(Benchmark):
    name = "cub_genera"
    label = "CUB genera"
    summary = "CUB's images labelled by genus; groups are the species"
    selection = "test"
    Options = GeneraOptions

    def check(self, cfg: TrainConfig, needs: DataNeeds) -> None:
        if needs.images != "original" or needs.masks == "predicted":
            raise ConfigError("cub_genera has original images and CUB's ground-truth masks only.")

    def build(self, cfg: TrainConfig, needs: DataNeeds, image_size: int, device_tail: bool = False) -> BenchmarkData:
        root = Path(cfg.data.data_path)
        masks = GT_MASK_SUB_PATH if needs.masks else None
        train_tf, eval_tf = self.transforms(cfg, image_size, device_tail)
        genus, genus_names, species = genera(root)
        images = self.options(cfg).genera_image_sub_path
        train = Relabelled(CUBDataset(root, "train", images, masks, transform=train_tf), genus)
        test = CUBDataset(root, "test", images, masks, transform=eval_tf)
        groups = Groups(test.labels, tuple(species))
        return BenchmarkData(train=train, eval_sets={"test": EvalSet(Relabelled(test, genus), groups)},
                             num_classes=len(genus_names), image_size=image_size, selection=self.selection,
                             train_tail=train_tf.device_tail)
