#!/usr/bin/env python
"""Pretrain backbones on the synthetic pretraining corpus and write timm weights folders, cached per machine.

The corpus holds species unlike the benchmark's on backgrounds independent of species
(bgmask/pretraining/pretrain.py). Each backbone is trained from random initialisation as a plain classifier by the
project's trainer (baseline, no masking), and its weights are written as model.safetensors + config.json, the layout
of timm's published weights. A second call with the same settings finds them in the cache and returns at once.

Examples:
  python scripts/pretrain_synthetic.py                      # the demo's two backbones; prints their weight files
  python scripts/pretrain_synthetic.py --print_path convnext_atto     # only that file's path (for shell scripts)
  python scripts/pretrain_synthetic.py --arch convnext_femto --epochs 6 --seed 1
Then:
  python -m bgmask --masking none ... --model_arch convnext_atto --image_size 64 --pretrained_path FILE
Cache:
  ${BGMASK_CACHE:-~/.cache/bgmask}/pretrained/<arch>-<size>px-<key>/ and .../pretraining_corpus/
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

DEMO_ARCHS = ("convnext_atto", "vit_small_patch14_dinov2")


def build_parser() -> argparse.ArgumentParser:
    from bgmask.infra.argparsing import parser_from_doc
    from bgmask.pretraining.pretrain import AUGMENTATIONS, DEMO_RECIPES, Corpus

    corpus = Corpus()

    def demo(field: str) -> str:
        return "default: " + ", ".join(f"{getattr(r, field)} for {arch}" for arch, r in DEMO_RECIPES.items())

    p = parser_from_doc(__doc__)
    p.add_argument("--arch", nargs="+", default=None, metavar="ARCH",
                   help=f"timm models to pretrain (default: {' '.join(DEMO_ARCHS)})")
    p.add_argument("--print_path", metavar="ARCH", default=None,
                   help="pretrain ARCH (or find it in the cache) and print only its weights file on stdout; "
                        "messages go to stderr")
    recipe = p.add_argument_group("training recipe (default: the demo recipe of the model, or of its family)")
    recipe.add_argument("--image_size", type=int, default=None,
                        help="training input size, also the size to fine-tune at (default: 64 for CNNs, 56 for ViTs)")
    recipe.add_argument("--epochs", type=int, default=None, help=demo("epochs"))
    recipe.add_argument("--lr", type=float, default=None, help=demo("lr"))
    recipe.add_argument("--batch_size", type=int, default=None, help=demo("batch_size"))
    recipe.add_argument("--weight_decay", type=float, default=None, help=demo("weight_decay"))
    recipe.add_argument("--warmup_epochs", type=int, default=None, help=demo("warmup_epochs"))
    recipe.add_argument("--augmentations", choices=AUGMENTATIONS, default=None,
                        help="the trainer's --augmentations_to_use (default: timm)")
    recipe.add_argument("--aa", default=None,
                        help="with timm augmentations: RandAugment policy (default: '', none)")
    recipe.add_argument("--reprob", type=float, default=None,
                        help="with timm augmentations: random erasing probability (default: 0)")
    recipe.add_argument("--seed", type=int, default=0, help="training seed")
    data = p.add_argument_group("pretraining corpus")
    data.add_argument("--num_classes", type=int, default=corpus.num_classes, help="species in the corpus")
    data.add_argument("--images_per_class", type=int, default=corpus.images_per_class, help="images per species")
    data.add_argument("--corpus_image_size", type=int, default=corpus.image_size, help="generated image height")
    data.add_argument("--train_fraction", type=float, default=corpus.train_fraction,
                      help="fraction of each species' images in the train split (the rest: the corpus test split)")
    data.add_argument("--corpus_seed", type=int, default=corpus.seed, help="the corpus generator's seed")
    run = p.add_argument_group("run")
    run.add_argument("--cache_dir", default=None,
                     help="cache folder (default: $BGMASK_CACHE, else ~/.cache/bgmask)")
    run.add_argument("--rebuild", action="store_true", help="train again even when the cache holds the weights")
    run.add_argument("--progress", action="store_true", help="show the generator's and the trainer's progress bars")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.cache_dir:
        os.environ["BGMASK_CACHE"] = args.cache_dir
    from bgmask.errors import PretrainError
    from bgmask.pretraining.pretrain import Corpus, default_recipe, pretrained_weights

    if args.print_path and args.arch:
        p.error("give --print_path ARCH or --arch ARCH ..., not both")
    archs = [args.print_path] if args.print_path else args.arch or list(DEMO_ARCHS)
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "weight_decay", "warmup_epochs",
                                               "augmentations", "aa", "reprob") if getattr(args, k) is not None}
    corpus = Corpus(num_classes=args.num_classes, images_per_class=args.images_per_class,
                    image_size=args.corpus_image_size, train_fraction=args.train_fraction, seed=args.corpus_seed)
    recipes = []
    try:  # every setting is checked before anything is built
        corpus.check()
        for arch in archs:
            recipe = dataclasses.replace(default_recipe(arch, args.image_size), seed=args.seed, **overrides)
            recipe.check()
            recipes.append(recipe)
    except PretrainError as e:
        p.error(str(e))
    quiet = args.print_path is not None
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if quiet else \
        (lambda message: print(message, flush=True))
    paths = []
    for recipe in recipes:
        try:
            paths.append(pretrained_weights(recipe, corpus, progress=args.progress, log=log, rebuild=args.rebuild))
        except PretrainError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    for recipe, path in zip(recipes, paths):
        print(path if quiet else f"{recipe.arch} @ {recipe.image_size}px: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
