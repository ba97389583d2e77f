"""The shared file helpers: atomic writes keep the old file on failure and leave no temporary file."""

from __future__ import annotations

import pytest

from bgmask.io import atomic_write, atomic_write_text, listing


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "results.json"
    atomic_write_text(path, "old")
    assert path.read_text() == "old"

    def failing(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt  # an interrupt mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, failing)
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new"


def test_listing_shows_the_first_few_and_the_count():
    assert listing(["a", "b"]) == "a, b (2 in total)"
    assert listing([str(i) for i in range(9)]) == "0, 1, 2, 3, 4, ... (9 in total)"
