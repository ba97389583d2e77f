"""Write bird masks and early-masked images for a CUB root and its Waterbirds folder (resumable, shardable)."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bgmask.data.cub import CUBIndex, load_rgb, mask_path_for
from bgmask.data.masks import (
    MASK_FOLDERS,
    PROVENANCE_FILE,
    copy_metadata,
    metadata_only_paths,
    write_gt_masked_folders,
    write_mask_and_masked_image,
)
from bgmask.errors import DatasetError
from bgmask.io import atomic_write_text, listing
from cub_seg.inference import Segmenter


@dataclass
class FolderPlan:
    """The work of one process on one image folder."""

    image_dir: str  # relative to the CUB root, e.g. 'images'
    mask_dir: str
    masked_dir: str
    todo: list[str] = field(default_factory=list)  # relative image paths still to write
    done: int = 0  # this process's share already written (skipped)


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a plain ``python`` run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def plan_folders(cub_root: Path, rank: int = 0, world_size: int = 1, overwrite: bool = False) -> list[FolderPlan]:
    """List, per image folder present (``images/`` and the Waterbirds folder), the images this process must write.

    Process ``rank`` takes every ``world_size``-th image. An image is finished when its mask exists (the mask is
    written last) and its masked image exists; finished images are skipped unless ``overwrite``.
    """
    index = CUBIndex.load(cub_root)
    plans = []
    for image_dir, (mask_dir, masked_dir) in MASK_FOLDERS.items():
        if not (cub_root / image_dir).is_dir():
            if image_dir == "images":
                raise DatasetError(f"{cub_root / 'images'} does not exist; is {cub_root} a CUB_200_2011 folder?")
            continue
        paths = folder_paths(cub_root, image_dir, index)
        missing = [p for p in paths if not (cub_root / image_dir / p).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} images listed in images.txt (or the folder's metadata.csv) are "
                               f"missing under {cub_root / image_dir}: {listing(missing)}. Re-extract the dataset.")
        plan = FolderPlan(image_dir, mask_dir, masked_dir)
        for rel in paths[rank::world_size]:
            finished = (cub_root / mask_dir / mask_path_for(rel)).is_file() and (cub_root / masked_dir / rel).is_file()
            if finished and not overwrite:
                plan.done += 1
            else:
                plan.todo.append(rel)
        plans.append(plan)
    return plans


def folder_paths(cub_root: Path, image_dir: str, index: CUBIndex) -> list[str]:
    """The images of a folder: images.txt's, and for a Waterbirds folder also those only its metadata.csv lists (the
    release lists the same images; the synthetic twin adds validation images there)."""
    return [*index.paths, *metadata_only_paths(cub_root, image_dir, index.paths)]


def remove_stale_temporary_files(cub_root: Path, plans: list[FolderPlan], rank: int = 0, world_size: int = 1) -> int:
    """Delete what a killed earlier run left half-written for this process's images (``atomic_write``'s
    ``.<name>.<random>.tmp`` files); the count removed.

    Only this shard's names: another shard running now never writes them, so its files in progress stay.
    """
    index = CUBIndex.load(cub_root)
    removed = 0
    for plan in plans:
        targets: dict[Path, set[str]] = {}
        for rel in folder_paths(cub_root, plan.image_dir, index)[rank::world_size]:
            for path in (cub_root / plan.mask_dir / mask_path_for(rel), cub_root / plan.masked_dir / rel):
                targets.setdefault(path.parent, set()).add(path.name)
        for folder, names in targets.items():
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and entry.name.endswith(".tmp") \
                        and entry.name[1:].rsplit(".", 2)[0] in names:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_provenance(cub_root: Path, plans: list[FolderPlan], source: dict, overwrite: bool, write: bool) -> None:
    """Refuse to add masks of one segmenter to a folder holding another's; record the source for the next run.

    Args:
        source: what produces the masks, e.g. ``{'source': 'gt'}`` or the checkpoint's sha256.
        write: record ``source`` in each mask folder (rank 0 only).
    """
    for plan in plans:
        path = cub_root / plan.mask_dir / PROVENANCE_FILE
        if path.is_file() and not overwrite:
            previous = json.loads(path.read_text())
            if previous != source:
                raise DatasetError(f"{cub_root / plan.mask_dir} holds masks from {previous}, not from {source}. "
                                   f"Pass --overwrite to regenerate every mask, or work on another copy of the "
                                   f"dataset.")
        elif not path.is_file() and plan.done and not overwrite:
            warnings.warn(f"{cub_root / plan.mask_dir} already holds masks of unknown origin; they are kept "
                          f"(--overwrite regenerates them).", stacklevel=2)
        if write:
            atomic_write_text(path, json.dumps(source, indent=2) + "\n")


def _order_by_shape(segmenter: Segmenter, image_root: Path, rel_paths: list[str]) -> list[str]:
    """Images sorted by :meth:`Segmenter.batch_key` (their test-resized size), so that images that can share an
    ``inference_model`` call are consecutive."""
    def key(rel):
        with Image.open(image_root / rel) as img:  # header only
            w, h = img.size
        return segmenter.batch_key(h, w)
    return sorted(rel_paths, key=lambda rel: (key(rel), rel))


def predict_folder(segmenter: Segmenter, image_root: Path, rel_paths: list[str], batch_size: int = 16,
                   num_workers: int = 0):
    """Yield ``(rel_path, rgb_image, mask)`` for ``rel_paths``: masks {0, 1} uint8 at the image's resolution.

    Args:
        segmenter: the loaded segmenter (``mmseg.apis.inference_model`` on lists of images of one test-resized size).
        image_root: folder the relative paths are under.
        rel_paths: images to predict (any sizes; images of one test-resized size are predicted together).
        batch_size: images per ``inference_model`` call.
        num_workers: threads decoding the next batches while the model runs (0: decode in this thread).
    """
    ordered = _order_by_shape(segmenter, image_root, rel_paths)
    chunks = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    for chunk, images in _decoded(image_root, chunks, num_workers):
        yield from zip(chunk, images, segmenter.predict_images(images, batch_size))


def _decoded(image_root: Path, chunks: list[list[str]], num_workers: int):
    """Yield ``(chunk, RGB arrays)`` in order; with workers, the next chunks are decoded in threads meanwhile."""
    def decode(chunk: list[str]) -> list[np.ndarray]:
        return [np.asarray(load_rgb(image_root / rel)) for rel in chunk]

    if not num_workers:
        for chunk in chunks:
            yield chunk, decode(chunk)
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        # At most 2 chunks per worker decoded ahead: memory stays bounded on a folder of any size.
        ahead: deque[tuple[list[str], Future]] = deque()
        for chunk in chunks:
            ahead.append((chunk, pool.submit(decode, chunk)))
            if len(ahead) > 2 * num_workers:
                done, future = ahead.popleft()
                yield done, future.result()
        while ahead:
            done, future = ahead.popleft()
            yield done, future.result()


def generate_predicted_masks(segmenter: Segmenter, cub_root: str | os.PathLike, source: dict, batch_size: int = 16,
                             num_workers: int = 0, overwrite: bool = False, progress: bool = True,
                             rank: int = 0, world_size: int = 1, num_writers: int = 2) -> dict:
    """Predict a mask for every image of ``cub_root`` (and its Waterbirds folder) and write the mask folders.

    Writes ``masks/`` ({0, 255} PNG) and ``images_masked/`` (background 0), and the Waterbirds equivalents
    (:data:`bgmask.data.masks.MASK_FOLDERS`) at the images' relative paths. Files are written atomically, finished
    images are skipped, and process ``rank`` of ``world_size`` handles every ``world_size``-th image.

    Args:
        segmenter: the loaded segmenter.
        cub_root: the CUB_200_2011 folder.
        source: provenance recorded in the mask folders (see :func:`check_provenance`).
        batch_size: images of one test-resized size per forward pass.
        num_workers: image-decoding threads (0: decode between forward passes).
        overwrite: rewrite finished images and ignore a different provenance.
        progress: show a progress bar (rank 0).
        rank: this process's shard index.
        world_size: number of shards.
        num_writers: threads encoding and writing the outputs while the model runs.

    Returns:
        ``{image_dir: {'written': n, 'skipped': n}}`` for this process's share.
    """
    from bgmask.infra.progress import progress_bar

    cub_root = Path(cub_root)
    plans = plan_folders(cub_root, rank, world_size, overwrite)
    check_provenance(cub_root, plans, source, overwrite, write=rank == 0)
    remove_stale_temporary_files(cub_root, plans, rank, world_size)
    stats = {}
    for plan in plans:
        bar = progress_bar(total=len(plan.todo), desc=f"masks -> {plan.masked_dir}", unit="img",
                   disable=not progress or rank != 0)
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=num_writers) as writers:
            for rel, rgb, mask in predict_folder(segmenter, cub_root / plan.image_dir, plan.todo, batch_size,
                                                 num_workers):
                pending.append(writers.submit(write_mask_and_masked_image, Image.fromarray(rgb), mask,
                                              cub_root / plan.mask_dir / mask_path_for(rel),
                                              cub_root / plan.masked_dir / rel))
                while len(pending) > 4 * batch_size or (pending and pending[0].done()):
                    pending.popleft().result()  # re-raises a failed write here
                    bar.update()
            while pending:
                pending.popleft().result()
                bar.update()
        bar.close()
        if rank == 0:
            copy_metadata(cub_root / plan.image_dir, cub_root / plan.masked_dir)
        stats[plan.image_dir] = dict(written=len(plan.todo), skipped=plan.done)
    return stats


def generate_gt_masks(cub_root: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> dict:
    """The oracle: CUB's own segmentations thresholded at > 0, written like predicted masks (single process)."""
    cub_root = Path(cub_root)
    if not (cub_root / "segmentations").is_dir():
        raise DatasetError(f"{cub_root / 'segmentations'} does not exist; --gt needs CUB's segmentations "
                           f"(segmentations.tgz, extracted into CUB_200_2011/).")
    plans = plan_folders(cub_root, overwrite=overwrite)
    check_provenance(cub_root, plans, {"source": "gt", "threshold": "> 0"}, overwrite, write=True)
    remove_stale_temporary_files(cub_root, plans)
    written = write_gt_masked_folders(cub_root, progress=progress, overwrite=overwrite)
    return {plan.image_dir: dict(written=written.get(plan.masked_dir, 0), skipped=plan.done) for plan in plans}
