#!/usr/bin/env python
r"""Turn CUB-200-2011 soft segmentations (> 0) into the binary MMSeg dataset used to train the bird segmenter.

Output layout (the configs' data_root):
  OUT/images/{train,test,waterbird_test}/<class>/<name>.jpg    links (or copies) of the CUB / Waterbirds images
  OUT/annotations/{train,test}/<class>/<name>.png              0 background, 1 bird (waterbird_test uses test)
  OUT/prepare_manifest.json                                    counts, sources and options

Example: python mmsegmentation/tools/prepare_cub_binary_seg.py --cub_root data/CUB_200_2011 \
             --out data/cub_binary_segmentation
"""

import argparse
import os
import sys

from bgmask.errors import DatasetError
from bgmask.infra.argparsing import parser_from_doc
from cub_seg.prepare import LINK_MODES, prepare_cub_binary_seg


def build_parser() -> argparse.ArgumentParser:
    p = parser_from_doc(__doc__)
    p.add_argument("--cub_root", required=True, help="the CUB_200_2011 folder (holds images.txt)")
    p.add_argument("--out", required=True, help="output dataset root (the configs' data_root)")
    p.add_argument("--waterbirds_root", default=None,
                   help="Waterbirds image folder (default: CUB_ROOT/waterbird_complete95_forest2water2)")
    p.add_argument("--skip_waterbirds", action="store_true", help="build without images/waterbird_test")
    p.add_argument("--link", choices=LINK_MODES, default="symlink",
                   help="how images are placed in OUT (symlinks are absolute: moving CUB breaks them)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes writing the maps (0: none)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = prepare_cub_binary_seg(args.cub_root, args.out, waterbirds_root=args.waterbirds_root,
                                          link=args.link, overwrite=args.overwrite,
                                          skip_waterbirds=args.skip_waterbirds, num_workers=args.num_workers,
                                          progress=not args.no_progress)
    except (DatasetError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split}: {n}" for split, n in manifest["counts"].items())
    print(f"Prepared {args.out} ({counts} images; every image has its map; bird pixels "
          f"{100 * manifest['bird_pixel_fraction']:.1f}%).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
