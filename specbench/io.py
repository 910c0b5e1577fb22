"""Small I/O helpers: every output is written to a temporary name, then renamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` so that a reader (or an interrupted run) never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tmp_path_for(path: str | Path) -> Path:
    """A sibling temporary path for writers that need a filename (``torch.save`` etc.)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh sibling folder to fill; on success it replaces ``path`` as a whole.

    A run killed midway leaves ``path`` as it was (old or absent), never half-written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        tmp.replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def log_to(path: str | Path) -> None:
    """Send this process's stdout/stderr (Python and C level) to ``path`` (Snakemake ``log:``)."""
    import sys

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    sys.stdout = sys.stderr = f


def progress(done: int, total: int, seconds: float, unit: str = "") -> str:
    """``"12/48 (25%) 3.1 prompts/s, ETA 12s"``: a progress line's rate and time left."""
    rate = done / seconds if seconds > 0 else float("nan")
    eta = (total - done) / rate if done and seconds > 0 else float("nan")
    label = f" {unit}/s" if unit else "/s"
    return f"{done}/{total} ({100 * done / max(total, 1):.0f}%) {rate:.2f}{label}, ETA {eta:.0f}s"


def atomic_write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Write ``lines`` (each ending in a newline) one by one, then rename; returns how many.

    For outputs too large to build in memory first; like :func:`atomic_write_text`, an
    interrupted run leaves no partial file at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w") as f:
            for line in lines:
                f.write(line)
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
