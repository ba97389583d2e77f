"""Synthetic pretraining: backbone weights for the benchmark's small models, made here because none can be downloaded.

The corpus mirrors what makes ImageNet pretraining useful for CUB without leaking it: many bird species, *none* of
them a benchmark species (:func:`~bgmask.data.synthetic.disjoint_species`), and backgrounds drawn uniformly over all
eight habitats whatever the species (``bias = 1 / habitats``: the home habitat is as likely as any other), so the
features it teaches are about birds, not about which background goes with which class.

A backbone is trained on it as a plain classifier by the project's own trainer, then exported the way timm
publishes weights: a folder with ``model.safetensors`` (the backbone's state dict, no head) and ``config.json``
(architecture and ``pretrained_cfg``). Classifiers load it with ``--pretrained_path .../model.safetensors``, the path
users take with downloaded weights.

Everything is cached per machine under ``$BGMASK_CACHE`` (default ``~/.cache/bgmask``), outside the clone, keyed by
what determines the result: corpus settings and species, training recipe, seed, torch and timm versions and the
library's source. Folders are built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bgmask.data.synthetic import SyntheticConfig, appearance, disjoint_species, generate

LIBRARY = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Corpus:
    """The pretraining corpus: ``num_classes`` species unlike the ``benchmark``'s, uniform backgrounds."""

    num_classes: int = 48
    images_per_class: int = 60
    image_size: int = 64
    seed: int = 1000
    benchmark: SyntheticConfig = SyntheticConfig()

    def config(self) -> SyntheticConfig:
        return SyntheticConfig(num_classes=self.num_classes, images_per_class=self.images_per_class,
                               image_size=self.image_size, habitats=8, bias=1 / 8, seed=self.seed)

    def species(self):
        return disjoint_species(self.benchmark, self.num_classes, self.seed)


@dataclass(frozen=True)
class Recipe:
    """How one backbone is pretrained (flags of the classifier trainer)."""

    arch: str
    image_size: int
    epochs: int
    lr: float
    batch_size: int = 32
    weight_decay: float = 0.05
    seed: int = 0


def cache_root() -> Path:
    return Path(os.environ.get("BGMASK_CACHE", "~/.cache/bgmask")).expanduser()


def source_digest() -> str:
    """A hash of the library's source: the generator and the trainer determine the weights."""
    h = hashlib.sha256()
    for path in sorted(LIBRARY.rglob("*.py")):
        h.update(str(path.relative_to(LIBRARY)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _key(*parts) -> str:
    import timm
    import torch

    text = json.dumps([_plain(p) for p in parts] + [torch.__version__, timm.__version__, source_digest()],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(obj):
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def corpus_dir(corpus: Corpus) -> Path:
    species = [appearance(sp) for sp in corpus.species()]
    name = f"{corpus.num_classes}x{corpus.images_per_class}-{_key(corpus, species)}"
    return cache_root() / "pretraining_corpus" / name


def build_corpus(corpus: Corpus, progress: bool = False) -> Path:
    """The corpus's ``CUB_200_2011`` folder, generated on first use."""
    folder = corpus_dir(corpus)
    if not (folder / "CUB_200_2011" / "images.txt").is_file():
        generate(folder, corpus.config(), progress=progress, overwrite=True, species=corpus.species())
    return folder / "CUB_200_2011"


def weights_dir(recipe: Recipe, corpus: Corpus) -> Path:
    return cache_root() / "pretrained" / f"{recipe.arch}-{recipe.image_size}px-{_key(recipe, corpus)}"


def pretrained_weights(recipe: Recipe, corpus: Corpus = Corpus(), progress: bool = False, log=print) -> Path:
    """``model.safetensors`` of ``recipe`` pretrained on ``corpus``: from the cache, or trained now and cached."""
    final = weights_dir(recipe, corpus)
    if (final / "model.safetensors").is_file() and (final / "config.json").is_file():
        log(f"cached: {final / 'model.safetensors'}")
        return final / "model.safetensors"
    start = time.perf_counter()
    data = build_corpus(corpus, progress=progress)
    work = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        results = _train(recipe, data, work / "run", progress)
        export(work / "run" / "last.pt", recipe, work / "export",
               note={"corpus": _plain(corpus), "recipe": _plain(recipe),
                     "corpus_test_top1": results["cub_test"]["top1"], "seconds": round(time.perf_counter() - start, 1)})
        shutil.rmtree(final, ignore_errors=True)
        (work / "export").rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"pretrained {recipe.arch} @ {recipe.image_size}px in {time.perf_counter() - start:.0f} s "
        f"(corpus test top-1 {results['cub_test']['top1']:.1f}%): {final / 'model.safetensors'}")
    return final / "model.safetensors"


def _train(recipe: Recipe, data: Path, run_dir: Path, progress: bool) -> dict:
    from bgmask import cli

    argv = ["--data_path", str(data), "--snapshot_dir", str(run_dir), "--model_arch", recipe.arch,
            "--image_size", str(recipe.image_size), "--batch_size", str(recipe.batch_size), "--num_workers", "0",
            "--epochs", str(recipe.epochs), "--lr", str(recipe.lr), "--weight_decay", str(recipe.weight_decay),
            *(["--scheduler_type", "cosine_with_warmup", "--scheduler_warmup_epochs", "1"] * (recipe.epochs > 1)),
            "--augmentations_to_use", "cub_original", "--eval_every", str(recipe.epochs), "--skip_ood_eval",
            "--diagnostics", "none", "--seed", str(recipe.seed)]
    captured = io.StringIO()
    # The trainer's own lines go to stderr: stdout stays free for the weights path (--print_path).
    with contextlib.redirect_stdout(sys.stderr), \
            contextlib.nullcontext() if progress else contextlib.redirect_stderr(captured):
        code = cli.main(["none"], argv)
    if code != 0:
        errors = [line for line in captured.getvalue().splitlines() if line.startswith("error")]
        raise RuntimeError(f"pretraining {recipe.arch} failed (exit code {code}): {' '.join(errors)}\n"
                           f"command: python -m bgmask {' '.join(argv)}")
    return json.loads((run_dir / "results.json").read_text())


def export(checkpoint: Path, recipe: Recipe, out_dir: Path, note: dict | None = None) -> Path:
    """The backbone of a classifier checkpoint as a timm weights folder (``model.safetensors`` + ``config.json``)."""
    import timm
    from safetensors.torch import save_file
    from timm.data import resolve_data_config

    from bgmask.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)["model"]
    backbone = {k.removeprefix("backbone."): v.contiguous() for k, v in state.items() if k.startswith("backbone.")}
    model = timm.create_model(recipe.arch, pretrained=False, num_classes=0,
                              **({"img_size": recipe.image_size} if "img_size" in _kwargs(recipe.arch) else {}))
    missing = set(model.state_dict()) ^ set(backbone)
    if missing:
        raise RuntimeError(f"exported state dict does not match timm's {recipe.arch}: {sorted(missing)[:3]}")
    data_cfg = resolve_data_config({}, model=model)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(backbone, str(out_dir / "model.safetensors"))
    config = {"architecture": recipe.arch, "num_classes": 0, "num_features": model.num_features,
              "pretrained_cfg": {"input_size": [3, recipe.image_size, recipe.image_size],
                                 "interpolation": data_cfg["interpolation"], "crop_pct": 1.0,
                                 "mean": list(data_cfg["mean"]), "std": list(data_cfg["std"]),
                                 "num_classes": 0, "classifier": None},
              "bgmask": {"made_by": "bgmask.pretrain (synthetic pretraining corpus)", **(note or {})}}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir / "model.safetensors"


def _kwargs(arch: str) -> set[str]:
    from bgmask.backbones import takes_img_size

    return {"img_size"} if takes_img_size(arch) else set()


DEMO_RECIPES = {
    "convnext_atto": Recipe("convnext_atto", 64, epochs=12, lr=1e-3),
    "vit_small_patch14_dinov2": Recipe("vit_small_patch14_dinov2", 56, epochs=8, lr=5e-4),
}
