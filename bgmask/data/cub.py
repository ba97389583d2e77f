"""CUB-200-2011 and Waterbirds readers: index parsing, up-front validation, image/mask loading, metadata join."""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bgmask.errors import DatasetError
from bgmask.io import listing

WATERBIRDS_SUB_PATH = "waterbird_complete95_forest2water2"
GT_MASK_SUB_PATH = "segmentations"  # CUB's ground-truth masks (> 0 is bird)
WATERBIRDS_COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")
INDEX_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
SPLITS = ("train", "test", "all")


def parse_index_file(path: Path, num_fields: int) -> dict[int, list[str]]:
    """Parse a CUB ``id value...`` text file into ``{id: [values]}``.

    The last field may contain spaces only when ``num_fields`` allows it (it never does in CUB). Blank lines are
    ignored. Raises :class:`DatasetError` naming the file and line for malformed content or duplicate ids.
    """
    entries: dict[int, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != num_fields:
                raise DatasetError(f"{path}:{line_no}: expected {num_fields} space-separated fields, got "
                                   f"{len(fields)} in {line.strip()!r}. Is the file truncated or from another dataset?")
            try:
                key = int(fields[0])
            except ValueError:
                raise DatasetError(f"{path}:{line_no}: the first field must be an integer image id, got "
                                   f"{fields[0]!r}.") from None
            if key in entries:
                raise DatasetError(f"{path}:{line_no}: image id {key} appears twice.")
            entries[key] = fields[1:]
    return entries


@dataclass(frozen=True)
class CUBIndex:
    """The image list of a CUB-format root: ids, relative paths, 0-based labels and the train/test flag.

    Build it with :meth:`load`, which validates the index files against each other.
    """

    root: Path
    ids: np.ndarray  # int64, sorted
    paths: tuple[str, ...]  # relative to the image root, e.g. "001.Black_footed_Albatross/xxx.jpg"
    labels: np.ndarray  # int64, 0-based
    is_train: np.ndarray  # bool
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def load(cls, root: str | os.PathLike) -> CUBIndex:
        """Read and cross-check ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` and
        ``classes.txt``."""
        root = Path(root)
        if not root.is_dir():
            hint = ""
            if (root / "CUB_200_2011").is_dir():
                hint = f" It contains CUB_200_2011/: did you mean {root / 'CUB_200_2011'}?"
            raise DatasetError(f"CUB root {root} does not exist or is not a folder.{hint} Pass the folder that holds "
                               f"images.txt (the extracted CUB_200_2011/), or generate the synthetic benchmark with "
                               f"`python scripts/make_synthetic_cub.py --out data/synthetic`.")
        missing = [name for name in (*INDEX_FILES, "classes.txt") if not (root / name).is_file()]
        if missing:
            hint = ""
            if (root / "CUB_200_2011").is_dir():
                hint = f" It contains CUB_200_2011/: did you mean {root / 'CUB_200_2011'}?"
            raise DatasetError(f"CUB root {root} lacks index file(s) {', '.join(missing)}.{hint} Check that the "
                               f"archive was fully extracted and that the path points at CUB_200_2011/.")
        images = parse_index_file(root / "images.txt", 2)
        labels = parse_index_file(root / "image_class_labels.txt", 2)
        splits = parse_index_file(root / "train_test_split.txt", 2)
        classes = parse_index_file(root / "classes.txt", 2)

        ids = set(images)
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", splits)):
            if set(table) != ids:
                only_images = sorted(ids - set(table))
                only_other = sorted(set(table) - ids)
                parts = []
                if only_images:
                    parts.append(f"ids in images.txt but not in {name}: {listing(only_images)}")
                if only_other:
                    parts.append(f"ids in {name} but not in images.txt: {listing(only_other)}")
                raise DatasetError(f"{root}: images.txt and {name} disagree; " + "; ".join(parts)
                                   + ". The index files come from different dataset versions or one is truncated.")
        class_ids = sorted(classes)
        if class_ids != list(range(1, len(class_ids) + 1)):
            raise DatasetError(f"{root / 'classes.txt'}: class ids must be 1..N without gaps, got "
                               f"{listing(class_ids)}.")

        sorted_ids = np.array(sorted(ids), dtype=np.int64)
        label_arr = np.empty(len(sorted_ids), dtype=np.int64)
        train_arr = np.empty(len(sorted_ids), dtype=bool)
        for i, image_id in enumerate(sorted_ids.tolist()):
            try:
                label = int(labels[image_id][0])
                flag = int(splits[image_id][0])
            except ValueError:
                raise DatasetError(f"{root}: image id {image_id} has a non-integer label or split flag "
                                   f"({labels[image_id][0]!r}, {splits[image_id][0]!r}).") from None
            if not 1 <= label <= len(class_ids):
                raise DatasetError(f"{root / 'image_class_labels.txt'}: image id {image_id} has label {label}, "
                                   f"outside 1..{len(class_ids)} (classes.txt).")
            if flag not in (0, 1):
                raise DatasetError(f"{root / 'train_test_split.txt'}: image id {image_id} has split flag {flag}; "
                                   f"expected 1 (train) or 0 (test).")
            label_arr[i], train_arr[i] = label - 1, bool(flag)
        return cls(root=root, ids=sorted_ids, paths=tuple(images[i][0] for i in sorted_ids.tolist()),
                   labels=label_arr, is_train=train_arr, class_names=tuple(classes[c][0] for c in class_ids))

    def select(self, split: str) -> np.ndarray:
        """Positions (into ``ids``/``paths``/``labels``) of the images in ``split`` ('train', 'test' or 'all')."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split == "all":
            return np.arange(len(self.ids))
        return np.flatnonzero(self.is_train if split == "train" else ~self.is_train)


GENERATE_MASKS_COMMAND = ("python mmsegmentation/tools/generate_masks.py --cub_root {root} --config SEG_CONFIG "
                          "--checkpoint SEG_CHECKPOINT   (or --gt for CUB's own segmentations)")


def missing_folder_hint(root: Path, sub_path: str) -> str:
    """How to obtain a missing folder ``root/sub_path`` of the CUB tree: what supplies it, or where it was
    misplaced."""
    name = Path(sub_path).name
    beside = root.parent / name
    if beside.is_dir() and beside != root / sub_path:
        return f"It was found next to the CUB root at {beside}; move it inside: mv {beside} {root}/"
    if name == GT_MASK_SUB_PATH:
        return (f"CUB's segmentations ship separately as segmentations.tgz (CUB-200-2011 download page); extract "
                f"it inside {root}/ so that {root}/segmentations/001.Black_footed_Albatross/... exists.")
    if name == WATERBIRDS_SUB_PATH:
        return (f"Download waterbird_complete95_forest2water2.tar.gz (the Waterbirds release) and extract it inside "
                f"{root}/.")
    if name in ("images_masked", "masks") or name.startswith(WATERBIRDS_SUB_PATH):
        return ("The segmentation step writes it (masks/, images_masked/ and their Waterbirds twins): "
                + GENERATE_MASKS_COMMAND.format(root=root)
                + (f". Waterbirds must be inside {root}/ first." if name.startswith(WATERBIRDS_SUB_PATH) else "."))
    return f"Check the sub-path ({sub_path!r}) relative to {root}."


def mask_path_for(image_rel_path: str) -> str:
    """Relative path of the mask of an image: same folder and stem, ``.png`` suffix (CUB ``segmentations/``)."""
    return str(Path(image_rel_path).with_suffix(".png"))


def _open_image(path: str | os.PathLike, mode: str, what: str, missing_hint: str) -> Image.Image:
    """Decode ``path`` into ``mode``; a missing or undecodable file becomes a DatasetError naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode)
    except FileNotFoundError:
        raise DatasetError(f"{what.capitalize()} file {path} is missing. {missing_hint}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"Cannot decode {what} {path} ({e}). The file is empty, corrupt or truncated; "
                           f"re-extract or regenerate it.") from None


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB (grayscale, palette and RGBA are converted); name the file if it cannot be decoded."""
    return _open_image(path, "RGB", "image", "It is listed in images.txt; re-extract the dataset or regenerate "
                                             "the masked folder.")


def load_mask(path: str | os.PathLike, size: tuple[int, int], threshold: int | None = 0) -> Image.Image:
    """Open a mask PNG as a single-channel image of ``size`` (W, H).

    Args:
        path: mask file (CUB soft segmentation 0..255, or a predicted {0, 255} mask).
        size: (width, height) of the image it belongs to; a different size is an error.
        threshold: pixels ``> threshold`` become 1 and the rest 0; ``None`` keeps the soft 0..255 values.
    """
    mask = _open_image(path, "L", "mask", "Generate masks for every image (see mmsegmentation/tools/"
                                          "generate_masks.py) or point the mask path at CUB's segmentations/.")
    if mask.size != tuple(size):
        raise DatasetError(f"Mask {path} is {mask.size[0]}x{mask.size[1]} but its image is {size[0]}x{size[1]}. "
                           f"Masks must be at the original image resolution; regenerate them for this image folder.")
    if threshold is None:
        return mask
    return Image.fromarray((np.asarray(mask) > threshold).astype(np.uint8))


@dataclass(frozen=True)
class WaterbirdsMetadata:
    """Per-image Waterbirds attributes from ``metadata.csv``, keyed by relative image path."""

    y: dict[str, int]
    place: dict[str, int]
    split: dict[str, int]

    @classmethod
    def load(cls, csv_path: str | os.PathLike) -> WaterbirdsMetadata:
        csv_path = Path(csv_path)
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in WATERBIRDS_COLUMNS if c not in columns]
            if missing:
                raise DatasetError(f"{csv_path} lacks column(s) {', '.join(missing)}; expected the Waterbirds columns "
                                   f"{', '.join(WATERBIRDS_COLUMNS)}. Use the metadata.csv shipped with "
                                   f"{WATERBIRDS_SUB_PATH}.")
            y, place, split = {}, {}, {}
            for line_no, row in enumerate(reader, start=2):
                try:
                    key = row["img_filename"]
                    y[key], place[key], split[key] = int(row["y"]), int(row["place"]), int(row["split"])
                except (TypeError, ValueError):
                    raise DatasetError(f"{csv_path}:{line_no}: y, place and split must be integers, got "
                                       f"{row}.") from None
        return cls(y=y, place=place, split=split)


class CUBDataset:
    """CUB-format images (optionally with masks) as a map-style dataset returning ``(image, label)``.

    The image root is switchable so one index serves the original images, pre-masked images, Waterbirds or any
    folder with the same relative paths. With ``mask_sub_path`` the dataset returns ``(image, mask, label)`` and
    ``transform`` receives ``(image, mask)`` (a joint transform) instead of the image alone.

    Args:
        root: the ``CUB_200_2011`` folder (holds ``images.txt``).
        split: 'train', 'test' or 'all'.
        image_sub_path: image folder relative to ``root`` (``images``, ``images_masked``,
            ``waterbird_complete95_forest2water2``...), or an absolute path.
        mask_sub_path: optional mask folder (``segmentations`` or a predicted-mask folder), same relative paths
            with a ``.png`` suffix.
        transform: callable applied to the PIL image, or to ``(image, mask)`` when masks are returned.
        mask_threshold: binarise masks at ``> threshold`` (CUB convention: 0); ``None`` keeps soft masks.
        with_metadata: join ``metadata.csv`` of the image folder (Waterbirds) for per-place/group metrics; ``None``
            joins it when the file exists.
        metadata_csv: read the metadata from this file instead of the image folder's.
        validate_files: check up front that every image (and mask) file exists.
        skip_missing: with ``validate_files``, drop images whose files are missing (with a warning giving the count
            and the first few) instead of failing. For evaluation-only sets (Waterbirds), never for training.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", image_sub_path: str = "images",
                 mask_sub_path: str | None = None, transform: Callable | None = None, mask_threshold: int | None = 0,
                 with_metadata: bool | None = None, validate_files: bool = True, skip_missing: bool = False,
                 metadata_csv: str | os.PathLike | None = None):
        self.index = CUBIndex.load(root)
        self.root = self.index.root
        self.split = split
        self.image_root = self._resolve(image_sub_path, "image folder")
        self.mask_root = self._resolve(mask_sub_path, "mask folder") if mask_sub_path else None
        self.transform = transform
        self.mask_threshold = mask_threshold
        positions = self.index.select(split)
        self.ids = self.index.ids[positions]
        self.paths = [self.index.paths[i] for i in positions.tolist()]
        self.labels = self.index.labels[positions]
        self.skipped: list[str] = []
        if validate_files:
            self._check_files(self.image_root, self.paths, "image", skip_missing)
            if self.mask_root is not None:
                self._check_files(self.mask_root, [mask_path_for(p) for p in self.paths], "mask", skip_missing)
        self.places = self.waterbird_y = None
        metadata_csv = Path(metadata_csv) if metadata_csv else self.image_root / "metadata.csv"
        if with_metadata or (with_metadata is None and metadata_csv.is_file()):
            if not metadata_csv.is_file():
                raise DatasetError(f"{metadata_csv} is missing; Waterbirds metrics need the metadata.csv that ships "
                                   f"with {WATERBIRDS_SUB_PATH}.")
            self._join_metadata(WaterbirdsMetadata.load(metadata_csv), metadata_csv)

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    def _resolve(self, sub_path: str, what: str) -> Path:
        path = Path(sub_path)
        path = path if path.is_absolute() else self.root / path
        if not path.is_dir():
            raise DatasetError(f"The {what} {path} does not exist. {missing_folder_hint(self.root, sub_path)}")
        return path

    def _check_files(self, folder: Path, rel_paths: list[str], what: str, skip_missing: bool) -> None:
        present = np.array([(folder / p).is_file() for p in rel_paths], dtype=bool)
        if present.all():
            return
        missing = [p for p, ok in zip(rel_paths, present) if not ok]
        message = (f"{len(missing)} of {len(rel_paths)} {what} files listed in {self.root / 'images.txt'} are missing "
                   f"under {folder}: {listing(missing)}.")
        if not skip_missing:
            raise DatasetError(f"{message} Re-extract the dataset or regenerate the folder.")
        warnings.warn(f"{message} Skipping them: this {self.split} set is evaluated on the {int(present.sum())} "
                      f"images that are present.", stacklevel=3)
        self.skipped += missing
        self.ids, self.labels = self.ids[present], self.labels[present]
        self.paths = [p for p, ok in zip(self.paths, present) if ok]

    def _join_metadata(self, meta: WaterbirdsMetadata, csv_path: Path) -> None:
        missing = [p for p in self.paths if p not in meta.place]
        if missing:
            raise DatasetError(f"{csv_path} has no row for {listing(missing)} of the {self.split} images. The "
                               f"metadata does not belong to this image folder.")
        self.places = np.array([meta.place[p] for p in self.paths], dtype=np.int64)
        self.waterbird_y = np.array([meta.y[p] for p in self.paths], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, i: int) -> Path:
        return self.image_root / self.paths[i]

    def mask_path(self, i: int) -> Path:
        if self.mask_root is None:
            raise ValueError("this dataset was built without mask_sub_path")
        return self.mask_root / mask_path_for(self.paths[i])

    def __getitem__(self, i: int):
        image = load_rgb(self.image_path(i))
        label = int(self.labels[i])
        if self.mask_root is None:
            return (self.transform(image) if self.transform else image), label
        mask = load_mask(self.mask_path(i), image.size, self.mask_threshold)
        if self.transform:
            image, mask = self.transform(image, mask)
        return image, mask, label
