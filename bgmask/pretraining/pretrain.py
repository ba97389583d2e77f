"""Synthetic pretraining: backbone weights for the benchmark's small models, made here because none can be downloaded.

The corpus mirrors what makes ImageNet-style pretraining useful for CUB without leaking the evaluation:

* **other species**: many classes, none of them a benchmark species (:func:`~bgmask.data.synthetic.disjoint_species`
  drops every candidate that looks like, or is named like, one of the benchmark's);
* **backgrounds independent of species**: all eight habitats, each shown equally often for every species in both
  splits (``backgrounds="balanced"``), so nothing the corpus teaches ties a background to a class;
* **broad**: more species than the benchmark, from more genera, in every plumage colour of the generator.

A backbone is trained on it as a plain classifier by the project's own trainer (``python -m bgmask --masking none``
from random initialisation), then exported the way timm publishes weights: a folder with ``model.safetensors`` (the
backbone's state dict as ``timm.create_model(arch, num_classes=0)`` holds it, no head) and ``config.json``
(``architecture``, ``num_features``, ``pretrained_cfg`` and a note of how the weights were made). Classifiers load it
with ``--pretrained_path .../model.safetensors``, the path users take with downloaded weights.

Everything is cached per machine under ``$BGMASK_CACHE`` (default ``~/.cache/bgmask``), outside the clone, keyed by
what determines the result: the corpus settings and species table, the training recipe and seed, the torch,
torchvision, timm, numpy and Pillow versions, the device and, on CPU, the intra-op thread count, and the code of the
library and of the pretraining script (comments and docstrings aside). Folders are built under a temporary name and
renamed when complete, under a lock, so an interrupted build leaves nothing that looks finished and concurrent builds
of one entry do the work once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bgmask.data.synthetic import HABITAT_NAMES, SyntheticConfig, disjoint_species, generate
from bgmask.data.transforms import AUGMENTATIONS
from bgmask.errors import PretrainError, timm_name_hint
from bgmask.io import atomic_write_text
from bgmask.pretraining.cache import (
    _locked,
    _plain,
    corpus_dir,
    is_complete,
    training_threads,
    versions,
    weights_dir,
    weights_key,
)


@dataclass(frozen=True)
class Corpus:
    """The pretraining corpus: ``num_classes`` species unlike the ``benchmark``'s, on species-independent backgrounds.

    ``train_fraction`` keeps most images for training, as pretraining sets do; the rest is the corpus's own test
    split (the pretraining accuracy reported in the weights' ``config.json``).
    """

    num_classes: int = 48
    images_per_class: int = 80
    image_size: int = 64
    train_fraction: float = 0.8
    seed: int = 1000
    benchmark: SyntheticConfig = SyntheticConfig()

    def config(self) -> SyntheticConfig:
        return SyntheticConfig(num_classes=self.num_classes, images_per_class=self.images_per_class,
                               image_size=self.image_size, habitats=len(HABITAT_NAMES), backgrounds="balanced",
                               train_fraction=self.train_fraction, seed=self.seed)

    def species(self):
        return disjoint_species(self.benchmark, self.num_classes, self.seed)

    def check(self) -> None:
        """Raise :class:`PretrainError` for settings the generator refuses."""
        try:
            self.config().validate()
            self.species()
        except ValueError as e:
            raise PretrainError(f"pretraining corpus: {e}") from None


@dataclass(frozen=True)
class Recipe:
    """How one backbone is pretrained: the classifier trainer's flags (see :meth:`trainer_args`).

    The default augmentation is timm's ImageNet training transform without RandAugment and random erasing
    (random-resized crop, flip, colour jitter 0.4): the classic short-schedule ImageNet recipe.
    """

    arch: str
    image_size: int
    epochs: int
    lr: float
    batch_size: int = 32
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    augmentations: str = "timm"
    aa: str = ""  # timm augmentation: RandAugment policy ('' none)
    reprob: float = 0.0  # timm augmentation: random erasing probability
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`PretrainError` for settings that cannot train."""
        from bgmask.models.backbones import arch_adapter

        errors = []
        if arch_adapter(self.arch) is None:
            errors.append(f"{self.arch!r} is not a timm model (see timm.list_models('convnext*') or "
                          f"timm.list_models('*dinov2*')).{timm_name_hint(self.arch)}")
        if self.image_size < 32:  # a CNN's last stage has stride 32
            errors.append(f"image size must be >= 32 pixels, got {self.image_size}")
        if self.epochs < 1:
            errors.append(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            errors.append(f"learning rate must be positive, got {self.lr}")
        if self.batch_size < 1:
            errors.append(f"batch size must be >= 1, got {self.batch_size}")
        if self.weight_decay < 0:
            errors.append(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.warmup_epochs < 0 or (self.epochs > 1 and self.warmup_epochs >= self.epochs):
            errors.append(f"warm-up epochs must be in [0, epochs), got {self.warmup_epochs} for {self.epochs} epochs")
        if self.augmentations not in AUGMENTATIONS:
            errors.append(f"augmentations must be one of {AUGMENTATIONS}, got {self.augmentations!r}")
        if errors:
            raise PretrainError("pretraining recipe: " + "; ".join(errors))

    def trainer_args(self, data: Path, run_dir: Path) -> list[str]:
        """The ``python -m bgmask --masking none`` flags of this recipe: AdamW, a linear warm-up then a cosine
        schedule stepped every update, weight decay off for norms, biases and position embeddings (timm's rule),
        label smoothing 0.1 (the trainer's default), evaluation once at the end, no OOD set and no diagnostics.
        The classifier head, discarded after pretraining, starts from ``nn.Linear``'s default (``--head_init
        torch``): upstream's head initialisation is a fine-tuning detail, not part of this recipe."""
        warmup = self.warmup_epochs if self.epochs > 1 else 0
        schedule = (["--scheduler_type", "cosine_with_warmup", "--scheduler_warmup_epochs", str(warmup)] if warmup
                    else ["--scheduler_type", "cosine"])
        return ["--data_path", str(data), "--snapshot_dir", str(run_dir), "--model_arch", self.arch,
                "--image_size", str(self.image_size), "--batch_size", str(self.batch_size), "--num_workers", "0",
                "--epochs", str(self.epochs), "--lr", str(self.lr), "--weight_decay", str(self.weight_decay),
                "--weight_decay_rule", "timm", "--head_init", "torch", *schedule, "--sched_on_updates",
                "--augmentations_to_use", self.augmentations, "--aa", self.aa, "--reprob", str(self.reprob),
                "--eval_every", str(self.epochs), "--skip_ood_eval",
                "--diagnostics", "none", "--seed", str(self.seed)]


# The demo's two backbones at the demo's sizes. Epochs: what fits about four minutes for both on a 2-core CPU
# (docs/pretraining.md has the timings); lr: the best corpus-test accuracy of ConvNeXt-atto over 2.5e-4 .. 4e-3.
DEMO_RECIPES = {
    "convnext_atto": Recipe("convnext_atto", 64, epochs=4, lr=5e-4),
    "vit_small_patch14_dinov2": Recipe("vit_small_patch14_dinov2", 56, epochs=3, lr=5e-4),
}


def default_recipe(arch: str, image_size: int | None = None) -> Recipe:
    """The demo recipe of ``arch``, or for another model the demo recipe of its family (ViT or CNN) at
    ``image_size`` (default: the family's demo size)."""
    from bgmask.models.backbones import BackboneAdapter, arch_adapter

    if arch in DEMO_RECIPES:
        base = DEMO_RECIPES[arch]
    else:
        family = (arch_adapter(arch) or BackboneAdapter).recipe_family
        base = dataclasses.replace(DEMO_RECIPES[family], arch=arch)
    return dataclasses.replace(base, image_size=image_size) if image_size else base


# ------------------------------------------------------------------------------------------------------ corpus
def build_corpus(corpus: Corpus, progress: bool = False, log: Callable[[str], object] = print) -> Path:
    """The corpus's ``CUB_200_2011`` folder, generated on first use; ``corpus.json`` beside it (written last) says
    what it holds: species, background counts per species and split, generation time."""
    corpus.check()
    folder = corpus_dir(corpus)
    marker = folder / "corpus.json"
    if not marker.is_file():
        with _locked(folder.parent / f".{folder.name}.lock"):
            if not marker.is_file():
                species = corpus.species()
                summary = generate(folder, corpus.config(), progress=progress, overwrite=True, species=species)
                counts = summary.habitat_counts
                atomic_write_text(marker, json.dumps({
                    "corpus": _plain(corpus), "backgrounds": "balanced", "habitats": list(HABITAT_NAMES),
                    "species": [sp.name for sp in species], "images": summary.num_images,
                    "train_images": summary.num_train,
                    "habitat_counts": {"train": counts[0].tolist(), "test": counts[1].tolist()},
                    "seconds": round(summary.seconds, 1), "versions": versions()}, indent=1) + "\n")
                log(f"pretraining corpus: {summary.num_images} images ({summary.num_train} train) of "
                    f"{corpus.num_classes} species, generated in {summary.seconds:.0f} s: {folder}")
    return folder / "CUB_200_2011"


# ----------------------------------------------------------------------------------------------------- weights
def pretrained_weights(recipe: Recipe, corpus: Corpus = Corpus(), progress: bool = False,
                       log: Callable[[str], object] = print, rebuild: bool = False) -> Path:
    """``model.safetensors`` of ``recipe`` pretrained on ``corpus``: from the cache, or trained now and cached.

    Args:
        progress: show the generator's and the trainer's progress bars (on stderr).
        log: where the one-line messages go (cache hit, corpus generated, weights trained).
        rebuild: train again even when the cache holds the weights (they are replaced).
    """
    recipe.check()
    corpus.check()
    final = weights_dir(recipe, corpus)
    if is_complete(final) and not rebuild:
        log(f"cached: {final / 'model.safetensors'}")
        return final / "model.safetensors"
    with _locked(final.parent / f".{final.name}.lock"):
        if is_complete(final) and not rebuild:  # built by another process while this one waited
            log(f"cached: {final / 'model.safetensors'}")
            return final / "model.safetensors"
        start = time.perf_counter()
        data = build_corpus(corpus, progress=progress, log=log)
        corpus_seconds = time.perf_counter() - start
        work = final.parent / f".{final.name}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            results = _train(recipe, data, work / "run", progress)
            train_seconds = time.perf_counter() - start - corpus_seconds
            export(work / "run" / "last.pt", recipe, work / "export", note={
                "command": "python -m bgmask --masking none " + shlex.join(recipe.trainer_args(data, Path("RUN"))),
                "corpus": _plain(corpus), "corpus_dir": str(data.parent), "recipe": _plain(recipe),
                "corpus_test_top1": results["cub_test"]["top1"],
                "corpus_test_images": results["cub_test"]["num_images"],
                "seconds": {"corpus": round(corpus_seconds, 1), "training": round(train_seconds, 1)},
                "versions": versions(), "cpu_threads": training_threads(), "key": weights_key(recipe, corpus)})
            provenance = work / "export" / "pretraining"
            provenance.mkdir()
            for name in ("args.yaml", "results.json", "log.jsonl"):
                if (work / "run" / name).is_file():
                    shutil.copy2(work / "run" / name, provenance / name)
            if final.exists():  # rebuild: replace the old entry
                shutil.rmtree(final)
            (work / "export").rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log(f"pretrained {recipe.arch} @ {recipe.image_size}px in {time.perf_counter() - start:.0f} s "
        f"(corpus {corpus_seconds:.0f} s; corpus test top-1 {results['cub_test']['top1']:.1f}%): "
        f"{final / 'model.safetensors'}")
    return final / "model.safetensors"


def _train(recipe: Recipe, data: Path, run_dir: Path, progress: bool) -> dict:
    """Train the classifier with the project's trainer, in this process; its results.json."""
    from bgmask import cli

    argv = recipe.trainer_args(data, run_dir)
    captured = io.StringIO()
    # The trainer's lines go to stderr (or nowhere without progress): stdout stays free for the weights path.
    with contextlib.redirect_stdout(sys.stderr if progress else captured), \
            contextlib.nullcontext() if progress else contextlib.redirect_stderr(captured), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Waterbirds \(OOD\) evaluation is skipped")  # no OOD set here
        code = cli.main(["none"], argv)
    if code != 0:
        lines = [line.strip() for line in captured.getvalue().replace("\r", "\n").splitlines() if line.strip()]
        raise PretrainError(f"pretraining {recipe.arch} failed (exit code {code}): {' / '.join(lines[-5:])}\n"
                            f"command: python -m bgmask --masking none {shlex.join(argv)}")
    return json.loads((run_dir / "results.json").read_text())


def export(checkpoint: Path, recipe: Recipe, out_dir: Path, note: dict | None = None) -> Path:
    """The backbone of a classifier checkpoint as a timm weights folder (``model.safetensors`` + ``config.json``).

    The state dict is the backbone's with our ``backbone.`` prefix removed and our head dropped: exactly the keys of
    ``timm.create_model(arch, num_classes=0)`` (checked). ``pretrained_cfg`` records the input size the weights were
    trained at and the evaluation transform the trainer used (ImageNet mean/std, bilinear resize, crop_pct 1.0).
    """
    import timm
    from safetensors.torch import save_file
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from bgmask.config import AugConfig
    from bgmask.infra.checkpoint import load_checkpoint
    from bgmask.models.backbones import takes_img_size

    state = load_checkpoint(checkpoint)["model"]
    backbone = {k.removeprefix("backbone."): v.contiguous() for k, v in state.items() if k.startswith("backbone.")}
    kwargs = {"img_size": recipe.image_size} if takes_img_size(recipe.arch) else {}
    model = timm.create_model(recipe.arch, pretrained=False, num_classes=0, **kwargs)
    expected = model.state_dict()
    differ = sorted(set(expected) ^ set(backbone)) + sorted(
        k for k in set(expected) & set(backbone) if expected[k].shape != backbone[k].shape)
    if differ:
        raise PretrainError(f"the trained backbone does not match timm's {recipe.arch} (num_classes=0): "
                            f"{', '.join(differ[:3])}")
    aug = AugConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(backbone, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architecture": recipe.arch, "num_classes": 0, "num_features": model.num_features,
        "model_args": kwargs,
        "pretrained_cfg": {
            "tag": "bgmask_synthetic", "input_size": [3, recipe.image_size, recipe.image_size],
            "fixed_input_size": takes_img_size(recipe.arch), "interpolation": aug.eval_interpolation,
            "crop_pct": aug.crop_pct, "crop_mode": "center", "mean": list(IMAGENET_DEFAULT_MEAN),
            "std": list(IMAGENET_DEFAULT_STD), "num_classes": 0, "classifier": None},
        "bgmask": {"made_by": "bgmask.pretraining.pretrain: supervised pretraining on the synthetic pretraining corpus",
                   **(note or {})},
    }
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
    return out_dir / "model.safetensors"
