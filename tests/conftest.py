"""Shared fixtures: one tiny synthetic CUB + Waterbirds tree per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# One compute thread per process (subprocesses inherit it): tiny models gain nothing from more, and OpenMP threads
# spinning against data-loader workers or a busy core slow CPU training down by orders of magnitude.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from bgmask.data.synthetic import SyntheticConfig, generate  # noqa: E402

torch.set_num_threads(1)

TINY = SyntheticConfig(num_classes=4, images_per_class=6, image_size=64, habitats=4, bias=0.95, seed=0)


@pytest.fixture(scope="session")
def tiny_cub_root(tmp_path_factory) -> Path:
    """A read-only tiny synthetic dataset; tests that modify files must use :func:`tiny_cub_copy`."""
    out = tmp_path_factory.mktemp("synthetic")
    return generate(out, TINY, progress=False).cub_root


@pytest.fixture
def tiny_cub_copy(tiny_cub_root, tmp_path) -> Path:
    """A private, writable copy of the tiny dataset."""
    dst = tmp_path / "CUB_200_2011"
    shutil.copytree(tiny_cub_root, dst)
    return dst
