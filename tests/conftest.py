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

# Where the whole environment is promised (scripts/test.sh, so CI), a skip would hide a failure (a broken mmcv build
# used to turn the segmentation tests into skips): there, only tests marked gpu (no CUDA device) or no_gpu (a CUDA
# device present) may skip; any other skip, at collection or in a test, fails.
REQUIRE_ALL = os.environ.get("BGMASK_TEST_REQUIRE_ALL") == "1"
ALLOWED_SKIP_MARKERS = ("gpu", "no_gpu")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped where every dependency must be installed: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    allowed = any(item.get_closest_marker(name) for name in ALLOWED_SKIP_MARKERS)
    if REQUIRE_ALL and report.skipped and not allowed and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"skipped where every dependency must be installed (only {ALLOWED_SKIP_MARKERS} tests may "
                           f"skip): {report.longrepr}")


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    allowed = " or ".join(ALLOWED_SKIP_MARKERS)
    terminalreporter.write_line(f"skipped tests: {len(skipped)} (allowed: those marked {allowed}"
                                f"{'; every other skip fails here' if REQUIRE_ALL else ''})")


TINY = SyntheticConfig(num_classes=4, images_per_class=6, image_size=64, habitats=4, bias=0.95, seed=0)


@pytest.fixture(scope="session")
def tiny_cub_root(tmp_path_factory) -> Path:
    """A read-only tiny synthetic dataset; tests that modify files must use :func:`tiny_cub_copy`."""
    out = tmp_path_factory.mktemp("synthetic")
    return generate(out, TINY, progress=False).cub_root


TWIN = SyntheticConfig(num_classes=6, images_per_class=20, image_size=32, habitats=2, seed=1)


@pytest.fixture(scope="session")
def twin_root(tmp_path_factory) -> Path:
    """A twin with the release's two habitats (land, water), large enough for the split structure and for DFR."""
    return generate(tmp_path_factory.mktemp("twin"), TWIN, progress=False).cub_root


@pytest.fixture
def tiny_cub_copy(tiny_cub_root, tmp_path) -> Path:
    """A private, writable copy of the tiny dataset."""
    dst = tmp_path / "CUB_200_2011"
    shutil.copytree(tiny_cub_root, dst)
    return dst
