#!/usr/bin/env python
"""Wall time of frozen-backbone heads trained in one pass (``--probe_heads``) against one run per head.

Both sides are complete training runs through the trainer (data loading, augmentation, epochs, evaluation on CUB
test and Waterbirds), on the synthetic benchmark, in this process, one after the other. Each head of the one-pass
run trains exactly as its separate run (tests/test_probes.py), so only the time differs. Prints a table and writes
JSON (``--out``).

CPU default:  python scripts/bench/probe_heads.py
Measured on 2 CPU cores (2026-12-02, defaults: 6 heads, ViT-S/14 at 56 px, 2 epochs, 120 images): separate runs
17.1 s in total (2.7-3.1 s each), one pass 3.2 s, a 5.35x speed-up.
Options:      --heads cls,mean,cls_mean,late:mean,late:cls_mean,late:masked_mean --model_arch ... --epochs 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bgmask import cli
from bgmask.data.synthetic import SyntheticConfig, generate
from bgmask.models.heads import LATE, parse_heads

DEFAULT_HEADS = "cls,mean,cls_mean,late:mean,late:cls_mean,late:masked_mean"


def single_head_flags(head: str) -> tuple[list[str], list[str]]:
    """(strategies, flags) of the separate run of one probe head."""
    base = head.removeprefix(LATE)
    flags = {"cls": ["--class_token_only"], "mean": ["--patch_tokens_only"], "cls_mean": [], "pool": [],
             "masked_mean": ["--patch_tokens_only", "--masked_mean"]}[base]
    if head.startswith(LATE):
        return ["late"], [*flags, "--mask_source", "gt"]
    return ["none"], flags


def timed_run(strategies: list[str], argv: list[str], quiet: bool) -> float:
    start = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        code = cli.main(strategies, argv)
    if code != 0:
        raise SystemExit(f"run failed ({code}): {' '.join(argv)}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default=DEFAULT_HEADS, help="probe heads (>= 5 for the goal of >= 4x less wall time)")
    p.add_argument("--model_arch", default="vit_small_patch14_dinov2")
    p.add_argument("--image_size", type=int, default=56)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--images_per_class", type=int, default=12)
    p.add_argument("--out", default=None, help="JSON file for the measurements")
    args = p.parse_args(argv)
    heads = parse_heads(args.heads)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        config = SyntheticConfig(num_classes=args.num_classes, images_per_class=args.images_per_class, image_size=64)
        root = generate(Path(tmp) / "data", config, progress=False).cub_root
        common = ["--data_path", str(root), "--model_arch", args.model_arch, "--image_size", str(args.image_size),
                  "--freeze_backbone", "--epochs", str(args.epochs), "--batch_size", "16", "--num_workers", "0",
                  "--diagnostics", "none", "--seed", "0", "--augmentations_to_use", "cub_original"]
        one_pass = timed_run(["late"], [*common, "--mask_source", "gt", "--probe_heads", ",".join(heads),
                                        "--snapshot_dir", f"{tmp}/probes"], quiet=True)
        separate = {}
        for head in heads:
            strategies, flags = single_head_flags(head)
            separate[head] = timed_run(strategies, [*common, *flags, "--snapshot_dir",
                                                    f"{tmp}/{head.replace(':', '_')}"], quiet=True)
    total = sum(separate.values())
    print(f"{len(heads)} heads, {args.model_arch} @ {args.image_size}px, {args.epochs} epochs, "
          f"{args.num_classes * args.images_per_class} images, {os.cpu_count()} CPU cores")
    for head, seconds in separate.items():
        print(f"  separate run {head:<18} {seconds:7.1f} s")
    print(f"  separate runs, total      {total:7.1f} s")
    print(f"  one pass (--probe_heads)  {one_pass:7.1f} s")
    print(f"  speed-up                  {total / one_pass:7.2f}x (goal >= 4x)")
    if args.out:
        Path(args.out).write_text(json.dumps({"heads": heads, "model_arch": args.model_arch,
                                              "image_size": args.image_size, "epochs": args.epochs,
                                              "separate_s": separate, "separate_total_s": total,
                                              "one_pass_s": one_pass, "speedup": total / one_pass}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
