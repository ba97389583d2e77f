"""The shared argparse parent (upstream flag names kept) with ``--config YAML`` defaults and up-front checks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from bgmask.backbones import arch_layout
from bgmask.data.cub import WATERBIRDS_SUB_PATH
from bgmask.data.transforms import AUGMENTATIONS, INTERPOLATIONS
from bgmask.models import WEIGHT_DECAY_RULES
from bgmask.optim import OPTIMIZERS, SCHEDULERS


class UsageError(ValueError):
    """A flag, flag combination or path the user gave is wrong; the message says how to fix it."""


def str2bool(value: str) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def add_flag(group, name: str, help: str) -> None:
    """A boolean flag that also accepts an explicit value (``--flag``, ``--flag True``, ``--flag 0``)."""
    group.add_argument(name, type=str2bool, nargs="?", const=True, default=False, help=help)


def classifier_parent() -> argparse.ArgumentParser:
    """Flags shared by every classifier trainer (baseline, early and late masking)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", type=str, default=None,
                   help="YAML file whose keys (flag names without --) set defaults; command-line flags still win")

    g = p.add_argument_group("data")
    g.add_argument("--data_path", type=str, default=None, help="CUB_200_2011 folder (holds images.txt)")
    g.add_argument("--dataset", type=str, default="cub", choices=["cub"])
    g.add_argument("--image_sub_path_train", type=str, default="images", help="training image folder under data_path")
    g.add_argument("--image_sub_path_test", type=str, default="images", help="CUB test image folder under data_path")
    g.add_argument("--ood_image_sub_path", type=str, default=WATERBIRDS_SUB_PATH,
                   help="Waterbirds (OOD) image folder under data_path")
    add_flag(g, "--skip_ood_eval", "train and test without the Waterbirds evaluation (recorded in results.json); "
                                   "without it a missing Waterbirds folder stops the run before training")
    g.add_argument("--train_split", type=float, default=1.0,
                   help="fraction of the CUB train split used for training; the rest is the validation set")
    g.add_argument("--eval_mode", type=str, default="test", choices=["test", "val"],
                   help="'test': the per-epoch in-distribution metric is the CUB test split; 'val': the held-out "
                        "part of the train split (needs --train_split < 1)")
    g.add_argument("--num_workers", type=int, default=4)
    g.add_argument("--batch_size", type=int, default=32, help="per process; total = batch_size x processes")

    g = p.add_argument_group("model")
    g.add_argument("--model_arch", type=str, default="convnext_small",
                   help="any timm ConvNeXt or ViT, e.g. convnext_base, vit_base_patch14_dinov2.lvd142m")
    g.add_argument("--image_size", type=int, default=None, help="input size (default: the model's pretrained size)")
    g.add_argument("--start_weights", type=str, default=None,
                   help="DEFAULT loads timm's pretrained weights (hub); omit for random init")
    g.add_argument("--pretrained_path", type=str, default=None, help="local pretrained weights file (offline)")
    add_flag(g, "--freeze_backbone", "train the head only (linear probe)")
    add_flag(g, "--class_token_only", "ViT head on the CLS token only")
    add_flag(g, "--patch_tokens_only", "ViT head on the mean of the patch tokens only (GAP)")
    g.add_argument("--drop_path", type=float, default=0.0)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=90)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--min_lr", type=float, default=1e-8)
    g.add_argument("--scratch_lr_factor", type=float, default=1.0, help="head lr = lr x this")
    g.add_argument("--optimizer_type", type=str, default="adamw", choices=OPTIMIZERS)
    g.add_argument("--weight_decay", type=float, default=1e-2)
    g.add_argument("--weight_decay_rule", type=str, default="all", choices=WEIGHT_DECAY_RULES,
                   help="all: decay every parameter (upstream); timm: exempt biases, norms and the backbone's "
                        "no_weight_decay() set (pos_embed, cls/register tokens), as timm and DeiT do")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--betas1", type=float, default=0.9)
    g.add_argument("--betas2", type=float, default=0.999)
    g.add_argument("--scheduler_type", type=str, default="cosine", choices=SCHEDULERS,
                   help="upstream's schedule names, built on timm schedulers (see docs/fidelity.md)")
    g.add_argument("--scheduler_warmup_epochs", type=int, default=0,
                   help="cosine_with_warmup: linear warm-up epochs; cosine_warmup_restart: the first cycle's length")
    g.add_argument("--scheduler_start_factor", type=float, default=0.333, help="linearlr: lr factor at the start")
    g.add_argument("--scheduler_end_factor", type=float, default=1.0, help="linearlr: lr factor at the end")
    g.add_argument("--scheduler_restart_factor", type=int, default=2,
                   help="cosine_warmup_restart: each cycle is this many times longer than the previous one")
    g.add_argument("--scheduler_gamma", type=float, default=0.1, help="steplr: lr factor at each step")
    g.add_argument("--scheduler_step_size", type=int, default=10, help="steplr: epochs between steps")
    add_flag(g, "--sched_on_updates", "step the learning-rate schedule after every optimizer update instead of "
                                      "once per epoch (upstream)")
    g.add_argument("--grad_norm_clip", type=float, default=0.0, help="0 disables clipping")
    add_flag(g, "--use_amp", "mixed precision on CUDA (fp16 + GradScaler, or bf16 with --amp_dtype bfloat16)")
    g.add_argument("--amp_dtype", type=str, default="float16", choices=["float16", "bfloat16"])
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")

    g = p.add_argument_group("augmentation")
    g.add_argument("--augmentations_to_use", type=str, default="timm", choices=AUGMENTATIONS)
    g.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", help="timm RandAugment policy ('' disables)")
    g.add_argument("--color_jitter", type=float, default=0.4)
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--remode", type=str, default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--train_interpolation", type=str, default="bicubic", choices=INTERPOLATIONS,
                   help="timm augmentation's resize and RandAugment interpolation ('random': bilinear or bicubic)")
    g.add_argument("--crop_pct", type=float, default=1.0,
                   help="eval: resize the short side to size/crop_pct, center-crop size. 1.0 (default) is upstream's "
                        "Resize(S)+CenterCrop(S); 0.875 with --eval_interpolation bicubic is timm's ImageNet eval")
    g.add_argument("--eval_interpolation", type=str, default="bilinear",
                   choices=[i for i in INTERPOLATIONS if i != "random"],
                   help="eval resize interpolation (default: bilinear, torchvision's and upstream's)")
    add_flag(g, "--turn_on_mixup_or_cutmix", "enable mixup/cutmix")
    g.add_argument("--mixup", type=float, default=0.8)
    g.add_argument("--cutmix", type=float, default=1.0)
    g.add_argument("--cutmix_minmax", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="cutmix box ratio range; overrides --cutmix alpha (timm)")
    g.add_argument("--mixup_prob", type=float, default=1.0)
    g.add_argument("--mixup_switch_prob", type=float, default=0.5)
    g.add_argument("--mixup_mode", type=str, default="batch", choices=["batch", "pair", "elem"])

    g = p.add_argument_group("diagnostics")
    g.add_argument("--diagnostics", type=str, default="auto", choices=["auto", "none"],
                   help="auto: after training (and with --eval_only) score the Backgrounds-Challenge views of the CUB "
                        "test set, BG-Gap and the attribution share inside the bird, when bird masks exist "
                        "(see docs/diagnostics.md); none: skip them")
    g.add_argument("--diagnostics_mask_sub_path", type=str, default="segmentations",
                   help="bird masks for the diagnostics: CUB's segmentations/ (> 0 is bird) or a mask folder")

    g = p.add_argument_group("run")
    g.add_argument("--snapshot_dir", type=str, default=None, help="run folder: checkpoints, logs, results.json")
    g.add_argument("--save_every_n_epochs", type=int, default=0, help="also keep epoch_N.pt every N epochs (0: off)")
    g.add_argument("--eval_every", type=int, default=1, help="evaluate every N epochs (and always at the end)")
    add_flag(g, "--resume_training", "resume from <snapshot_dir>/last.pt (always done when it exists)")
    add_flag(g, "--eval_only", "evaluate <snapshot_dir>/best.pt (or --checkpoint) and write results.json")
    g.add_argument("--checkpoint", type=str, default=None, help="checkpoint for --eval_only")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--device", type=str, default="auto", choices=["auto", "cuda", "cpu"])
    g.add_argument("--log_interval", type=int, default=10,
                   help="accepted for upstream compatibility; metrics are logged once per epoch (log.jsonl, wandb)")
    g.add_argument("--max_train_batches", type=int, default=0, help="cap batches per epoch (smoke tests; 0: all)")
    add_flag(g, "--wandb", "log to Weights & Biases (offline when no credentials are configured)")
    g.add_argument("--wandb_project", type=str, default="bgmask")
    g.add_argument("--wandb_entity", type=str, default=None)
    g.add_argument("--job_type", type=str, default=None)
    g.add_argument("--group", type=str, default=None)
    return p


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """timm-style parsing: ``--config`` YAML keys become defaults, explicit flags override them."""
    known, _ = parser.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            parser.error(f"--config {path} does not exist")
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            parser.error(f"--config {path} must be a mapping of flag names to values")
        valid = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - valid)
        if unknown:
            parser.error(f"--config {path} has unknown key(s) {', '.join(unknown)}; keys are flag names without "
                         f"the leading -- (see --help)")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def check_classifier_args(args: argparse.Namespace, cuda_available: bool) -> None:
    """Reject contradictory flags and bad paths before anything is built. Raises :class:`UsageError`.

    Contradictions we refuse: two ViT heads at once; a ViT head flag on a CNN; AMP without CUDA; drop-path on a
    frozen backbone (it would silently do nothing); a warm-up as long as training; min_lr above lr;
    ``--eval_mode val`` without a validation part. Mixup with a frozen backbone is allowed (a valid regulariser).
    """
    errors = []
    if args.data_path is None:
        errors.append("--data_path is required: the CUB_200_2011 folder (holds images.txt).")
    elif not os.path.isdir(args.data_path):
        errors.append(f"--data_path {args.data_path} does not exist. Point it at the extracted CUB_200_2011 folder "
                      f"(or generate the synthetic one with scripts/make_synthetic_cub.py).")
    if args.snapshot_dir is None:
        errors.append("--snapshot_dir is required: the run folder for checkpoints, logs and results.json.")
    elif os.path.exists(args.snapshot_dir) and not os.path.isdir(args.snapshot_dir):
        errors.append(f"--snapshot_dir {args.snapshot_dir} exists and is a file, not a folder; choose another path.")
    if args.class_token_only and args.patch_tokens_only:
        errors.append("--class_token_only and --patch_tokens_only are mutually exclusive: pick one head, or neither "
                      "for the default concat(CLS, mean patch tokens).")
    layout = arch_layout(args.model_arch)
    if (args.class_token_only or args.patch_tokens_only) and layout not in (None, "tokens"):
        errors.append(f"--class_token_only/--patch_tokens_only select a ViT head; {args.model_arch} is not a ViT "
                      f"({layout} features).")
    if args.use_amp and (args.device == "cpu" or not cuda_available):
        errors.append("--use_amp needs a CUDA device (fp16/bf16 autocast); drop the flag to train in fp32 on CPU.")
    if args.freeze_backbone and args.drop_path > 0:
        errors.append("--drop_path has no effect with --freeze_backbone (the frozen backbone runs in eval mode); "
                      "set --drop_path 0.")
    if args.epochs < 1:
        errors.append(f"--epochs must be >= 1, got {args.epochs}.")
    if args.scheduler_warmup_epochs >= args.epochs and args.scheduler_type == "cosine_with_warmup":
        errors.append(f"--scheduler_warmup_epochs ({args.scheduler_warmup_epochs}) must be below --epochs "
                      f"({args.epochs}).")
    if args.scheduler_type == "cosine_warmup_restart" and (args.scheduler_warmup_epochs < 1
                                                           or args.scheduler_restart_factor < 1):
        errors.append("cosine_warmup_restart takes its first cycle length from --scheduler_warmup_epochs (as "
                      "upstream) and needs it >= 1, with --scheduler_restart_factor >= 1.")
    if args.scheduler_type == "steplr" and args.scheduler_step_size < 1:
        errors.append(f"--scheduler_step_size must be >= 1, got {args.scheduler_step_size}.")
    if args.min_lr > args.lr:
        errors.append(f"--min_lr ({args.min_lr}) is above --lr ({args.lr}).")
    if not 0 < args.train_split <= 1:
        errors.append(f"--train_split must be in (0, 1], got {args.train_split}.")
    if args.eval_mode == "val" and args.train_split >= 1:
        errors.append("--eval_mode val needs a validation part: set --train_split below 1 (e.g. 0.9).")
    if args.batch_size < 1 or (args.turn_on_mixup_or_cutmix and args.batch_size % 2):
        errors.append(f"--batch_size must be positive (and even with mixup/cutmix), got {args.batch_size}.")
    if not 0 <= args.mixup_prob <= 1 or not 0 <= args.mixup_switch_prob <= 1:
        errors.append("--mixup_prob and --mixup_switch_prob are probabilities in [0, 1].")
    if args.start_weights not in (None, "", "DEFAULT", "None"):
        errors.append(f"--start_weights accepts DEFAULT (timm pretrained weights) only, got {args.start_weights!r}; "
                      f"use --pretrained_path FILE for local weights.")
    if args.pretrained_path and not os.path.isfile(args.pretrained_path):
        errors.append(f"--pretrained_path {args.pretrained_path} does not exist.")
    if args.eval_only and args.checkpoint and not os.path.isfile(args.checkpoint):
        errors.append(f"--checkpoint {args.checkpoint} does not exist.")
    if errors:
        raise UsageError("invalid arguments:\n  - " + "\n  - ".join(errors))
