"""File helpers shared by every subproject: atomic writes (never a half-written file) and short listings."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

MAX_LISTED = 5  # items shown when an error lists missing or wrong files


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` so that readers only ever see the old file or the complete new one.

    ``write`` receives a binary file in the same folder; it is flushed and fsynced, then renamed over ``path``. On
    any failure (an exception or an interrupt) the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def listing(items: Sequence, total: int | None = None) -> str:
    """The first few ``items`` and their count, e.g. ``a.jpg, b.jpg, ... (12 in total)``."""
    total = len(items) if total is None else total
    shown = ", ".join(str(x) for x in items[:MAX_LISTED])
    return f"{shown}{', ...' if total > MAX_LISTED else ''} ({total} in total)"


def file_digest(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """sha256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
