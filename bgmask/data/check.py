"""Validate a CUB-format dataset tree (real or synthetic) and print a summary: ``python -m bgmask.data.check ROOT``."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from bgmask.data.cub import WATERBIRDS_SUB_PATH, CUBDataset, CUBIndex, DatasetError, mask_path_for

# Image folders the pipeline may write next to images/ (see mmsegmentation/tools/generate_masks.py).
OPTIONAL_IMAGE_FOLDERS = ("images_masked", WATERBIRDS_SUB_PATH, f"{WATERBIRDS_SUB_PATH}_masked")
OPTIONAL_MASK_FOLDERS = ("segmentations", "masks", f"{WATERBIRDS_SUB_PATH}_masks")


def find_cub_root(path: Path) -> Path:
    """Accept either the ``CUB_200_2011`` folder or its parent."""
    return path / "CUB_200_2011" if not (path / "images.txt").exists() and (path / "CUB_200_2011").is_dir() else path


def summarize(root: Path, sample_decode: int = 20) -> list[str]:
    """Validate ``root`` and return summary lines; raises :class:`DatasetError` on the first hard problem."""
    index = CUBIndex.load(root)
    n_train = int(index.is_train.sum())
    lines = [f"CUB root: {root}",
             f"  {len(index.ids)} images, {index.num_classes} classes, {n_train} train / {len(index.ids) - n_train} test"]
    ds = CUBDataset(root, "all")  # checks every image file exists
    sizes = Counter()
    step = max(1, len(ds) // max(1, sample_decode))
    for i in range(0, len(ds), step):
        sizes[ds[i][0].size] += 1  # decodes a sample to catch corrupt files early
    lines.append(f"  images/: all {len(ds)} files present; decoded {sum(sizes.values())} samples, sizes "
                 + ", ".join(f"{w}x{h}" for w, h in sorted(sizes)))
    for folder in OPTIONAL_MASK_FOLDERS:
        if (root / folder).is_dir():
            missing = [p for p in index.paths if not (root / folder / mask_path_for(p)).is_file()]
            status = "complete" if not missing else f"MISSING {len(missing)} (e.g. {missing[0]})"
            lines.append(f"  {folder}/: masks {status}")
    for folder in OPTIONAL_IMAGE_FOLDERS:
        if (root / folder).is_dir():
            try:
                sub = CUBDataset(root, "test", image_sub_path=folder)
            except DatasetError as e:
                lines.append(f"  {folder}/: PROBLEM: {e}")
                continue
            extra = ""
            if sub.places is not None:
                counts = Counter(sub.places.tolist())
                extra = ", test places " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            lines.append(f"  {folder}/: all {len(sub)} test images present{extra}")
    if not (root / WATERBIRDS_SUB_PATH).is_dir():
        lines.append(f"  {WATERBIRDS_SUB_PATH}/: absent (OOD evaluation will be skipped)")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("root", type=Path, help="CUB_200_2011 folder (or its parent)")
    args = p.parse_args(argv)
    try:
        print("\n".join(summarize(find_cub_root(args.root))))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
