"""CUB soft segmentations -> {0, 1} maps in MMSeg's folder layout (``images/``, ``annotations/``), validated."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from bgmask.data.cub import WATERBIRDS_SUB_PATH, CUBIndex, load_mask, mask_path_for
from bgmask.errors import DatasetError
from bgmask.io import listing

LINK_MODES = ("symlink", "hardlink", "copy")
MANIFEST = "prepare_manifest.json"


def _place(src: Path, dst: Path, link: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link == "symlink":
        os.symlink(src.resolve(), dst)
    elif link == "hardlink":
        try:
            os.link(src, dst)
        except OSError as e:
            raise DatasetError(f"Cannot hard-link {src} into {dst.parent} ({e}); hard links need the same file "
                               f"system. Use --link symlink or --link copy.") from None
    else:
        shutil.copyfile(src, dst)


def _write_map(task: tuple[str, str, str]) -> tuple[int, int]:
    """Threshold one CUB soft mask at > 0, save it as a {0, 1} PNG; return (bird pixels, all pixels)."""
    image_path, seg_path, out_path = task
    with Image.open(image_path) as img:  # header only: the map must match the image size
        size = img.size
    binary = np.asarray(load_mask(seg_path, size, threshold=0), dtype=np.uint8)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(binary).save(out_path, format="PNG")
    return int(binary.sum()), binary.size


def _check_sizes(reference_root: Path, other_root: Path, rel_paths: Iterable[str]) -> None:
    wrong = []
    for rel in rel_paths:
        with Image.open(reference_root / rel) as a, Image.open(other_root / rel) as b:
            if a.size != b.size:
                wrong.append(f"{rel} ({b.size[0]}x{b.size[1]} vs {a.size[0]}x{a.size[1]})")
    if wrong:
        raise DatasetError(f"{len(wrong)} Waterbirds images differ in size from their CUB originals: "
                           f"{listing(wrong)}. The Waterbirds test maps are CUB's, so the images must keep CUB's "
                           f"geometry; is {other_root} the waterbird_complete95_forest2water2 folder of this CUB?")


def validate_layout(out: Path, splits: dict[str, str]) -> dict[str, int]:
    """Check that every ``.jpg`` under ``out/images/<split>`` has its map under ``out/annotations/<ann_split>``.

    Args:
        out: the prepared dataset root.
        splits: image split folder -> annotation split folder, e.g. ``{'waterbird_test': 'test'}``.

    Returns:
        The number of images per split.
    """
    counts = {}
    for split, ann_split in splits.items():
        img_dir, ann_dir = out / "images" / split, out / "annotations" / ann_split
        images = sorted(p.relative_to(img_dir) for p in img_dir.rglob("*.jpg"))
        if not images:
            raise DatasetError(f"{img_dir} holds no .jpg images.")
        missing = [str(p) for p in images if not (ann_dir / p.with_suffix(".png")).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} images under {img_dir} have no map in {ann_dir}: {listing(missing)}.")
        counts[split] = len(images)
    return counts


def prepare_cub_binary_seg(cub_root: str | os.PathLike, out: str | os.PathLike, waterbirds_root=None,
                           link: str = "symlink", overwrite: bool = False, skip_waterbirds: bool = False,
                           num_workers: int = 0, progress: bool = True) -> dict:
    """Build the MMSeg dataset of binary bird maps from a CUB root.

    The tree is written to a sibling temporary folder and renamed into place at the end, so ``out`` is either
    absent, a complete previous output, or a complete new one, never a mix.

    Args:
        cub_root: the ``CUB_200_2011`` folder (``images.txt``, ``images/``, ``segmentations/``).
        out: output root; gets ``images/{train,test,waterbird_test}``, ``annotations/{train,test}`` and a manifest.
        waterbirds_root: Waterbirds image folder; default ``cub_root/waterbird_complete95_forest2water2``.
        link: how images are placed: 'symlink' (absolute links), 'hardlink' or 'copy'.
        overwrite: replace an existing ``out``; without it an existing, non-empty ``out`` is an error.
        skip_waterbirds: build without ``images/waterbird_test`` (no Waterbirds folder available).
        num_workers: processes that threshold and write the maps (0: in this process).
        progress: show a progress bar.

    Returns:
        The manifest: counts per split, bird pixel fraction, sources and options.
    """
    from bgmask.infra.progress import progress_bar

    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    cub_root, out = Path(cub_root).resolve(), Path(out).resolve()
    index = CUBIndex.load(cub_root)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty (an earlier or another dataset's output). "
                              f"Pass --overwrite to replace it, or choose another --out.")
    if out == cub_root or out in cub_root.parents or any(out.is_relative_to(cub_root / d) for d in ("images",
                                                                                                "segmentations")):
        # --overwrite deletes ``out``: it must never contain (or be inside) the source data.
        raise ValueError(f"--out {out} overlaps the CUB data in {cub_root}; choose a separate folder, e.g. "
                         f"{cub_root.parent / 'cub_binary_segmentation'}.")
    image_root, seg_root = cub_root / "images", cub_root / "segmentations"
    wb_root = None if skip_waterbirds else Path(waterbirds_root or cub_root / WATERBIRDS_SUB_PATH).resolve()
    if wb_root is not None and not wb_root.is_dir():
        raise DatasetError(f"Waterbirds folder {wb_root} does not exist. Pass --waterbirds_root, or "
                           f"--skip_waterbirds to build without images/waterbird_test.")

    # Every input is checked before anything is written: a missing file is reported with the fix, not mid-way.
    rel_paths = list(index.paths)
    for folder, rels, what in ((image_root, rel_paths, "image"),
                               (seg_root, [mask_path_for(p) for p in rel_paths], "segmentation")):
        missing = [p for p in rels if not (folder / p).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} {what} files listed in {cub_root / 'images.txt'} are missing under "
                               f"{folder}: {listing(missing)}. Re-extract CUB_200_2011 (segmentations come as a "
                               f"separate archive, segmentations.tgz).")
    test_rels = [index.paths[i] for i in index.select("test").tolist()]
    if wb_root is not None:
        missing = [p for p in test_rels if not (wb_root / p).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} CUB test images are missing from the Waterbirds folder {wb_root}: "
                               f"{listing(missing)}.")
        _check_sizes(image_root, wb_root, test_rels)

    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)  # leftover of an interrupted run: never reused
    tmp.mkdir(parents=True)
    try:
        tasks, bird_pixels, all_pixels = [], 0, 0
        for i, rel in enumerate(rel_paths):
            split = "train" if index.is_train[i] else "test"
            _place(image_root / rel, tmp / "images" / split / rel, link)
            tasks.append((str(image_root / rel), str(seg_root / mask_path_for(rel)),
                          str(tmp / "annotations" / split / mask_path_for(rel))))
        if wb_root is not None:
            for rel in test_rels:
                _place(wb_root / rel, tmp / "images" / "waterbird_test" / rel, link)
        bar = progress_bar(total=len(tasks), desc="binary maps", unit="map", disable=not progress)
        if num_workers > 0:
            with Pool(num_workers) as pool:
                for bird, total in pool.imap_unordered(_write_map, tasks, chunksize=32):
                    bird_pixels, all_pixels = bird_pixels + bird, all_pixels + total
                    bar.update()
        else:
            for task in tasks:
                bird, total = _write_map(task)
                bird_pixels, all_pixels = bird_pixels + bird, all_pixels + total
                bar.update()
        bar.close()
        splits = {"train": "train", "test": "test"} | ({"waterbird_test": "test"} if wb_root is not None else {})
        counts = validate_layout(tmp, splits)
        manifest = dict(cub_root=str(cub_root), waterbirds_root=str(wb_root) if wb_root else None, link=link,
                        threshold="> 0", classes=["background", "bird"], counts=counts,
                        bird_pixel_fraction=round(bird_pixels / max(all_pixels, 1), 4))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
