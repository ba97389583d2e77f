"""The synthetic benchmark: exact CUB/Waterbirds format, determinism, mask/box/bird alignment, the bias."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from PIL import ImageFilter

from bgmask.data.cub import WATERBIRDS_COLUMNS, CUBDataset, CUBIndex
from bgmask.data.synthetic import HABITAT_NAMES, PART_NAMES, SyntheticConfig, generate, make_species

from .conftest import TINY


def tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_all_cub_files_exist(tiny_cub_root):
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                 "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt",
                 "waterbird_complete95_forest2water2/metadata.csv"):
        assert (tiny_cub_root / name).is_file(), name
    n = TINY.num_classes * TINY.images_per_class
    assert len((tiny_cub_root / "parts/parts.txt").read_text().split("\n")) - 1 == 15
    part_lines = (tiny_cub_root / "parts/part_locs.txt").read_text().split("\n")[:-1]
    assert len(part_lines) == 15 * n
    for line in part_lines:
        image_id, part_id, x, y, visible = line.split()
        assert 1 <= int(part_id) <= len(PART_NAMES) and visible in ("0", "1")
    assert len(list((tiny_cub_root / "images").rglob("*.jpg"))) == n
    assert len(list((tiny_cub_root / "segmentations").rglob("*.png"))) == n
    assert len(list((tiny_cub_root / "waterbird_complete95_forest2water2").rglob("*.jpg"))) == n


def test_labels_and_splits(tiny_cub_root):
    index = CUBIndex.load(tiny_cub_root)
    n = TINY.num_classes * TINY.images_per_class
    assert len(index.ids) == n and index.num_classes == TINY.num_classes
    assert sorted(set(index.labels.tolist())) == list(range(TINY.num_classes))  # 0-based
    assert np.bincount(index.labels).tolist() == [TINY.images_per_class] * TINY.num_classes
    per_class_train = np.bincount(index.labels[index.is_train], minlength=TINY.num_classes)
    assert per_class_train.tolist() == [TINY.images_per_class // 2] * TINY.num_classes
    train, test = CUBDataset(tiny_cub_root, "train"), CUBDataset(tiny_cub_root, "test")
    assert len(train) + len(test) == n and len(train) == n // 2
    image, label = train[0]
    assert image.mode == "RGB" and image.size[1] == TINY.image_size and 0 <= label < TINY.num_classes


def test_masks_align_with_birds_and_boxes(tiny_cub_root):
    boxes = {int(f[0]): [float(v) for v in f[1:]]
             for f in (line.split() for line in (tiny_cub_root / "bounding_boxes.txt").read_text().splitlines())}
    ds = CUBDataset(tiny_cub_root, "all", mask_sub_path="segmentations", mask_threshold=None)
    for i in range(len(ds)):
        image, mask, _ = ds[i]
        soft = np.asarray(mask)
        assert soft.shape == (image.size[1], image.size[0])
        # soft, antialiased edges: intermediate values exist, interior is fully opaque
        assert (soft == 255).sum() > 0.05 * soft.size
        assert ((soft > 0) & (soft < 255)).sum() > 0
        x, y, w, h = boxes[int(ds.ids[i])]
        ys, xs = np.nonzero(soft)
        assert xs.min() >= x and xs.max() < x + w and ys.min() >= y and ys.max() < y + h
        # part locations (visible ones) fall inside the image
    for line in (tiny_cub_root / "parts/part_locs.txt").read_text().splitlines():
        _, _, px, py, vis = line.split()
        if vis == "1":
            assert float(px) >= 0 and float(py) >= 0


def test_waterbirds_equals_cub_inside_mask_and_differs_outside(tiny_cub_root):
    cub = CUBDataset(tiny_cub_root, "all", mask_sub_path="segmentations", mask_threshold=None)
    wb = CUBDataset(tiny_cub_root, "all", image_sub_path="waterbird_complete95_forest2water2")
    inside_err, outside_diff = [], []
    for i in range(len(cub)):
        image, mask, label = cub[i]
        wb_image, wb_label = wb[i]
        assert wb_label == label and wb_image.size == image.size
        a, b, m = (np.asarray(x, np.float32) for x in (image, wb_image, mask))
        # compare away from the antialiased edge, where both JPEGs encode the same bird pixels
        core = np.asarray(mask.filter(ImageFilter.MinFilter(5))) == 255
        inside_err.append(np.abs(a - b)[core].mean())
        outside_diff.append(np.abs(a - b)[m == 0].mean())
    assert np.mean(inside_err) < 3.0  # JPEG noise only
    assert np.mean(outside_diff) > 20.0  # a different background


def test_waterbirds_metadata_columns_and_values(tiny_cub_root):
    path = tiny_cub_root / "waterbird_complete95_forest2water2/metadata.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == WATERBIRDS_COLUMNS
    index = CUBIndex.load(tiny_cub_root)
    species = make_species(TINY)
    for row, label, is_train in zip(rows, index.labels, index.is_train):
        assert int(row["y"]) == int(HABITAT_NAMES[species[label].home_habitat] == "water")
        assert 0 <= int(row["place"]) < TINY.habitats
        assert int(row["split"]) == 2 if not is_train else int(row["split"]) in (0, 1)
    ds = CUBDataset(tiny_cub_root, "test", image_sub_path="waterbird_complete95_forest2water2")
    assert ds.places is not None and len(ds.places) == len(ds)


def test_bias_controls_habitat_correlation(tmp_path):
    """CUB backgrounds follow the home habitat at rate ~bias; Waterbirds backgrounds are independent of species."""
    cfg = SyntheticConfig(num_classes=4, images_per_class=50, image_size=32, habitats=4, bias=0.9, seed=1)
    summary = generate(tmp_path, cfg, progress=False)
    assert 0.8 < summary.home_habitat_rate < 0.97
    with open(summary.waterbirds_root / "metadata.csv", newline="") as f:
        places = np.array([int(r["place"]) for r in csv.DictReader(f)])
    labels = CUBIndex.load(summary.cub_root).labels
    homes = np.array([make_species(cfg)[c].home_habitat for c in labels])
    assert 0.1 < (places == homes).mean() < 0.4  # ~1/habitats, not ~bias


def test_deterministic_for_a_seed_and_seed_matters(tmp_path):
    cfg = SyntheticConfig(num_classes=3, images_per_class=4, image_size=48, seed=3)
    a = generate(tmp_path / "a", cfg, progress=False).cub_root
    b = generate(tmp_path / "b", cfg, progress=False).cub_root
    c = generate(tmp_path / "c", SyntheticConfig(num_classes=3, images_per_class=4, image_size=48, seed=4),
                 progress=False).cub_root
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)


def test_refuses_to_overwrite_and_validates_config(tmp_path):
    cfg = SyntheticConfig(num_classes=2, images_per_class=2, image_size=32)
    generate(tmp_path, cfg, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(tmp_path, cfg, progress=False)
    generate(tmp_path, cfg, progress=False, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left behind
    with pytest.raises(ValueError, match="habitats"):
        generate(tmp_path / "x", SyntheticConfig(habitats=9), progress=False)


def test_species_are_unique_and_fine_grained():
    species = make_species(SyntheticConfig(num_classes=40))
    assert len({s.name for s in species}) == 40
    looks = {(s.body, s.cap, s.wing_bar, s.beak_length, s.crest, s.forked_tail, s.breast_spot, s.body_aspect)
             for s in species}
    assert len(looks) == 40  # every species is visually distinct
    # siblings share plumage and shape (fine-grained) and have different home habitats (the shortcut)
    genus0 = [s for s in species if s.genus == 0]
    assert len({s.body for s in genus0}) == 1 and len({s.home_habitat for s in genus0}) == len(genus0)
