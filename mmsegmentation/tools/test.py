#!/usr/bin/env python
"""Evaluate a bird segmenter (mIoU, mDice, bird IoU/Dice) on CUB test and on the Waterbirds test images.

Example:
  python mmsegmentation/tools/test.py CONFIG WORK_DIR/iter_160000.pth --data-root data/cub_binary_segmentation
Writes WORK_DIR/test_metrics.json: {split: metrics} for every --splits entry.
"""

import argparse
import json
import os.path as osp
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # noise from mmengine's imports

from mmengine.dist import is_main_process  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from cub_seg.checkpoint import trusted_local_checkpoints  # noqa: E402
from cub_seg.runner import TEST_SPLITS, ConfigError, add_common_args, check_data, config_for_split, load_config  # noqa: E402,E501


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("checkpoint", help="checkpoint written by train.py (iter_N.pth)")
    p.add_argument("--splits", nargs="+", choices=list(TEST_SPLITS), default=list(TEST_SPLITS),
                   help="test: CUB test images; waterbird_test: the same birds on Waterbirds backgrounds")
    p.add_argument("--out", help="metrics JSON (default: WORK_DIR/test_metrics.json)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not osp.isfile(args.checkpoint):
            raise ConfigError(f"Checkpoint {args.checkpoint} does not exist; train.py writes WORK_DIR/iter_N.pth.")
        cfg = load_config(args, loaders=())
        cfg.load_from = args.checkpoint
        split_cfgs = {split: config_for_split(cfg, split) for split in args.splits}
        for split_cfg in split_cfgs.values():
            check_data(split_cfg, ("test_dataloader",))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {}
    stamp = time.strftime("%Y%m%d_%H%M%S")
    for split, split_cfg in split_cfgs.items():
        # One Runner per split; distinct names keep their loggers and visualizers apart.
        split_cfg.experiment_name = f"test_{split}_{stamp}"
        with trusted_local_checkpoints():
            results[split] = {k: float(v) for k, v in Runner.from_cfg(split_cfg).test().items()}
    if is_main_process():
        out = args.out or osp.join(cfg.work_dir, "test_metrics.json")
        with open(out, "w") as f:
            json.dump(dict(config=args.config, checkpoint=args.checkpoint, metrics=results), f, indent=2)
        for split, metrics in results.items():
            summary = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("mIoU", "mDice", "IoU.bird", "Dice.bird")
                                if k in metrics)
            print(f"{split}: {summary}")
        print(f"Metrics written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
