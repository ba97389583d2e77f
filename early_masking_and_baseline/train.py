#!/usr/bin/env python
"""Train a classifier on original images (baseline) or on pre-masked images (early masking).

Baseline:       python early_masking_and_baseline/train.py --data_path DATA/CUB_200_2011 --snapshot_dir runs/base
Early masking:  add --masking early (reads images_masked/ and the masked Waterbirds folder written by
                mmsegmentation/tools/generate_masks.py). Multi-GPU: torchrun --nproc_per_node G ... (same flags).
"""

from __future__ import annotations

import argparse
import sys

from bgmask.cli import classifier_parent, parse_with_config
from bgmask.data.cub import WATERBIRDS_SUB_PATH
from bgmask.masking import MASK_FOLDERS
from bgmask.trainer import Strategy, image_folder_data, main_guard, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[classifier_parent()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masking", choices=["none", "early"], default="none",
                   help="early: train and test on masked images (the three image folders default to the masked "
                        "ones; explicit --image_sub_path_* / --ood_image_sub_path flags still win)")
    return p


def resolve_folders(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """With --masking early, folders left at their baseline defaults switch to the masked folders."""
    if args.masking != "early":
        return
    masked = {"images": MASK_FOLDERS["images"][1], WATERBIRDS_SUB_PATH: MASK_FOLDERS[WATERBIRDS_SUB_PATH][1]}
    for name in ("image_sub_path_train", "image_sub_path_test", "ood_image_sub_path"):
        value = getattr(args, name)
        if value == parser.get_default(name) and value in masked:
            setattr(args, name, masked[value])


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    resolve_folders(args, parser)

    def build_data(args, image_size):
        return image_folder_data(args, image_size, args.image_sub_path_train, args.image_sub_path_test,
                                 args.ood_image_sub_path)

    strategy = Strategy(masking=args.masking, build_data=build_data,
                        extra_results={"image_sub_path_train": args.image_sub_path_train,
                                       "image_sub_path_test": args.image_sub_path_test,
                                       "ood_image_sub_path": args.ood_image_sub_path})
    return main_guard(lambda: run(args, strategy))


if __name__ == "__main__":
    sys.exit(main())
