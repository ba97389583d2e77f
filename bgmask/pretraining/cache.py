"""Where the synthetic pretraining keeps its corpus and weights, and the keys that decide whether a cached entry is
still valid: the settings, the versions of what computes them, the CPU thread count and the library's code."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgmask.pretraining.pretrain import Corpus, Recipe

LIBRARY = Path(__file__).resolve().parents[1]  # bgmask/
SCRIPT = LIBRARY.parent / "scripts" / "pretrain_synthetic.py"  # absent in an installed copy of the library


def cache_root() -> Path:
    return Path(os.environ.get("BGMASK_CACHE") or "~/.cache/bgmask").expanduser()


def versions() -> dict:
    """Versions the corpus bytes (numpy, Pillow) and the trained weights (torch, torchvision, timm, the device)
    depend on."""
    import numpy
    import PIL
    import timm
    import torch
    import torchvision

    # The trainer runs on CUDA when there is one (--device auto): CPU and GPU kernels give different weights.
    return {"python": platform.python_version(), "machine": platform.machine(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "numpy": numpy.__version__,
            "pillow": PIL.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__}


def code_of(path: Path) -> str:
    """A Python file's code without its comments, docstrings and layout (a dump of its syntax tree): editing the
    documentation of a module keeps the cache, any change to what it runs does not."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _code_digest(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(LIBRARY.parent)).encode())
        h.update(code_of(path).encode())
    return h.hexdigest()


def corpus_source_digest() -> str:
    """The generator's code (what determines the corpus besides its settings)."""
    return _code_digest([LIBRARY / "data" / "synthetic.py", LIBRARY / "data" / "cub.py"])


def source_digest() -> str:
    """The code of the whole library and of the pretraining script: the trainer, its data pipeline, models and
    optimiser all determine the weights, and a stale cache entry is worse than a rebuild."""
    return _code_digest(sorted(LIBRARY.rglob("*.py")) + ([SCRIPT] if SCRIPT.is_file() else []))


def _key(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(obj):
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def corpus_key(corpus: Corpus) -> str:
    v = versions()
    return _key({"corpus": _plain(corpus), "species": [_plain(sp) for sp in corpus.species()],
                 "versions": {k: v[k] for k in ("python", "machine", "numpy", "pillow")},
                 "source": corpus_source_digest()})


def corpus_dir(corpus: Corpus) -> Path:
    name = f"{corpus.num_classes}x{corpus.images_per_class}-{corpus.image_size}px-{corpus_key(corpus)}"
    return cache_root() / "pretraining_corpus" / name


def training_threads() -> int | None:
    """The intra-op thread count the pretraining trains with on CPU (``None`` on a GPU): CPU kernels split their
    reductions by thread, so one and two threads give different weights (measured: 12.2 % and 11.8 % corpus top-1
    for the demo ViT)."""
    from bgmask.run.session import cpu_threads

    return cpu_threads(num_workers=0) if versions()["device"] == "cpu" else None  # the recipe's --num_workers 0


def weights_key(recipe: Recipe, corpus: Corpus) -> str:
    return _key({"recipe": _plain(recipe), "corpus": corpus_key(corpus), "versions": versions(),
                 "cpu_threads": training_threads(), "source": source_digest()})


def weights_dir(recipe: Recipe, corpus: Corpus) -> Path:
    return cache_root() / "pretrained" / f"{recipe.arch}-{recipe.image_size}px-{weights_key(recipe, corpus)}"


def is_complete(folder: Path) -> bool:
    """A weights folder is complete when both files are there (it only appears under its name when finished)."""
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive lock across processes (POSIX ``flock``; no lock where it does not exist)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
