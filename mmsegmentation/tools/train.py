#!/usr/bin/env python
r"""Train a bird segmenter: a config and the command line go to mmengine's Runner.

Examples:
  python mmsegmentation/tools/train.py mmsegmentation/configs/segformer_mit-b0_8xb2-160k_cub-512x512.py \
      --data-root data/cub_binary_segmentation
  torchrun --nproc_per_node 8 mmsegmentation/tools/train.py CONFIG --launcher pytorch   # 8 GPUs x 2 images
  python mmsegmentation/tools/train.py CONFIG --resume          # continue from WORK_DIR/last_checkpoint
"""

import argparse
import os.path as osp
import sys
import warnings

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # noise from mmengine's imports

import torch  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from cub_seg.checkpoint import trusted_local_checkpoints  # noqa: E402
from cub_seg.runner import ConfigError, add_common_args, disable_pretrained, load_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="resume training: from WORK_DIR's last checkpoint (no value) or from CHECKPOINT")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--auto-scale-lr", action="store_true",
                   help="scale the learning rate by (total batch / the config's auto_scale_lr.base_batch_size)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="random backbone initialisation (same as --cfg-options model.backbone.init_cfg=None)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args, loaders=("train_dataloader", "val_dataloader"))
        if args.amp:
            if not torch.cuda.is_available():
                raise ConfigError("--amp needs a CUDA GPU; drop it on CPU.")
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"
        if args.auto_scale_lr:
            if "auto_scale_lr" not in cfg:
                raise ConfigError(f"{args.config} has no auto_scale_lr.base_batch_size; drop --auto-scale-lr.")
            cfg.auto_scale_lr.enable = True
        if args.resume:
            if args.resume != "auto" and not osp.isfile(args.resume):
                raise ConfigError(f"--resume {args.resume}: no such checkpoint file.")
            cfg.resume = True
            cfg.load_from = None if args.resume == "auto" else args.resume
        if args.no_pretrained:
            disable_pretrained(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runner = Runner.from_cfg(cfg)
    with trusted_local_checkpoints():  # resume / load_from read checkpoints this repository wrote
        runner.train()
    last = osp.join(cfg.work_dir, "last_checkpoint")
    if osp.isfile(last):
        with open(last) as f:
            print(f"Last checkpoint: {f.read().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
