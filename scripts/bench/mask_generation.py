#!/usr/bin/env python
r"""Mask-generation throughput: generate_masks.py's path vs a naive loop of one ``inference_model`` call per image.

Modes, all predicting masks at each image's original resolution with MMSeg's ``mmseg.apis.inference_model``:
  inference_model   one call per image path (MMSeg decodes the file): the naive loop
  grouped_bs{N}     cub_seg.generate.predict_folder, as generate_masks.py runs it: images sorted by their size after
                    the test resize, lists of up to N images of one such size per call, decoded by --num_workers
                    threads ahead of the model
Writing the PNG/JPEG outputs is excluded (it is the same for every mode and runs in writer threads).

Our former batched re-implementation of the test pipeline and data preprocessor (resize, pad, normalise, crop and
resize back, in cub_seg/inference.py up to commit df2694f) was timed against this path once, before it was deleted:
same process, interleaved rounds (best of 3, resp. 2), tiny SegFormer, 400 synthetic images, 1 torch thread on 2
shared CPU cores. Old/new throughput: 0.98 at batch 8 with 2 decoding workers (49.8 vs 50.8 images/s), 1.02 at
batch 32 without workers (62.7 vs 61.2); the masks agreed on 99.96% of the pixels. Far from the 1.5x that would have
justified keeping a second implementation of MMSeg's pipeline.

Example (the synthetic benchmark and the tiny segmenter, see mmsegmentation/README.md):
  python scripts/bench/mask_generation.py --cub_root data/synthetic/CUB_200_2011 \
      --config mmsegmentation/configs/segformer_mit-b0_tiny_synthetic-128x128.py \
      --checkpoint runs/seg_tiny/iter_1200.pth --out runs/bench/mask_generation.json
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")  # mmseg's construction-time advice would drown the figures

import torch  # noqa: E402

from bgmask.data.cub import CUBIndex  # noqa: E402
from bgmask.infra.distributed import resolve_device  # noqa: E402
from cub_seg.generate import predict_folder  # noqa: E402
from cub_seg.inference import Segmenter, load_segmenter  # noqa: E402
from cub_seg.runner import disable_pretrained  # noqa: E402


def random_init_checkpoint(config: str, folder: str) -> str:
    """A checkpoint of the randomly initialised model: throughput does not depend on the weights."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    cfg = Config.fromfile(config)
    disable_pretrained(cfg)
    init_default_scope("mmseg")
    path = os.path.join(folder, "random_init.pth")
    torch.save({"state_dict": MODELS.build(cfg.model).state_dict(), "meta": {}}, path)
    return path


def time_inference_model(model, paths: list[Path]) -> float:
    from mmseg.apis import inference_model

    start = time.perf_counter()
    for path in paths:
        result = inference_model(model, str(path))
        result.pred_sem_seg.data.cpu()
    return time.perf_counter() - start


def time_grouped(segmenter: Segmenter, image_root: Path, rels: list[str], batch_size: int, num_workers: int) -> float:
    start = time.perf_counter()
    for _ in predict_folder(segmenter, image_root, rels, batch_size=batch_size, num_workers=num_workers):
        pass
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cub_root", default="data/synthetic/CUB_200_2011")
    p.add_argument("--config", default="mmsegmentation/configs/segformer_mit-b0_tiny_synthetic-128x128.py")
    p.add_argument("--checkpoint", help="trained checkpoint (default: random initialisation, same speed)")
    p.add_argument("--num_images", type=int, default=400, help="images of images/ to time (first N of images.txt)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--num_workers", type=int, default=2, help="decoding threads of the grouped modes")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On shared cores 1 avoids threads spinning on each other")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/bench/mask_generation.json")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    index = CUBIndex.load(args.cub_root)
    image_root = Path(args.cub_root) / "images"
    rels = list(index.paths[: args.num_images])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_init_checkpoint(args.config, tmp)
        model = load_segmenter(args.config, checkpoint, device)
    segmenter = Segmenter(model)
    # Warm-up (allocator, kernels, first-call costs) on a few images, not timed.
    time_grouped(segmenter, image_root, rels[:8], 8, 0)
    time_inference_model(model, [image_root / r for r in rels[:4]])

    results = {}
    seconds = time_inference_model(model, [image_root / r for r in rels])
    results["inference_model"] = dict(seconds=round(seconds, 3), images_per_s=round(len(rels) / seconds, 2))
    print(f"inference_model (1 image/call): {len(rels) / seconds:8.1f} images/s", flush=True)
    for bs in args.batch_sizes:
        seconds = time_grouped(segmenter, image_root, rels, bs, args.num_workers)
        results[f"grouped_bs{bs}"] = dict(seconds=round(seconds, 3), images_per_s=round(len(rels) / seconds, 2))
        print(f"grouped, lists of <= {bs:3d}, {args.num_workers} decoding threads: {len(rels) / seconds:8.1f} images/s",
              flush=True)
    base = results["inference_model"]["images_per_s"]
    for r in results.values():
        r["speedup_vs_inference_model"] = round(r["images_per_s"] / base, 2)

    report = dict(
        config=args.config, checkpoint=args.checkpoint or "random init", cub_root=str(args.cub_root),
        num_images=len(rels), num_workers=args.num_workers, device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None, results=results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"Written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
