#!/usr/bin/env python
"""Training-loader throughput per CPU core at the paper's 518 px: images/s of one process reading, decoding and
augmenting CUB-sized JPEGs exactly as a training worker does (``CUBDataset`` + the run's training transform +
the per-image seeding of ``SeededAugmentation``), baseline (image only) and with the mask late masking loads.

It also times the parts of one item (decode, augmentation up to the tensor, ``ToTensor`` + normalisation + random
erasing) so the cost of the per-image float tail is visible, and measures, in the same run, the workers of
``--device_tail on`` (timm's GPU-loader convention: they hand over uint8 pixels and the erasing boxes, and the device
finishes whole batches).

The images are synthetic (``make_synthetic_cub``) at CUB's size (~500 x 375 JPEG); only their size and format
matter here. One process, one thread: the figure is per core.

    python scripts/bench/loader.py                       # timm augmentation, RandAugment, random erasing 0.25
    python scripts/bench/loader.py --augmentations cub_original --images 64 --json runs/bench/loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bgmask.data.cub import GT_MASK_SUB_PATH, CUBDataset, load_mask, load_rgb  # noqa: E402
from bgmask.data.sampling import SeededAugmentation  # noqa: E402
from bgmask.data.synthetic import SyntheticConfig, generate  # noqa: E402
from bgmask.data.transforms import build_train_transform  # noqa: E402


def throughput(dataset, n: int, repeat: int) -> float:
    """Images/s of ``dataset[i]`` over ``n`` items, best of ``repeat`` passes."""
    best = 0.0
    for r in range(repeat):
        dataset.set_epoch(r)
        start = time.perf_counter()
        for i in range(n):
            dataset[i % len(dataset)]
        best = max(best, n / (time.perf_counter() - start))
    return best


def parts(ds: CUBDataset, n: int) -> dict:
    """Milliseconds per image: decode, augmentation to the last PIL op, the tensor tail (ToTensor, Normalize,
    RandomErasing)."""
    ops = ds.transform.compose.transforms
    tail_start = next(k for k, op in enumerate(ops) if "ToTensor" in type(op).__name__)
    head, tail = ops[:tail_start], ops[tail_start:]
    totals = {"decode": 0.0, "augment": 0.0, "tensor_tail": 0.0}
    for i in range(n):
        t0 = time.perf_counter()
        image = load_rgb(ds.image_path(i % len(ds)))
        t1 = time.perf_counter()
        for op in head:
            image = op(image)
        t2 = time.perf_counter()
        for op in tail:
            image = op(image)
        t3 = time.perf_counter()
        totals["decode"] += t1 - t0
        totals["augment"] += t2 - t1
        totals["tensor_tail"] += t3 - t2
    return {k: 1000 * v / n for k, v in totals.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image_size", type=int, default=518, help="training crop (the paper's 518 px)")
    p.add_argument("--augmentations", default="timm", choices=("timm", "cub_original"))
    p.add_argument("--aa", default="rand-m9-mstd0.5-inc1")
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--images", type=int, default=48, help="items timed per pass")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        # 375 px high, 4:3 or 3:4: the size of CUB's JPEGs.
        root = generate(Path(tmp), SyntheticConfig(num_classes=4, images_per_class=12, image_size=375),
                        progress=False).cub_root
        transform = build_train_transform(args.image_size, args.augmentations, args.aa, reprob=args.reprob)
        tail = build_train_transform(args.image_size, args.augmentations, args.aa, reprob=args.reprob,
                                     device_tail=True)
        image_only = CUBDataset(root, "all", "images", None, transform=transform)
        with_mask = CUBDataset(root, "all", "images", GT_MASK_SUB_PATH, transform=transform)
        tail_image_only = CUBDataset(root, "all", "images", None, transform=tail)
        tail_with_mask = CUBDataset(root, "all", "images", GT_MASK_SUB_PATH, transform=tail)
        sample = load_rgb(image_only.image_path(0))
        load_mask(with_mask.mask_path(0), sample.size)  # the masks exist and load
        result = {"image_size": args.image_size, "augmentations": args.augmentations, "aa": args.aa,
                  "reprob": args.reprob, "source_image": list(sample.size),
                  "baseline_images_per_s": throughput(SeededAugmentation(image_only, 0), args.images, args.repeat),
                  "with_mask_images_per_s": throughput(SeededAugmentation(with_mask, 0), args.images, args.repeat),
                  "device_tail_baseline_images_per_s": throughput(SeededAugmentation(tail_image_only, 0), args.images,
                                                                  args.repeat),
                  "device_tail_with_mask_images_per_s": throughput(SeededAugmentation(tail_with_mask, 0),
                                                                   args.images, args.repeat),
                  "ms_per_image": parts(image_only, args.images)}
    print(f"{args.augmentations} augmentation at {args.image_size} px from {sample.size[0]}x{sample.size[1]} JPEGs, "
          f"one core: baseline {result['baseline_images_per_s']:.1f} images/s, with mask "
          f"{result['with_mask_images_per_s']:.1f} images/s; workers of --device_tail on: baseline "
          f"{result['device_tail_baseline_images_per_s']:.1f}, with mask "
          f"{result['device_tail_with_mask_images_per_s']:.1f} images/s; per image (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in result["ms_per_image"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
