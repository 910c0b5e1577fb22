"""Small I/O helpers: atomic folders and progress lines."""

from __future__ import annotations

import pytest

from specbench.io import atomic_dir, progress


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "figures"
    with atomic_dir(out) as tmp:
        (tmp / "a.png").write_text("one")
    assert [p.name for p in out.iterdir()] == ["a.png"]
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "b.png").write_text("half")
        raise RuntimeError("killed midway")
    assert [p.name for p in out.iterdir()] == ["a.png"]  # the old folder, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["figures"]  # no temporary left behind


def test_progress_line_has_rate_and_eta():
    assert progress(12, 48, 4.0, "prompts") == "12/48 (25%) 3.00 prompts/s, ETA 12s"
    assert progress(0, 5, 0.0).startswith("0/5 (0%) nan/s")
