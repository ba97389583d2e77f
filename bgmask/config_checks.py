"""The checks behind :meth:`bgmask.config.TrainConfig.check`: contradictory settings and bad paths, each with the
fix in its message."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import TYPE_CHECKING

from bgmask.errors import timm_name_hint
from bgmask.models.backbones import arch_adapter
from bgmask.models.heads import head_errors, parse_heads, vit_head_of

if TYPE_CHECKING:
    from bgmask.config import DataConfig, ModelConfig, OptimConfig, TrainConfig


def config_errors(cfg: TrainConfig, cuda_available: bool) -> list[str]:
    """What is wrong with a configuration (empty: nothing); :meth:`TrainConfig.check` refuses it before anything is
    built.

    Contradictions we refuse: two ViT heads at once; a ViT head flag on a CNN; fp16 autocast on CPU; drop-path on a
    frozen backbone (it would silently do nothing); a warm-up as long as training; min_lr above lr;
    ``--eval_mode val`` without a validation part. Mixup with a frozen backbone is allowed (a valid regulariser).
    """
    errors = choice_errors(cfg.data, cfg.model, cfg.optim, cfg.aug, cfg.diagnostics, cfg.run,
                           cfg.strategy_options)
    errors += _data_errors(cfg.data) + _model_errors(cfg.model)
    errors += _optim_errors(cfg.optim, cfg.model, cfg.run.eval_only)
    run = cfg.run
    if run.snapshot_dir is None:
        errors.append("--snapshot_dir is required: the run folder for checkpoints, logs and results.json.")
    elif os.path.exists(run.snapshot_dir) and not os.path.isdir(run.snapshot_dir):
        errors.append(f"--snapshot_dir {run.snapshot_dir} exists and is a file, not a folder; choose another "
                      f"path.")
    if cfg.optim.use_amp and cfg.optim.amp_on_cpu and cfg.optim.amp_dtype == "float16" and (
            run.device == "cpu" or not cuda_available):
        errors.append("--amp_on_cpu takes --amp_dtype bfloat16: float16 autocast on CPU needs a loss scaler and "
                      "is slower than fp32.")
    if cfg.data.batch_size >= 1 and cfg.aug.turn_on_mixup_or_cutmix and cfg.data.batch_size % 2:
        errors.append(f"--batch_size must be even with mixup/cutmix, got {cfg.data.batch_size}.")
    if cfg.aug.fast_augment and cfg.aug.augmentations_to_use != "timm":
        errors.append(f"--fast_augment speeds up timm's augmentation (--augmentations_to_use timm); "
                      f"{cfg.aug.augmentations_to_use!r} has no fast path.")
    if cfg.aug.fast_augment and importlib.util.find_spec("cv2") is None:
        errors.append("--fast_augment needs OpenCV: pip install opencv-python.")
    if not 0 <= cfg.aug.mixup_prob <= 1 or not 0 <= cfg.aug.mixup_switch_prob <= 1:
        errors.append("--mixup_prob and --mixup_switch_prob are probabilities in [0, 1].")
    if cfg.data.class_balance == "sampler" and cfg.data.reweight_groups:
        errors.append("--class_balance sampler and --reweight_groups each choose the training sampler: give one "
                      "(--class_balance loss combines with --reweight_groups).")
    if run.checkpoint_every < 1:
        errors.append(f"--checkpoint_every must be >= 1, got {run.checkpoint_every}.")
    if cfg.diagnostics.diagnostics_batch_size < 0:
        errors.append(f"--diagnostics_batch_size must be >= 0 (0: automatic), got "
                      f"{cfg.diagnostics.diagnostics_batch_size}.")
    if run.eval_only and run.checkpoint and not os.path.isfile(run.checkpoint):
        errors.append(f"--checkpoint {run.checkpoint} does not exist.")
    return errors


def choice_errors(*parts) -> list[str]:
    """Values outside a field's ``choices``: argparse checks flags, but not values from ``--config`` files, an
    ``args.yaml`` or a config built in Python."""
    errors = []
    for part in parts:
        if part is None:
            continue
        for f in dataclasses.fields(part):
            choices, value = f.metadata.get("choices"), getattr(part, f.name)
            if choices is not None and value is not None and value not in choices:
                errors.append(f"--{f.name} must be one of {', '.join(map(str, choices))}; got {value!r}.")
    return errors


def _data_errors(data: DataConfig) -> list[str]:
    errors = []
    if data.data_path is None:
        errors.append("--data_path is required: the CUB_200_2011 folder (holds images.txt).")
    elif not os.path.exists(data.data_path):
        errors.append(f"--data_path {data.data_path} does not exist. Point it at the extracted CUB_200_2011 folder "
                      f"(or generate the synthetic one with scripts/make_synthetic_cub.py).")
    if not 0 < data.train_split <= 1:
        errors.append(f"--train_split must be in (0, 1], got {data.train_split}.")
    if data.eval_mode == "val" and data.train_split >= 1:
        errors.append("--eval_mode val needs a validation part: set --train_split below 1 (e.g. 0.9).")
    if data.batch_size < 1:
        errors.append(f"--batch_size must be positive, got {data.batch_size}.")
    return errors


def _model_errors(model: ModelConfig) -> list[str]:
    errors = []
    if model.class_token_only and model.patch_tokens_only:
        errors.append("--class_token_only and --patch_tokens_only are mutually exclusive: pick one head, or neither "
                      "for the default concat(CLS, mean patch tokens).")
    adapter = arch_adapter(model.model_arch)
    if adapter is None:
        errors.append(f"--model_arch {model.model_arch!r} is not a timm model.{timm_name_hint(model.model_arch)} See "
                      f"timm.list_models('convnext*') or timm.list_models('*dinov2*').")
    head = vit_head_of(model.class_token_only, model.patch_tokens_only)
    if (model.class_token_only or model.patch_tokens_only) and adapter is not None and head not in adapter.heads:
        errors.append(f"--class_token_only/--patch_tokens_only select a ViT head; {model.model_arch} has no {head} "
                      f"head ({adapter.layout} features; heads: {', '.join(adapter.heads)}).")
    if model.freeze_backbone and model.drop_path > 0:
        errors.append("--drop_path has no effect with --freeze_backbone (the frozen backbone runs in eval mode); "
                      "set --drop_path 0.")
    if model.start_weights not in (None, "", "DEFAULT", "None"):
        errors.append(f"--start_weights accepts DEFAULT (timm pretrained weights) only, got {model.start_weights!r}; "
                      f"use --pretrained_path FILE for local weights.")
    if model.pretrained_path and not os.path.isfile(model.pretrained_path):
        errors.append(f"--pretrained_path {model.pretrained_path} does not exist.")
    if model.probe_heads is not None:
        if not model.freeze_backbone:
            errors.append("--probe_heads trains heads on a frozen backbone: add --freeze_backbone (fine-tuned heads "
                          "change the backbone, so they cannot share it).")
        if model.class_token_only or model.patch_tokens_only:
            errors.append("--probe_heads names every head; drop --class_token_only / --patch_tokens_only (use "
                          "cls or mean in the list).")
        if adapter is not None:  # an unknown --model_arch is reported above
            errors += head_errors(parse_heads(model.probe_heads), adapter.heads, adapter.late_only_heads,
                                  f"this backbone ({model.model_arch}, {adapter.layout} features)")
    return errors


def _optim_errors(optim: OptimConfig, model: ModelConfig, eval_only: bool = False) -> list[str]:
    errors = []
    if optim.epochs < 1:
        errors.append(f"--epochs must be >= 1, got {optim.epochs}.")
    if optim.scheduler_warmup_epochs >= optim.epochs and optim.scheduler_type == "cosine_with_warmup":
        errors.append(f"--scheduler_warmup_epochs ({optim.scheduler_warmup_epochs}) must be below --epochs "
                      f"({optim.epochs}).")
    if optim.scheduler_type == "cosine_warmup_restart" and (optim.scheduler_warmup_epochs < 1
                                                            or optim.scheduler_restart_factor < 1):
        errors.append("cosine_warmup_restart takes its first cycle length from --scheduler_warmup_epochs (as "
                      "upstream) and needs it >= 1, with --scheduler_restart_factor >= 1.")
    if optim.scheduler_type == "steplr" and optim.scheduler_step_size < 1:
        errors.append(f"--scheduler_step_size must be >= 1, got {optim.scheduler_step_size}.")
    if optim.min_lr > optim.lr:
        errors.append(f"--min_lr ({optim.min_lr}) is above --lr ({optim.lr}).")
    if model.probe_heads is not None and optim.grad_norm_clip > 0:
        errors.append("--grad_norm_clip clips the norm over all parameters, which would couple the --probe_heads; "
                      "set it to 0 (the frozen regime does not clip).")
    if model.probe_heads is not None and optim.use_amp and optim.amp_dtype == "float16" and not eval_only:
        errors.append("--use_amp with float16 shares one loss scaler between the --probe_heads: an overflow in one "
                      "head would skip every head's step; use --amp_dtype bfloat16 (no scaler) or no AMP.")
    return errors
