#!/usr/bin/env python
"""Train a late-masked classifier: full images in, background features zeroed before pooling.

Precomputed masks (fast):  python late_masking/train.py --data_path DATA/CUB_200_2011 --snapshot_dir runs/late \
                               --mask_source precomputed        # masks/ from mmsegmentation/tools/generate_masks.py
Ground-truth masks:        ... --mask_source gt                 # CUB segmentations/ > 0 (oracle upper bound)
Online segmenter (upstream): ... --mask_source segmenter --seg_model_config_path CFG --seg_model_checkpoint_path PTH
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bgmask.cli import UsageError, add_flag, classifier_parent, parse_with_config
from bgmask.data.cub import WATERBIRDS_SUB_PATH
from bgmask.masking import MASK_FOLDERS
from bgmask.trainer import Strategy, image_folder_data, main_guard, run
from late_masking.models import LateMaskedClassifier

MASK_SOURCES = ("precomputed", "gt", "segmenter")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[classifier_parent()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("late masking")
    g.add_argument("--mask_source", choices=MASK_SOURCES, default="precomputed")
    g.add_argument("--mask_sub_path", default=MASK_FOLDERS["images"][0],
                   help="precomputed masks for the CUB images (same relative paths, .png)")
    g.add_argument("--ood_mask_sub_path", default=MASK_FOLDERS[WATERBIRDS_SUB_PATH][0],
                   help="precomputed masks for the Waterbirds images")
    add_flag(g, "--fm_second_last_block", "mask after the second-last stage/block")
    add_flag(g, "--feature_masking_last_layer", "upstream's ConvNeXt switch to mask after the last stage; that is "
                                                "the default here (upstream's ConvNeXt default was the second-last)")
    add_flag(g, "--masked_mean", "ViT: average foreground patch tokens only (default: all, zeros included)")
    g.add_argument("--seg_model_config_path", default=None, help="MMSeg config (--mask_source segmenter)")
    g.add_argument("--seg_model_checkpoint_path", default=None, help="MMSeg checkpoint (--mask_source segmenter)")
    return p


def check_late_args(args) -> None:
    if args.mask_source == "segmenter":
        for flag in ("seg_model_config_path", "seg_model_checkpoint_path"):
            value = getattr(args, flag)
            if not value or not Path(value).is_file():
                raise UsageError(f"--mask_source segmenter needs --{flag} pointing at an existing file "
                                 f"(got {value!r}).")
    if args.feature_masking_last_layer and args.fm_second_last_block:
        raise UsageError("--feature_masking_last_layer (mask after the last stage) contradicts --fm_second_last_block; "
                         "pick one.")
    if args.class_token_only and not args.fm_second_last_block:
        raise UsageError("--class_token_only with masking after the last block cannot differ from the baseline: the "
                         "head reads the CLS token, which zeroing patch tokens after the last block never reaches. "
                         "Add --fm_second_last_block (the last block then mixes the masked tokens into CLS), or use "
                         "the default concat(CLS, mean) or --patch_tokens_only head.")


def mask_folders(args) -> tuple[str, str, str]:
    """(train, test, Waterbirds) mask folders: predicted masks, or CUB's segmentations for ``gt`` (they stay valid
    on Waterbirds, which keeps every bird at its CUB position)."""
    if args.mask_source == "gt":
        return "segmentations", "segmentations", "segmentations"
    return args.mask_sub_path, args.mask_sub_path, args.ood_mask_sub_path


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)

    def build_model(args, classifier):
        provider = None
        if args.mask_source == "segmenter":
            from cub_seg.inference import SegmenterMaskProvider

            provider = SegmenterMaskProvider(args.seg_model_config_path, args.seg_model_checkpoint_path)
        return LateMaskedClassifier(classifier, second_last=args.fm_second_last_block,
                                    masked_mean=args.masked_mean, mask_provider=provider)

    def build_data(args, image_size):
        # The online segmenter predicts masks from the batch itself; the other sources load them with the images.
        masks = None if args.mask_source == "segmenter" else mask_folders(args)
        return image_folder_data(args, image_size, args.image_sub_path_train, args.image_sub_path_test,
                                 args.ood_image_sub_path, mask_subs=masks)

    strategy = Strategy(masking="late", build_data=build_data, build_model=build_model,
                        extra_results={"mask_source": args.mask_source,
                                       "variant": "second_last" if args.fm_second_last_block else "last",
                                       "masked_mean": args.masked_mean})
    return main_guard(lambda: (check_late_args(args), run(args, strategy)))


if __name__ == "__main__":
    sys.exit(main())
