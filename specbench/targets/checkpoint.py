"""Finding a checkpoint on disk and indexing its safetensors files, without loading it."""

from __future__ import annotations

import json
from pathlib import Path


def checkpoint_folder(name_or_path: str | Path) -> Path | None:
    """A local folder, or a hub id's snapshot already in the local cache; None otherwise.

    Never reaches the network.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: the caller decides what that means
        return None


def tensor_index(folder: Path) -> dict[str, str]:
    """tensor name → safetensors file name, from the index or by scanning the (few) files."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update(dict.fromkeys(f.keys(), path.name))
    return out
