"""Typed configuration of a classifier run: one dataclass per concern, assembled in :class:`TrainConfig`.

Every field is also a command-line flag and a YAML key of the same name (upstream's flag names are kept), so the
defaults and help texts written here are the only ones: :mod:`bgmask.cli` builds its parser from these classes.
The library takes these objects, never an ``argparse.Namespace``, and raises :class:`~bgmask.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bgmask.config_checks import config_errors
from bgmask.data.transforms import AUGMENTATIONS, INTERPOLATIONS
from bgmask.errors import ConfigError
from bgmask.models import HEAD_INITS, HEAD_NORM_RULES, WEIGHT_DECAY_RULES, ModelSpec
from bgmask.models.heads import vit_head_of

OPTIMIZERS = ("adamw", "adam", "sgd")  # timm's 'sgd' is SGD with Nesterov momentum, as upstream's
SCHEDULERS = ("cosine", "cosine_with_warmup", "steplr", "linearlr", "cosine_warmup_restart")


def option(default: Any, help: str = "", choices: tuple | list | None = None, metavar: tuple | None = None):
    """A config field that is also a flag: its default, help text and allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar})


@dataclass
class DataConfig:
    section: ClassVar[str] = "data"
    data_path: str | None = option(None, "CUB_200_2011 folder (holds images.txt); with --dataset csv the dataset's "
                                         "CSV file")
    dataset: str = option("cub", "the benchmark (bgmask/benchmarks/): cub = CUB-200-2011, tested on CUB and "
                                 "Waterbirds (the paper); waterbirds = the group_DRO protocol (2 classes, worst "
                                 "group); csv = your own dataset as one CSV (filename, split, y[, a, mask])")
    train_split: float = option(1.0, "fraction of the CUB train split used for training; the rest is the "
                                     "validation set")
    selection_metric: str = option("auto", "what selects the best epoch on the benchmark's selection set: auto = "
                                           "the worst group where that set has groups (waterbirds, a CSV with a), "
                                           "else top-1; average = top-1 over all its images",
                                   ("auto", "worst_group", "average"))
    eval_mode: str = option("test", "'test': the per-epoch in-distribution metric is the CUB test split; 'val': the "
                                    "held-out part of the train split (needs --train_split < 1)", ("test", "val"))
    class_balance: str = option("none", "the field's answer to class imbalance, for every strategy alike (no group "
                                        "labels needed): 'loss' weights each sample's loss by n / (K n_class); "
                                        "'sampler' draws training images with probability ~ 1 / n_class, with "
                                        "replacement (DFR's --reweight_classes)", ("none", "loss", "sampler"))
    reweight_groups: bool = option(False, "draw training images with probability ~ 1 / (their training group's size), "
                                          "with replacement (group_DRO's --reweight_groups); needs training groups "
                                          "(--dataset waterbirds, a CSV with an a column)")
    num_workers: int = option(4, "data-loader worker processes per process (0: load in the training process)")
    batch_size: int = option(32, "per process; total = batch_size x processes")


@dataclass
class ModelConfig:
    section: ClassVar[str] = "model"
    model_arch: str = option("convnext_small", "any timm ConvNeXt or ViT, e.g. convnext_base, "
                                               "vit_base_patch14_dinov2.lvd142m")
    image_size: int | None = option(None, "input size (default: the model's pretrained size)")
    start_weights: str | None = option(None, "DEFAULT loads timm's pretrained weights (hub); omit for random init")
    pretrained_path: str | None = option(None, "local pretrained weights file (offline)")
    freeze_backbone: bool = option(False, "train the head only (linear probe)")
    class_token_only: bool = option(False, "ViT head on the CLS token only")
    patch_tokens_only: bool = option(False, "ViT head on the mean of the patch tokens only (GAP)")
    drop_path: float = option(0.0, "stochastic depth rate of the backbone (timm drop_path_rate)")
    head_norm: str = option("head", "CNNs whose timm head holds a norm before the classifier (ConvNeXt): 'head' "
                                    "trains that norm with the new linear layer, at the scratch lr and with a frozen "
                                    "backbone too (upstream); 'backbone' counts it as frozen/pretrained backbone",
                            HEAD_NORM_RULES)
    head_init: str = option("auto", "new linear head: 'upstream' = kaiming_normal_(fan_out) weights and zero bias "
                                    "for CNNs, nn.Linear's default for ViTs (as the official trainers); 'timm' = "
                                    "trunc_normal_(std 0.02), zero bias; 'torch' = nn.Linear's default; 'auto' = the "
                                    "benchmark's default (cub: upstream, the paper's protocol; waterbirds and csv: "
                                    "timm, as group_DRO, DFR and SubpopBench start their heads)",
                            ("auto", *HEAD_INITS))
    probe_heads: str | None = option(None, "with --freeze_backbone: train these heads together on one backbone "
                                           "forward per batch, a comma list of cls, mean, cls_mean (ViT) or pool "
                                           "(CNN), and late:HEAD for each but cls (masked after the last "
                                           "stage/block; late:masked_mean too). results.json gets 'probes'; its "
                                           "top-level metrics are the first head's (see bgmask/models/probes.py)")

    @property
    def vit_head(self) -> str:
        return vit_head_of(self.class_token_only, self.patch_tokens_only)

    def spec(self, num_classes: int, image_size: int) -> ModelSpec:
        if self.head_init == "auto":
            raise ConfigError("--head_init auto is the benchmark's default: resolve it first "
                              "(bgmask.benchmarks.resolve_config; bgmask.run.pipeline.run does).")
        return ModelSpec(arch=self.model_arch, num_classes=num_classes, image_size=image_size,
                         pretrained=self.start_weights == "DEFAULT", pretrained_path=self.pretrained_path,
                         drop_path=self.drop_path, vit_head=self.vit_head, freeze_backbone=self.freeze_backbone,
                         head_norm=self.head_norm, head_init=self.head_init)


@dataclass
class OptimConfig:
    section: ClassVar[str] = "optimisation"
    epochs: int = option(90, "training epochs")
    lr: float = option(1e-3, "base learning rate of the backbone (the head gets lr x --scratch_lr_factor)")
    min_lr: float = option(1e-8, "learning rate the cosine schedules end at")
    scratch_lr_factor: float = option(1.0, "head lr = lr x this")
    optimizer_type: str = option("adamw", "the timm optimizer (sgd: with Nesterov momentum, as upstream)", OPTIMIZERS)
    weight_decay: float = option(1e-2, "decoupled weight decay (adamw), L2 otherwise")
    weight_decay_rule: str = option("all", "all: decay every parameter (upstream); timm: exempt biases, norms and "
                                           "the backbone's no_weight_decay() set (pos_embed, cls/register tokens), "
                                           "as timm and DeiT do", WEIGHT_DECAY_RULES)
    momentum: float = option(0.9, "sgd: momentum")
    betas1: float = option(0.9, "adam/adamw: beta1")
    betas2: float = option(0.999, "adam/adamw: beta2")
    scheduler_type: str = option("cosine", "upstream's schedule names, built on timm schedulers (see "
                                           "docs/fidelity.md)", SCHEDULERS)
    scheduler_warmup_epochs: int = option(0, "cosine_with_warmup: linear warm-up epochs; cosine_warmup_restart: the "
                                             "first cycle's length")
    scheduler_start_factor: float = option(0.333, "linearlr: lr factor at the start")
    scheduler_end_factor: float = option(1.0, "linearlr: lr factor at the end")
    scheduler_restart_factor: int = option(2, "cosine_warmup_restart: each cycle is this many times longer than the "
                                              "previous one")
    scheduler_gamma: float = option(0.1, "steplr: lr factor at each step")
    scheduler_step_size: int = option(10, "steplr: epochs between steps")
    sched_on_updates: bool = option(False, "step the learning-rate schedule after every optimizer update instead of "
                                           "once per epoch (upstream)")
    grad_norm_clip: float = option(0.0, "0 disables clipping")
    use_amp: bool = option(False, "mixed precision on CUDA: autocast in --amp_dtype (float16 with timm's loss scaler, "
                                  "as upstream, or bfloat16 without one). CPU runs stay fp32 unless --amp_on_cpu")
    amp_dtype: str = option("float16", "autocast dtype of --use_amp", ("float16", "bfloat16"))
    amp_on_cpu: bool = option(False, "apply --use_amp on CPU too (bfloat16 autocast only)")
    tf32: bool = option(False, "CUDA: TF32 for the fp32 matmuls and convolutions left outside autocast")
    smoothing: float = option(0.1, "label smoothing")


@dataclass
class AugConfig:
    section: ClassVar[str] = "augmentation"
    augmentations_to_use: str = option("timm", "training augmentation: timm = create_transform (RandAugment, random "
                                               "erasing); cub_original = upstream's own recipe", AUGMENTATIONS)
    aa: str = option("rand-m9-mstd0.5-inc1", "timm RandAugment policy ('' disables)")
    color_jitter: float = option(0.4, "timm colour jitter strength (used when --aa is '')")
    reprob: float = option(0.25, "random erasing probability")
    remode: str = option("pixel", "random erasing fill: pixel (per-pixel noise), rand (per-channel) or const")
    recount: int = option(1, "random erasing: boxes per image")
    device_tail: str = option("auto", "where the end of the training pipeline runs (uint8 to float, normalisation, "
                                      "random erasing): 'on' the device for whole batches, timm's GPU-loader "
                                      "convention (workers send uint8); 'off' in the loader workers; 'auto': on with "
                                      "CUDA. Erasing boxes are the same either way, their noise values are not",
                              ("auto", "on", "off"))
    fast_augment: bool = option(False, "timm augmentation with the same random draws on faster kernels: the "
                                       "random-resized crop's resize on uint8 tensors (torchvision, PIL's kernels) "
                                       "and RandAugment's geometric ops and sharpness in OpenCV. With the device "
                                       "tail, ~1.6x its loader images/s per core at 518 px (~2x the PIL worker "
                                       "pipeline); bicubic geometric ops use OpenCV's cubic (docs/scale.md, "
                                       "docs/fidelity.md)")
    train_interpolation: str = option("bicubic", "timm augmentation's resize and RandAugment interpolation "
                                                 "('random': bilinear or bicubic)", INTERPOLATIONS)
    crop_pct: float = option(1.0, "eval: resize the short side to size/crop_pct, center-crop size. 1.0 (default) is "
                                  "upstream's Resize(S)+CenterCrop(S); 0.875 with --eval_interpolation bicubic is "
                                  "timm's ImageNet eval")
    eval_interpolation: str = option("bilinear", "eval resize interpolation (default: bilinear, torchvision's and "
                                                 "upstream's)", tuple(i for i in INTERPOLATIONS if i != "random"))
    turn_on_mixup_or_cutmix: bool = option(False, "enable mixup/cutmix")
    mixup: float = option(0.8, "mixup alpha (with --turn_on_mixup_or_cutmix)")
    cutmix: float = option(1.0, "cutmix alpha (with --turn_on_mixup_or_cutmix)")
    cutmix_minmax: tuple[float, float] | None = option(None, "cutmix box ratio range; overrides --cutmix alpha "
                                                             "(timm)", metavar=("MIN", "MAX"))
    mixup_prob: float = option(1.0, "probability of mixup or cutmix per batch")
    mixup_switch_prob: float = option(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_mode: str = option("batch", "mix per batch, per pair or per element (timm)", ("batch", "pair", "elem"))


@dataclass
class DiagnosticsConfig:
    section: ClassVar[str] = "diagnostics"
    diagnostics: str = option("auto", "auto: after training (and with --eval_only) score the Backgrounds-Challenge "
                                      "views of the CUB test set, BG-Gap and the attribution share inside the bird, "
                                      "when bird masks exist (see docs/diagnostics.md); none: skip them",
                              ("auto", "none"))
    diagnostics_batch_size: int = option(0, "images per attribution pass (0: the training batch, an eighth of it "
                                            "with a frozen backbone; see docs/scale.md)")


@dataclass
class RunConfig:
    section: ClassVar[str] = "run"
    snapshot_dir: str | None = option(None, "run folder: checkpoints, logs, results.json")
    save_every_n_epochs: int = option(0, "also keep epoch_N.pt every N epochs (0: off)")
    checkpoint_every: int = option(1, "write last.pt every N epochs and at the end (a preemption signal writes it at "
                                      "once; a crash loses up to N epochs)")
    eval_every: int = option(1, "score the model-selection set (CUB test, or val with --eval_mode val) every N "
                                "epochs; every evaluation set, at the end")
    resume_training: bool = option(False, "resume from <snapshot_dir>/last.pt (always done when it exists)")
    eval_only: bool = option(False, "evaluate <snapshot_dir>/best.pt (or --checkpoint; a --probe_heads run: "
                                    "last.pt) and write results.json")
    checkpoint: str | None = option(None, "checkpoint for --eval_only")
    seed: int = option(42, "seed of the data order, augmentation draws and head initialisation")
    device: str = option("auto", "auto: CUDA when available, else CPU", ("auto", "cuda", "cpu"))
    log_interval: int = option(10, "training steps between host synchronisations: loss check, progress line and "
                                   "preemption poll (metrics are logged once per epoch: log.jsonl, wandb)")
    max_train_batches: int = option(0, "cap batches per epoch (smoke tests; 0: all)")
    grad_checkpointing: bool = option(False, "recompute the backbone's activations in the backward pass (timm's "
                                             "set_grad_checkpointing): less memory, ~30% more compute")
    channels_last: bool = option(False, "CNNs: channels-last memory format for the model's weights (activations "
                                        "follow from the first convolution; faster on GPUs with tensor cores)")
    compile: bool = option(False, "torch.compile the model's forward")
    wandb: bool = option(False, "log to Weights & Biases (offline when no credentials are configured)")
    wandb_project: str = option("bgmask", "W&B project (with --wandb)")
    wandb_entity: str | None = option(None, "W&B entity (with --wandb; default: your W&B default)")
    job_type: str | None = option(None, "W&B job type (with --wandb)")
    group: str | None = option(None, "W&B run group (with --wandb)")


GROUPS = (DataConfig, ModelConfig, OptimConfig, AugConfig, DiagnosticsConfig, RunConfig)

# Settings that change how a run is executed or logged, not what it computes.
RUN_ONLY_SETTINGS = frozenset({"config", "snapshot_dir", "num_workers", "device", "resume_training", "eval_only",
                               "grad_checkpointing", "channels_last", "compile", "checkpoint_every",
                               "checkpoint", "save_every_n_epochs", "log_interval", "wandb", "wandb_project",
                               "wandb_entity", "job_type", "group", "diagnostics", "diagnostics_mask_sub_path",
                               "diagnostics_batch_size"})


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@dataclass
class TrainConfig:
    """Everything a classifier run needs. ``masking`` names the strategy; ``strategy_options`` holds its own
    settings (a dataclass declared by the strategy, or None), ``benchmark_options`` those of ``--dataset``'s
    benchmark (its folders; None: its defaults, filled in by ``bgmask.benchmarks.resolve_config``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    masking: str = "none"
    strategy_options: Any = None
    benchmark_options: Any = None

    @classmethod
    def from_flat(cls, values: dict, options_cls: type | None = None,
                  benchmark_options_cls: type | None = None) -> TrainConfig:
        """From flag-named settings (a parsed command line or an ``args.yaml``), with the strategy's and the
        benchmark's options classes; unknown keys are refused."""
        names = {g: field_names(g) for g in GROUPS}
        known = {n for ns in names.values() for n in ns} | {"masking"}
        option_names = field_names(options_cls) if options_cls is not None else []
        benchmark_names = field_names(benchmark_options_cls) if benchmark_options_cls is not None else []
        unknown = sorted(set(values) - known - set(option_names) - set(benchmark_names))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; settings are the flag names without the "
                              f"leading -- (see --help).")
        groups = {g: g(**{n: values[n] for n in ns if n in values}) for g, ns in names.items()}
        options = options_cls(**{n: values[n] for n in option_names if n in values}) if options_cls else None
        benchmark_options = benchmark_options_cls(**{n: values[n] for n in benchmark_names if n in values}) \
            if benchmark_options_cls else None
        return cls(data=groups[DataConfig], model=groups[ModelConfig], optim=groups[OptimConfig],
                   aug=groups[AugConfig], diagnostics=groups[DiagnosticsConfig], run=groups[RunConfig],
                   masking=values.get("masking", "none"), strategy_options=options,
                   benchmark_options=benchmark_options)

    def flat(self) -> dict:
        """Flag name -> value for every setting (``args.yaml``, resume checks, experiment trackers)."""
        out = {"masking": self.masking}
        for part in (self.data, self.model, self.optim, self.aug, self.diagnostics, self.run, self.strategy_options,
                     self.benchmark_options):
            if part is not None:
                out.update({f.name: getattr(part, f.name) for f in dataclasses.fields(part)})
        return dict(sorted(out.items()))

    def check(self, cuda_available: bool) -> None:
        """Reject contradictory settings and bad paths before anything is built (:mod:`bgmask.config_checks`)."""
        errors = config_errors(self, cuda_available)
        if errors:
            raise ConfigError("invalid arguments:\n  - " + "\n  - ".join(errors))
