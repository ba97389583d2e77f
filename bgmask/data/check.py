"""Validate a CUB-format dataset tree (real or synthetic) and print a summary: ``python -m bgmask.data.check ROOT``."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from bgmask.data.cub import (
    GT_MASK_SUB_PATH,
    WATERBIRDS_SUB_PATH,
    CUBDataset,
    CUBIndex,
    DatasetError,
    mask_path_for,
    missing_folder_hint,
)
from bgmask.data.masks import MASK_FOLDERS, PROVENANCE_FILE
from bgmask.infra.argparsing import parser_from_doc

# Optional parts of the tree and what needs them (masked folders: see mmsegmentation/tools/generate_masks.py).
OPTIONAL_MASK_FOLDERS = {
    GT_MASK_SUB_PATH: "segmentation data preparation, generate_masks.py --gt and late masking --mask_source gt",
    MASK_FOLDERS["images"][0]: "late masking --mask_source precomputed",
    MASK_FOLDERS[WATERBIRDS_SUB_PATH][0]: "late masking's Waterbirds evaluation with precomputed masks",
}
OPTIONAL_IMAGE_FOLDERS = {
    WATERBIRDS_SUB_PATH: "every run's Waterbirds (OOD) evaluation",
    MASK_FOLDERS["images"][1]: "early masking",
    MASK_FOLDERS[WATERBIRDS_SUB_PATH][1]: "early masking's Waterbirds evaluation",
}


def find_cub_root(path: Path) -> Path:
    """Accept either the ``CUB_200_2011`` folder or its parent."""
    return path / "CUB_200_2011" if not (path / "images.txt").exists() and (path / "CUB_200_2011").is_dir() else path


def summarize(root: Path, sample_decode: int = 20) -> list[str]:
    """Validate ``root`` and return summary lines; raises :class:`DatasetError` on the first hard problem."""
    index = CUBIndex.load(root)
    n_train = int(index.is_train.sum())
    n_test = len(index.ids) - n_train
    lines = [f"CUB root: {root}",
             f"  {len(index.ids)} images, {index.num_classes} classes, {n_train} train / {n_test} test"]
    ds = CUBDataset(root, "all")  # checks every image file exists
    sizes = Counter()
    step = max(1, len(ds) // max(1, sample_decode))
    for i in range(0, len(ds), step):
        sizes[ds[i][0].size] += 1  # decodes a sample to catch corrupt files early
    lines.append(f"  images/: all {len(ds)} files present; decoded {sum(sizes.values())} samples, sizes "
                 + ", ".join(f"{w}x{h}" for w, h in sorted(sizes)))
    lines += optional_parts(root, index)
    return lines


def optional_parts(root: Path, index: CUBIndex) -> list[str]:
    """One line per optional part: present (complete or not, with provenance) or absent with what supplies it."""
    lines = []
    for folder, needed_by in OPTIONAL_MASK_FOLDERS.items():
        if (root / folder).is_dir():
            missing = [p for p in index.paths if not (root / folder / mask_path_for(p)).is_file()]
            status = "complete" if not missing else f"MISSING {len(missing)} (e.g. {missing[0]})"
            lines.append(f"  {folder}/: masks {status}{_provenance(root / folder)}")
        else:
            lines.append(f"  {folder}/: absent (needed by {needed_by}). {missing_folder_hint(root, folder)}")
    for folder, needed_by in OPTIONAL_IMAGE_FOLDERS.items():
        if not (root / folder).is_dir():
            lines.append(f"  {folder}/: absent (needed by {needed_by}). {missing_folder_hint(root, folder)}")
            continue
        try:
            sub = CUBDataset(root, "test", image_sub_path=folder)
        except DatasetError as e:
            lines.append(f"  {folder}/: PROBLEM: {e}")
            continue
        if sub.places is not None:
            counts = Counter(sub.places.tolist())
            extra = ", metadata.csv OK, test places " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        elif folder.startswith(WATERBIRDS_SUB_PATH):
            extra = (f", NO metadata.csv (group metrics will be absent; it ships with the {WATERBIRDS_SUB_PATH} "
                     f"release)")
        else:
            extra = ""
        lines.append(f"  {folder}/: all {len(sub)} test images present{extra}")
    return lines


def _provenance(folder: Path) -> str:
    record = folder / PROVENANCE_FILE
    if not record.is_file():
        return ", provenance unknown (no " + PROVENANCE_FILE + ")"
    try:
        return f", from {json.loads(record.read_text())}"
    except json.JSONDecodeError:
        return f", provenance unreadable ({record})"


def main(argv=None) -> int:
    p = parser_from_doc(__doc__, prog="python -m bgmask.data.check")
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
