#!/usr/bin/env python
"""Generate the synthetic CUB-200-2011 + Waterbirds benchmark (same on-disk format as the real datasets).

Example: python scripts/make_synthetic_cub.py --out data/synthetic --seed 0
"""

import sys

from bgmask.data.synthetic import BACKGROUNDS, SyntheticConfig, generate
from bgmask.infra.argparsing import parser_from_doc


def main(argv=None) -> int:
    defaults = SyntheticConfig()
    p = parser_from_doc(__doc__)
    p.add_argument("--out", required=True, help="parent folder; CUB_200_2011/ is created inside it")
    p.add_argument("--num_classes", type=int, default=defaults.num_classes, help="species (genera of four)")
    p.add_argument("--images_per_class", type=int, default=defaults.images_per_class,
                   help="images per species, train and test together")
    p.add_argument("--image_size", type=int, default=defaults.image_size, help="image height in pixels")
    p.add_argument("--habitats", type=int, default=defaults.habitats, help="number of background habitats (2..8)")
    p.add_argument("--bias", type=float, default=defaults.bias,
                   help="probability that a CUB image shows its species' home habitat")
    p.add_argument("--seed", type=int, default=defaults.seed, help="the generator's seed: same seed, same files")
    p.add_argument("--backgrounds", choices=BACKGROUNDS, default=defaults.backgrounds,
                   help="home: the species' home habitat with probability --bias (the benchmark); balanced: every "
                        "species on every habitat equally often, independent of species (--bias unused)")
    p.add_argument("--train_fraction", type=float, default=defaults.train_fraction,
                   help="fraction of each class's images in the train split")
    p.add_argument("--waterbirds_extra_val", type=int, default=24,
                   help="extra Waterbirds validation images per class (split 1, every habitat alike; Waterbirds "
                        "folder only): 24 gives every (y, habitat) validation group of the default benchmark >= 30 "
                        "images, so the group protocol's model selection can rank epochs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CUB_200_2011/ in --out")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    config = SyntheticConfig(num_classes=args.num_classes, images_per_class=args.images_per_class,
                             image_size=args.image_size, habitats=args.habitats, bias=args.bias, seed=args.seed,
                             backgrounds=args.backgrounds, train_fraction=args.train_fraction,
                             waterbirds_extra_val=args.waterbirds_extra_val)
    try:
        summary = generate(args.out, config, progress=not args.no_progress, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
