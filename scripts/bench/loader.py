#!/usr/bin/env python
"""Training-loader throughput per CPU core at the paper's 518 px: images/s of one process reading, decoding and
augmenting CUB-sized JPEGs exactly as a training worker does (``CUBDataset`` + the run's training transform +
the per-image seeding of ``SeededAugmentation``), baseline (image only) and with the mask late masking loads.

Five loaders, measured side by side in one run:

* ``before``: timm's PIL pipeline with every op in the worker and ``torch.manual_seed`` per image, as the library
  loaded images before ``--device_tail`` and ``--fast_augment`` (the reference for the speed-ups);
* ``worker``: the same pipeline and today's seeding (``--device_tail off``, the default on CPU);
* ``device_tail``: the workers hand over uint8 pixels and erasing boxes (timm's GPU-loader convention, the default
  with CUDA);
* ``fast_worker``: ``--fast_augment`` with every op in the worker (the CPU default tail);
* ``fast``: ``--device_tail on --fast_augment``: the same draws with the crop's resize, RandAugment's geometry and
  sharpness on faster kernels. Its pixels are compared with ``device_tail``'s for the same seeds.

It also times the parts of one item (decode, augmentation up to the last PIL op, the float tail) for the PIL and the
fast pipeline. The images are synthetic (``make_synthetic_cub``) at CUB's size (~500 x 375 JPEG); only their size
and format matter here. One process, one thread: the figure is per core.

    python scripts/bench/loader.py                       # timm augmentation, RandAugment, random erasing 0.25
    python scripts/bench/loader.py --images 96 --repeat 5 --json runs/bench/loader.json
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

from bgmask.data.cub import GT_MASK_SUB_PATH, CUBDataset, load_rgb  # noqa: E402
from bgmask.data.sampling import SeededAugmentation  # noqa: E402
from bgmask.data.synthetic import SyntheticConfig, generate  # noqa: E402
from bgmask.data.transforms import build_train_transform  # noqa: E402


class SeededAsBefore(SeededAugmentation):
    """``SeededAugmentation`` seeding torch with ``torch.manual_seed`` (every device) as it did before."""

    seed_torch = staticmethod(torch.manual_seed)


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


def agreement(pil: SeededAugmentation, fast: SeededAugmentation, n: int) -> dict:
    """How far the fast pipeline's uint8 pixels are from the PIL pipeline's for the same seeds."""
    diffs = []
    for i in range(n):
        a, b = pil[i % len(pil)][0].pixels.int(), fast[i % len(fast)][0].pixels.int()
        diffs.append((a - b).abs().float())
    per_image = [float(d.mean()) for d in diffs]
    every = torch.cat([d.flatten() for d in diffs])
    return {"mean_abs_grey_levels": float(every.mean()), "worst_image_mean_abs": max(per_image),
            "share_of_values_off_by_more_than_8": float((every > 8).float().mean()),
            "images_within_rounding": sum(m <= 0.25 for m in per_image) / len(per_image)}


LOADERS = ("before", "worker", "device_tail", "fast_worker", "fast")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image_size", type=int, default=518, help="training crop (the paper's 518 px)")
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
        pipelines = {name: build_train_transform(args.image_size, "timm", args.aa, reprob=args.reprob,
                                                 device_tail=name in ("device_tail", "fast"),
                                                 fast=name.startswith("fast"))
                     for name in LOADERS}
        sample = load_rgb(CUBDataset(root, "all", "images", None).image_path(0))
        result = {"image_size": args.image_size, "aa": args.aa, "reprob": args.reprob,
                  "source_image": list(sample.size), "images_per_s": {}}
        for name in LOADERS:
            seeded = SeededAsBefore if name == "before" else SeededAugmentation
            result["images_per_s"][name] = {
                masks: throughput(seeded(CUBDataset(root, "all", "images", sub_path, transform=pipelines[name]), 0),
                                  args.images, args.repeat)
                for masks, sub_path in (("baseline", None), ("with_mask", GT_MASK_SUB_PATH))}
        result["speedup_over_before"] = {
            name: {masks: result["images_per_s"][name][masks] / result["images_per_s"]["before"][masks]
                   for masks in ("baseline", "with_mask")} for name in LOADERS[1:]}
        result["ms_per_image"] = {name: parts(CUBDataset(root, "all", "images", None, transform=pipelines[name]),
                                              args.images) for name in ("worker", "fast")}
        result["fast_vs_pil_pixels"] = agreement(
            SeededAugmentation(CUBDataset(root, "all", "images", None, transform=pipelines["device_tail"]), 0),
            SeededAugmentation(CUBDataset(root, "all", "images", None, transform=pipelines["fast"]), 0),
            args.images)
    print(f"timm augmentation at {args.image_size} px from {sample.size[0]}x{sample.size[1]} JPEGs, one core, "
          f"images/s (speed-up over 'before'):")
    for name in LOADERS:
        rates = result["images_per_s"][name]
        ups = result["speedup_over_before"].get(name)
        print(f"  {name:12s} baseline {rates['baseline']:6.1f}" + (f" ({ups['baseline']:.2f}x)" if ups else "")
              + f"   with mask {rates['with_mask']:6.1f}" + (f" ({ups['with_mask']:.2f}x)" if ups else ""))
    for name, ms in result["ms_per_image"].items():
        print(f"  per image, {name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    agree = result["fast_vs_pil_pixels"]
    print(f"  fast vs PIL pixels: mean |diff| {agree['mean_abs_grey_levels']:.3f} grey levels (worst image "
          f"{agree['worst_image_mean_abs']:.2f}), {100 * agree['share_of_values_off_by_more_than_8']:.3f} % of values "
          f"off by > 8, {100 * agree['images_within_rounding']:.0f} % of images within 0.25 on average")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
