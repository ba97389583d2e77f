#!/usr/bin/env python
"""Mask gallery: image, ground-truth mask, predicted mask, early-masked image and Waterbirds image per row.

Example: python scripts/visualize_masks.py --cub_root data/synthetic/CUB_200_2011 --out runs/demo/mask_gallery.png
"""

import sys
from pathlib import Path

import numpy as np

from bgmask.data.cub import WATERBIRDS_SUB_PATH, CUBIndex, load_rgb, mask_path_for
from bgmask.data.masks import MASK_FOLDERS
from bgmask.errors import DatasetError
from bgmask.infra.argparsing import parser_from_doc
from bgmask.reporting.figures import data_note, strategy_colour
from bgmask.reporting.runs import is_synthetic_cub


def main(argv=None) -> int:
    p = parser_from_doc(__doc__)
    p.add_argument("--cub_root", required=True, help="CUB_200_2011 folder with masks/ (generate_masks.py)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num_images", type=int, default=6, help="test images shown, one per row")
    p.add_argument("--seed", type=int, default=0, help="which test images are drawn")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(args.cub_root)
    try:
        index = CUBIndex.load(root)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    test = np.flatnonzero(~index.is_train)
    picks = np.random.default_rng(args.seed).choice(test, size=min(args.num_images, len(test)), replace=False)
    mask_dir, masked_dir = MASK_FOLDERS["images"]
    columns = [("image", "images", False), ("GT mask", "segmentations", True), ("predicted mask", mask_dir, True),
               ("early-masked", masked_dir, False), ("Waterbirds", WATERBIRDS_SUB_PATH, False)]
    columns = [c for c in columns if (root / c[1]).is_dir()]
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(2.2 * len(columns), 2.0 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        rel = index.paths[i]
        for col, (title, folder, is_mask) in enumerate(columns):
            ax = axes[row][col]
            path = root / folder / (mask_path_for(rel) if is_mask else rel)
            if path.is_file():
                ax.imshow(load_rgb(path), cmap=None)
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:  # early masking's input in the strategy's colour of every figure
                ax.set_title(title, fontsize=9, color=strategy_colour("early") if folder == masked_dir else "black")
    fig.suptitle("Test images and their masks" + data_note([is_synthetic_cub(root)]), fontsize=9)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
