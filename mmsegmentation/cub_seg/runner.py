"""Shared set-up of tools/train.py and tools/test.py: config loading, overrides and early checks, then the Runner."""

from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
from pathlib import Path

import torch
from mmengine.config import Config, DictAction

LAUNCHERS = ("none", "pytorch", "slurm")
DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


class ConfigError(ValueError):
    """A config, path or flag combination that cannot work; the message says how to fix it."""


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options train.py and test.py share (MMSeg's names, so MMSeg commands carry over)."""
    parser.add_argument("config", help="config file from mmsegmentation/configs/")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    parser.add_argument("--data-root", help="prepared dataset root (overrides the config's data_root)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. train_cfg.max_iters=1000 model.backbone.init_cfg=None")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none",
                        help="none: one process; pytorch: under torchrun; slurm: under srun (both need CUDA GPUs)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log to Weights & Biases (offline unless credentials exist or WANDB_MODE is set)")
    parser.add_argument("--wandb-project", default="bgmask-segmentation")
    parser.add_argument("--wandb-entity", default=None, help="wandb team/user (default: your wandb default)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point every dataloader's dataset at ``data_root``."""
    for name in DATALOADERS:
        if name in cfg and cfg[name] is not None:
            cfg[name].dataset.data_root = data_root
    cfg.data_root = data_root


def disable_pretrained(cfg: Config) -> None:
    """Random initialisation: drop the backbone's pretrained checkpoint (nothing is downloaded)."""
    cfg.model.pretrained = None
    if "backbone" in cfg.model:
        cfg.model.backbone.init_cfg = None


def check_data(cfg: Config, loaders: tuple[str, ...]) -> None:
    """Fail before the Runner starts when a dataloader's image or map folder is missing."""
    for name in loaders:
        loader = cfg.get(name)
        if loader is None:
            continue
        ds = loader.dataset
        for key in ("img_path", "seg_map_path"):
            folder = ds.get("data_prefix", {}).get(key)
            if folder is None:
                continue
            path = osp.join(ds.get("data_root", ""), folder)
            if not osp.isdir(path):
                raise ConfigError(f"{name}: folder {path} does not exist. Prepare the dataset with `python "
                                  f"mmsegmentation/tools/prepare_cub_binary_seg.py --cub_root CUB_200_2011 --out "
                                  f"DATA_ROOT` and pass --data-root DATA_ROOT (the config says "
                                  f"{ds.get('data_root')!r}).")


def add_wandb(cfg: Config, project: str, entity: str | None, name: str) -> None:
    """Add mmengine's wandb backend, offline unless credentials exist, so a run never blocks on the network."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("--wandb needs the wandb package: pip install wandb (or drop --wandb).") from None
    from bgmask.infra.logging import wandb_mode

    init_kwargs = dict(project=project, name=name, mode=wandb_mode())
    if entity:
        init_kwargs["entity"] = entity
    backends = list(cfg.visualizer.get("vis_backends") or [dict(type="LocalVisBackend")])
    backends.append(dict(type="WandbVisBackend", init_kwargs=init_kwargs))
    cfg.visualizer.vis_backends = backends


def load_config(args: argparse.Namespace, loaders: tuple[str, ...]) -> Config:
    """Read the config and apply the command line, then check what can be checked before any work starts.

    Args:
        args: parsed options of :func:`add_common_args` (plus the tool's own).
        loaders: the dataloaders this tool will use (their folders must exist).
    """
    if not osp.isfile(args.config):
        raise ConfigError(f"Config {args.config} does not exist. The shipped configs are in mmsegmentation/configs/.")
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    cfg.launcher = args.launcher
    if args.launcher != "none":
        if not torch.cuda.is_available():
            raise ConfigError(f"--launcher {args.launcher} needs CUDA GPUs (mmengine binds one GPU per process). On a "
                              f"CPU machine run a single process with --launcher none.")
        if args.launcher == "pytorch" and "LOCAL_RANK" not in os.environ:
            raise ConfigError("--launcher pytorch expects to be started by torchrun, e.g. `torchrun "
                              "--nproc_per_node 8 mmsegmentation/tools/train.py CONFIG --launcher pytorch`.")
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", Path(args.config).stem)
    if args.wandb:
        add_wandb(cfg, args.wandb_project, args.wandb_entity, Path(args.config).stem)
    check_data(cfg, loaders)
    return cfg


# test.py's splits: image folder and the annotation folder it is scored against.
TEST_SPLITS = {
    "test": ("images/test", "annotations/test"),  # CUB test images (in distribution)
    "waterbird_test": ("images/waterbird_test", "annotations/test"),  # same birds, Waterbirds backgrounds (OOD)
}


def config_for_split(cfg: Config, split: str) -> Config:
    """A copy of ``cfg`` whose test dataloader reads ``split`` (see :data:`TEST_SPLITS`)."""
    img_path, seg_map_path = TEST_SPLITS[split]
    cfg = copy.deepcopy(cfg)  # Config.copy() is shallow: the dataloader dicts would be shared
    cfg.test_dataloader.dataset.data_prefix = dict(img_path=img_path, seg_map_path=seg_map_path)
    return cfg
