"""Progress bars that stay readable in log files: tqdm on a terminal, plain periodic lines anywhere else.

tqdm redraws its bar with carriage returns; written to a SLURM log or the demo's stage logs, hundreds of redraws pile
up on one line. When the stream is not a terminal, :func:`progress_bar` prints one line every
``BGMASK_PROGRESS_INTERVAL`` seconds (default 30) and one when the work ends.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 disable: bool = False, leave: bool = False, file=None):
    """tqdm when ``file`` (default stderr) is a terminal, else :class:`LineProgress`; the same calls work on both
    (iteration, ``update``, ``set_postfix``, ``close``)."""
    stream = file or sys.stderr
    if disable or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, dynamic_ncols=True,
                    file=stream)
    interval = float(os.environ.get("BGMASK_PROGRESS_INTERVAL", 30))
    return LineProgress(iterable, total=total, desc=desc, unit=unit, interval=interval, file=stream)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """Progress as whole lines, no carriage returns: one every ``interval`` seconds and one at the end."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 interval: float = 30.0, file=None):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.file = file or sys.stderr
        self.n, self.postfix, self.closed = 0, "", False
        self.start = self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._line(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last = now
        elapsed = now - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} [{elapsed:.0f} s, {self.n / max(elapsed, 1e-9):.2f} {self.unit}/s]"
              f"{extra}", file=self.file, flush=True)
