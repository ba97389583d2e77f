#!/usr/bin/env python
r"""Predict a bird mask for every image of a CUB root and its Waterbirds folder; write masks and masked images.

Writes, at the images' relative paths under CUB_ROOT:
  masks/ (PNG, 0/255)  images_masked/ (background = 0)
  waterbird_complete95_forest2water2_masks/  waterbird_complete95_forest2water2_masked/ (+ metadata.csv)
so the classifiers switch to early masking with --image_sub_path_train/test alone.

Examples:
  python mmsegmentation/tools/generate_masks.py --cub_root data/CUB_200_2011 \
      --config mmsegmentation/configs/mask2former_swin-t_8xb2-160k_cub-512x512.py --checkpoint iter_160000.pth
  torchrun --nproc_per_node 4 mmsegmentation/tools/generate_masks.py ...     # 4 shards, one GPU each
  python mmsegmentation/tools/generate_masks.py --cub_root data/CUB_200_2011 --gt   # oracle: CUB's masks > 0
Re-running resumes (finished images are skipped); --overwrite regenerates everything.
"""

import argparse
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # noise from mmengine's imports

from bgmask.data.cub import CUBIndex  # noqa: E402
from bgmask.errors import DatasetError  # noqa: E402
from bgmask.infra.argparsing import parser_from_doc  # noqa: E402
from bgmask.infra.distributed import resolve_device  # noqa: E402
from cub_seg.generate import (  # noqa: E402
    file_sha256,
    generate_gt_masks,
    generate_predicted_masks,
    shard_from_env,
)
from cub_seg.inference import Segmenter  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = parser_from_doc(__doc__)
    p.add_argument("--cub_root", required=True, help="the CUB_200_2011 folder (holds images.txt)")
    p.add_argument("--config", help="segmenter config (the one the checkpoint was trained with)")
    p.add_argument("--checkpoint", help="segmenter checkpoint written by mmsegmentation/tools/train.py")
    p.add_argument("--gt", action="store_true", help="oracle masks: CUB's segmentations thresholded at > 0")
    p.add_argument("--batch_size", type=int, default=16,
                   help="images per forward pass (images of one test-resized size, mmseg.apis.inference_model)")
    p.add_argument("--num_workers", type=int, default=2,
                   help="image-decoding threads (0: decode between forward passes)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="regenerate finished images too")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.gt == bool(args.config or args.checkpoint) or (not args.gt and not (args.config and args.checkpoint)):
        p.error("give either --config and --checkpoint (a trained segmenter) or --gt (CUB's own masks)")
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    rank, world_size = shard_from_env()
    start = time.perf_counter()
    try:
        CUBIndex.load(args.cub_root)  # a wrong root fails here, before a model is loaded
        if args.gt:
            if rank != 0:
                print(f"rank {rank}: --gt runs in one process; nothing to do here.")
                return 0
            stats = generate_gt_masks(args.cub_root, overwrite=args.overwrite, progress=not args.no_progress)
        else:
            for path, what in ((args.config, "config"), (args.checkpoint, "checkpoint")):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"--{what} {path} does not exist.")
            device = resolve_device(args.device)
            segmenter = Segmenter.from_files(args.config, args.checkpoint, device)
            source = {"source": "segmenter", "checkpoint_sha256": file_sha256(args.checkpoint)}
            stats = generate_predicted_masks(segmenter, args.cub_root, source, batch_size=args.batch_size,
                                             num_workers=args.num_workers, overwrite=args.overwrite,
                                             progress=not args.no_progress, rank=rank, world_size=world_size)
    except (DatasetError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    written = sum(s["written"] for s in stats.values())
    shard = f" (shard {rank + 1}/{world_size})" if world_size > 1 else ""
    for folder, s in stats.items():
        print(f"{folder}{shard}: {s['written']} written, {s['skipped']} already done")
    if written:
        print(f"{written} images in {elapsed:.1f} s ({written / elapsed:.1f} images/s including start-up)")
    else:
        print("Every image already had its mask; nothing to do (--overwrite regenerates them).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
