"""Classify your own images with an export (:mod:`bgmask.export`), with their bird masks where the model needs them.

    python -m bgmask.predict --model EXPORT IMAGES_OR_FOLDER_OR_CSV... --out OUT [--masks DIR | --segmenter CFG CKPT]

Inputs are image files, folders (searched recursively) or CSV files with a ``path`` column (relative to the CSV;
an optional ``mask`` column names each image's mask). Masks: ``--masks DIR`` holds ``<image path relative to its
input folder>.png`` (what ``mmsegmentation/tools/generate_masks.py`` writes), pixels > 0 are bird; ``--segmenter``
runs the MMSeg model on every batch, as late masking's online source does. Late masking needs masks; early masking
applies them to the image (background black, as its masked folders) or, without masks, takes the images as already
masked; other strategies ignore them (the foreground share is still reported).

Writes ``OUT/predictions.csv`` (file, top-k classes and probabilities, the mask's foreground share at the model's
input) and with ``--figure`` ``OUT/gallery.png`` (image, mask, top-3, attribution map). Everything that can be
checked is checked before any image is classified (one-line errors naming the fix); an unreadable image is reported
by name and skipped, listed at the end, and the exit code is 1 when any was skipped.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bgmask.data.cub import load_mask, load_rgb
from bgmask.data.masks import apply_mask
from bgmask.data.transforms import build_eval_transform
from bgmask.errors import BgmaskError, DatasetError, PredictError
from bgmask.export import read_export
from bgmask.infra.argparsing import parser_from_doc
from bgmask.infra.progress import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def collect(inputs: list[str], mask_dir: str | None) -> list[tuple[Path, Path | None]]:
    """``(image, mask or None)`` for every input image, in input order (folders sorted)."""
    items = []
    for raw in inputs:
        path = Path(raw)
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and "path" not in rows[0]:
                raise PredictError(f"{path} has no 'path' column (columns: {', '.join(rows[0])}); name each image "
                                   f"in a 'path' column, relative to the CSV.")
            for row in rows:
                mask = row.get("mask") or None
                items.append((path.parent / row["path"], path.parent / mask if mask else
                              _mask_for(Path(row["path"]), mask_dir)))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            items += [(p, _mask_for(p.relative_to(path), mask_dir)) for p in found]
        elif path.is_file():
            items.append((path, _mask_for(Path(path.name), mask_dir)))
        else:
            raise PredictError(f"{path} is neither an image, a folder nor a CSV file.")
    if not items:
        raise PredictError(f"no images found in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return items


def _mask_for(relative: Path, mask_dir: str | None) -> Path | None:
    return Path(mask_dir) / relative.with_suffix(".png") if mask_dir else None


def image_size(path: Path) -> tuple[int, int] | None:
    """The image's (W, H) from its header, or None when it cannot be read (it is skipped later, by name)."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        return None


def check_masks(items: list[tuple[Path, Path | None]]) -> None:
    """Every mask exists and has its image's size (from the files' headers), before any work."""
    for image, mask in items:
        if mask is None:
            continue
        if not mask.is_file():
            raise PredictError(f"no mask {mask} for {image}: masks are <image path relative to its input>.png in "
                               f"--masks (generate them with mmsegmentation/tools/generate_masks.py).")
        size, mask_size = image_size(image), image_size(mask)
        if size is not None and mask_size is not None and size != mask_size:
            raise PredictError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                               f"{size[0]}x{size[1]}: masks must have the image's size (regenerate them for these "
                               f"images).")


def settle_masks(items, needs: str, segmenter: bool, model: str):
    """Every image with a mask, or none: a late-masking model without masks (or a segmenter) is refused, as is an
    early-masking model given masks for some images only; other models ignore a partial set (with a note)."""
    without = [image for image, mask in items if mask is None]
    if needs == "images and masks" and without and not segmenter:
        raise PredictError(f"{model} is a late-masking model: it needs a bird mask per image ({len(without)} of "
                           f"{len(items)} have none, e.g. {without[0]}); pass --masks DIR, a 'mask' column in the "
                           f"CSV, or --segmenter CONFIG CHECKPOINT.")
    if 0 < len(without) < len(items):
        if needs == "masked images":
            raise PredictError(f"masks for some images only ({len(without)} of {len(items)} have none, e.g. "
                               f"{without[0]}): an early-masking model needs every image masked, or none "
                               f"(pre-masked images).")
        print(f"note: {len(without)} of {len(items)} images have no mask: masks are ignored (this model does not "
              f"use them).")
        return [(image, None) for image, _ in items]
    return items


class Images(Dataset):
    """``(image tensor, mask H,W uint8 or an empty tensor, index, ok)``; an unreadable image gives ``ok=False``."""

    def __init__(self, items, transform, size: int, early: bool):
        self.items, self.transform, self.size, self.early = items, transform, size, early

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, mask_path = self.items[i]
        try:
            image = load_rgb(path)
        except DatasetError:
            return torch.zeros(3, self.size, self.size), torch.zeros(0, dtype=torch.uint8), i, False
        if mask_path is None:
            return self.transform(image), torch.zeros(0, dtype=torch.uint8), i, True
        mask = load_mask(mask_path, image.size)
        if self.early:  # early masking: the model saw images with the background black
            image = Image.fromarray(apply_mask(np.asarray(image), np.asarray(mask)))
        tensor, mask = self.transform(image, mask)
        return tensor, mask, i, True


def predict(model, items, out: Path, batch_size: int = 16, topk: int = 5, device: str = "cpu",
            segmenter=None, figure: bool = False, num_workers: int = 0, progress: bool = True) -> list[Path]:
    """Classify ``items`` into ``out/predictions.csv``; returns the images skipped as unreadable."""
    export = model.export
    t = export.transform
    transform = build_eval_transform(t["image_size"], t["crop_pct"], t["interpolation"], t["mean"], t["std"])
    late = export.needs == "images and masks"
    has_masks = all(mask is not None for _, mask in items)
    dev = torch.device(device)
    model = model.to(dev).eval()
    early = export.needs == "masked images"
    loader = DataLoader(Images(items, transform, t["image_size"], early), batch_size=batch_size,
                        num_workers=num_workers)
    black = ((0 - torch.tensor(t["mean"])) / torch.tensor(t["std"])).view(1, 3, 1, 1).to(dev)
    rows, skipped, shown = [], [], []
    names = export.label_names
    k = min(topk, len(names))
    for images, masks, index, ok in progress_bar(loader, desc="predict", disable=not progress):
        skipped += [items[i][0] for i, good in zip(index.tolist(), ok.tolist()) if not good]
        keep = ok.nonzero().flatten()
        if keep.numel() == 0:
            continue
        images, index = images[keep].to(dev), index[keep]
        masks = masks[keep].to(dev) if has_masks else segmenter(images) if segmenter is not None else None
        if early and segmenter is not None:  # background black, as early masking's folders hold the images
            images = torch.where(masks[:, None].bool(), images, black)
        with torch.no_grad():
            logits = model(images, masks) if late else model(images)
        probs = logits.float().softmax(-1).cpu()
        top_p, top_c = probs.topk(k, dim=-1)
        shares = masks.float().flatten(1).mean(1).cpu().tolist() if masks is not None else [None] * len(index)
        for i, p, c, share in zip(index.tolist(), top_p.tolist(), top_c.tolist(), shares):
            row = {"file": str(items[i][0])}
            for rank in range(k):
                row[f"class_{rank + 1}"] = names[c[rank]]
                row[f"prob_{rank + 1}"] = f"{p[rank]:.4f}"
            row["foreground_share"] = "" if share is None else f"{share:.3f}"
            rows.append(row)
        in_gallery = sum(len(batch[0]) for batch in shown)
        if figure and in_gallery < GALLERY_SIZE:
            take = slice(0, GALLERY_SIZE - in_gallery)
            shown.append((images[take].cpu(), None if masks is None else masks[take].cpu(), top_p[take], top_c[take],
                          index[take]))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "predictions.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "predictions.csv")
    if figure and shown:
        from bgmask.predict_figure import gallery

        gallery(model, shown, items, names, late, t, out / "gallery.png")
    return skipped


GALLERY_SIZE = 8


def main(argv=None) -> int:
    p = parser_from_doc(__doc__.split("\n\n")[0], prog="python -m bgmask.predict")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or CSV files with a 'path' column")
    p.add_argument("--model", required=True, help="an export folder (python -m bgmask.export RUN --out DIR)")
    p.add_argument("--out", type=Path, required=True, help="folder for predictions.csv (and gallery.png)")
    p.add_argument("--masks", help="folder of masks: <image path relative to its input>.png, pixels > 0 are bird")
    p.add_argument("--segmenter", nargs=2, metavar=("CONFIG", "CHECKPOINT"),
                   help="an MMSeg bird segmenter run on every batch (as late masking's online source)")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward")
    p.add_argument("--topk", type=int, default=5, help="classes per image in the CSV")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda")
    p.add_argument("--num_workers", type=int, default=0, help="loader workers")
    p.add_argument("--figure", action="store_true", help=f"also write gallery.png (the first {GALLERY_SIZE} images)")
    args = p.parse_args(argv)
    try:
        from bgmask.export import load_classifier

        export = read_export(args.model)
        if args.masks and args.segmenter:
            raise PredictError("give masks from a folder (--masks) or from a segmenter (--segmenter), not both.")
        items = collect(args.inputs, args.masks)
        if args.segmenter:  # the segmenter gives every image its mask
            items = [(image, None) for image, _ in items]
        items = settle_masks(items, export.needs, bool(args.segmenter), args.model)
        check_masks(items)
        segmenter = None
        if args.segmenter:
            from cub_seg.inference import SegmenterMaskProvider

            segmenter = SegmenterMaskProvider(*args.segmenter, input_mean=export.transform["mean"],
                                              input_std=export.transform["std"])
        if export.needs == "masked images" and not (args.masks or args.segmenter):
            print("early masking: no masks given, so the images are taken as already masked (background black).")
        skipped = predict(load_classifier(args.model), items, args.out, args.batch_size, args.topk, args.device,
                          segmenter, args.figure, args.num_workers)
    except BgmaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"predictions: {args.out / 'predictions.csv'} ({len(items) - len(skipped)} images)")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", *skipped, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
