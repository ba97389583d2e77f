#!/usr/bin/env python
"""Pretrain the demo's backbones on the synthetic pretraining corpus (species unlike the benchmark's, backgrounds
independent of species) and write timm weights folders, cached per machine (see bgmask/pretrain.py).

Example:   python scripts/pretrain_synthetic.py                 # both demo backbones; prints their weight files
           python scripts/pretrain_synthetic.py --print_path convnext_atto   # only that file's path (for scripts)
Then:      python -m bgmask ... --model_arch convnext_atto --image_size 64 --pretrained_path FILE
Cache:     $BGMASK_CACHE (default ~/.cache/bgmask)/pretrained/ and /pretraining_corpus/
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bgmask.pretrain import DEMO_RECIPES, Corpus, pretrained_weights


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=list(DEMO_RECIPES), choices=list(DEMO_RECIPES),
                   help="backbones to pretrain (default: both demo backbones)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--print_path", metavar="ARCH", choices=list(DEMO_RECIPES), default=None,
                   help="pretrain (or find in the cache) this backbone and print only its weights file")
    p.add_argument("--progress", action="store_true", help="show the trainer's progress bars")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    archs = [args.print_path] if args.print_path else args.arch
    log = (lambda message: print(message, file=sys.stderr)) if args.print_path else print
    for arch in archs:
        recipe = dataclasses.replace(DEMO_RECIPES[arch], seed=args.seed,
                                     **({"epochs": args.epochs} if args.epochs else {}))
        path = pretrained_weights(recipe, Corpus(), progress=args.progress, log=log)
        if args.print_path:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
