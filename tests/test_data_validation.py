"""The CUB/Waterbirds data layer fails early and clearly on broken datasets, and loads odd image modes as RGB."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from bgmask.data.cub import CUBDataset, CUBIndex, load_mask
from bgmask.errors import DatasetError


def test_missing_root_suggests_cub_subfolder(tiny_cub_root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        CUBIndex.load(tmp_path / "nope")
    with pytest.raises(DatasetError, match="did you mean .*CUB_200_2011"):
        CUBIndex.load(tiny_cub_root.parent)


def test_missing_index_file(tiny_cub_copy):
    (tiny_cub_copy / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match="lacks index file.*train_test_split.txt"):
        CUBIndex.load(tiny_cub_copy)


def test_ids_disagree_between_files(tiny_cub_copy):
    path = tiny_cub_copy / "image_class_labels.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n")  # drop the last two ids
    with pytest.raises(DatasetError, match=r"disagree.*ids in images.txt but not in image_class_labels.txt: 23, 24"):
        CUBIndex.load(tiny_cub_copy)


def test_malformed_line_names_file_and_line(tiny_cub_copy):
    path = tiny_cub_copy / "train_test_split.txt"
    lines = path.read_text().splitlines()
    lines[2] = "3"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"train_test_split.txt:3: expected 2"):
        CUBIndex.load(tiny_cub_copy)


def test_missing_images_listed_with_count(tiny_cub_copy):
    images = sorted((tiny_cub_copy / "images").rglob("*.jpg"))
    for p in images[:7]:
        p.unlink()
    with pytest.raises(DatasetError, match=r"7 of 24 image files .* missing .*\(7 in total\)"):
        CUBDataset(tiny_cub_copy, "all")


def test_missing_image_folder_and_mask_folder(tiny_cub_root):
    with pytest.raises(DatasetError, match="images_masked .*does not exist"):
        CUBDataset(tiny_cub_root, "train", image_sub_path="images_masked")
    with pytest.raises(DatasetError, match="mask folder"):
        CUBDataset(tiny_cub_root, "train", mask_sub_path="masks")


def test_corrupt_image_named_at_load(tiny_cub_copy):
    ds = CUBDataset(tiny_cub_copy, "all")
    path = ds.image_path(3)
    path.write_bytes(path.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DatasetError, match=rf"Cannot decode image .*{path.name}"):
        ds[3]
    ds.image_path(4).write_bytes(b"")
    with pytest.raises(DatasetError, match=ds.image_path(4).name):
        ds[4]


def test_grayscale_and_rgba_load_as_rgb(tiny_cub_copy):
    ds = CUBDataset(tiny_cub_copy, "all")
    rgb = ds[0][0]
    Image.open(ds.image_path(0)).convert("L").save(ds.image_path(0), format="JPEG")
    Image.open(ds.image_path(1)).convert("RGBA").save(ds.image_path(1), format="PNG")  # PNG bytes, .jpg name
    gray, rgba = ds[0][0], ds[1][0]
    assert gray.mode == rgba.mode == "RGB" and gray.size == rgb.size


def test_mask_loading_threshold_and_size_check(tiny_cub_root):
    ds = CUBDataset(tiny_cub_root, "all", mask_sub_path="segmentations")
    image, mask, _ = ds[0]
    binary = np.asarray(mask)
    soft = np.asarray(Image.open(ds.mask_path(0)))
    assert set(np.unique(binary).tolist()) == {0, 1}
    assert np.array_equal(binary, (soft > 0).astype(np.uint8))
    with pytest.raises(DatasetError, match="Masks must be at the original image resolution"):
        load_mask(ds.mask_path(0), (image.size[0] + 1, image.size[1]))


def test_waterbirds_metadata_missing_column(tiny_cub_copy):
    csv_path = tiny_cub_copy / "waterbird_complete95_forest2water2/metadata.csv"
    text = csv_path.read_text().replace(",place,", ",location,", 1)
    csv_path.write_text(text)
    with pytest.raises(DatasetError, match="lacks column.*place"):
        CUBDataset(tiny_cub_copy, "test", image_sub_path="waterbird_complete95_forest2water2")


def test_joint_transform_receives_image_and_mask(tiny_cub_root):
    seen = {}

    def joint(image, mask):
        seen["sizes"] = (image.size, mask.size)
        return np.asarray(image), np.asarray(mask)

    ds = CUBDataset(tiny_cub_root, "test", mask_sub_path="segmentations", transform=joint)
    image, mask, label = ds[0]
    assert seen["sizes"][0] == seen["sizes"][1] and image.shape[:2] == mask.shape


def test_absolute_image_root(tiny_cub_root, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_cub_root / "images", copy)
    ds = CUBDataset(tiny_cub_root, "test", image_sub_path=str(copy))
    assert ds.image_path(0).is_relative_to(copy)


def test_waterbirds_with_missing_files_is_evaluated_on_what_is_there(tiny_cub_copy):
    folder = tiny_cub_copy / "waterbird_complete95_forest2water2"
    ds = CUBDataset(tiny_cub_copy, "test", image_sub_path=folder.name)
    for i in (0, 5):
        ds.image_path(i).unlink()
    with pytest.raises(DatasetError, match="2 of 12 image files"):
        CUBDataset(tiny_cub_copy, "test", image_sub_path=folder.name)
    with pytest.warns(UserWarning, match=r"2 of 12 image files .* evaluated on the 10 images"):
        partial = CUBDataset(tiny_cub_copy, "test", image_sub_path=folder.name, skip_missing=True)
    assert len(partial) == 10 and len(partial.places) == 10 and len(partial.skipped) == 2
    assert partial[0][1] == ds[1][1]  # labels stay aligned with the remaining images


def test_zero_byte_mask_named_at_load(tiny_cub_copy):
    ds = CUBDataset(tiny_cub_copy, "all", mask_sub_path="segmentations")
    ds.mask_path(2).write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"Cannot decode mask .*{ds.mask_path(2).name}.*regenerate"):
        ds[2]
