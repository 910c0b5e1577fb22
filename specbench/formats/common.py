"""What every format shares: reading and writing checkpoint folders, vocabulary maps, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from specbench.io import atomic_dir
from specbench.targets.checkpoint import checkpoint_folder, tensor_index
from specbench.targets.info import TargetInfo


class FormatError(ValueError):
    """A checkpoint or a (architecture, format) pair that cannot be converted exactly."""


def require(ok: bool, message: str) -> None:
    """Refuse (raise :class:`FormatError`) unless ``ok``: a difference we cannot map exactly."""
    if not ok:
        raise FormatError(message)


def write_checkpoint(
    out_dir: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], extra=None
) -> Path:
    """``config.json`` + ``model.safetensors`` (+ ``extra`` {name: text}), atomically as a whole."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
    return out_dir


def resolve(path: str | Path) -> Path:
    """A local folder, or a hub id (from the local cache, else downloaded once)."""
    folder = checkpoint_folder(path)
    if folder is not None:
        return folder
    if Path(path).exists():
        raise FormatError(f"{path}: not a checkpoint folder")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors"]))


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json, every tensor of every safetensors file) of a draft checkpoint."""
    folder = resolve(path)
    cfg_file = folder / "config.json"
    require(cfg_file.exists(), f"{path}: no config.json")
    files = sorted(set(tensor_index(folder).values()))
    require(bool(files), f"{path}: no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return json.loads(cfg_file.read_text()), tensors


def is_full_vocab(info: TargetInfo) -> bool:
    """The draft vocabulary is the whole target vocabulary, in target order."""
    d2t = info.draft_to_target.cpu()
    return d2t.numel() == info.vocab_size and bool((d2t == torch.arange(d2t.numel())).all())


def offsets_and_mask(info: TargetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """EAGLE-3 checkpoint buffers: ``d2t`` as offsets (target id = draft id + d2t[draft id]),
    ``t2d`` as a boolean mask over the target vocabulary; the draft ids must be sorted."""
    d2t = info.draft_to_target.cpu().long()
    require(
        bool((d2t.diff() > 0).all()),
        "the EAGLE-3 formats keep draft ids in target-id order (t2d is a mask); this draft "
        "vocabulary is not sorted",
    )
    t2d = torch.zeros(info.vocab_size, dtype=torch.bool)
    t2d[d2t] = True
    return d2t - torch.arange(d2t.numel()), t2d


def reorder_rows(ckpt_d2t: torch.Tensor, info: TargetInfo, what: str) -> torch.Tensor:
    """Indices ``perm`` with ``ckpt_d2t[perm] == info.draft_to_target``: the checkpoint's rows in
    the run's draft order. Refuses unless both vocabularies hold the same target tokens."""
    mine = info.draft_to_target.cpu().long()
    theirs = ckpt_d2t.cpu().long()
    same = mine.numel() == theirs.numel() and bool(
        (mine.sort().values == theirs.sort().values).all()
    )
    if not same:
        shared = len(set(mine.tolist()) & set(theirs.tolist()))
        raise FormatError(
            f"{what}: its draft vocabulary ({theirs.numel()} tokens) is not the run's "
            f"({mine.numel()} tokens, {shared} in common); a draft cannot be evaluated exactly "
            "over another vocabulary. Evaluate it over its own (external_drafts: vocab: own)"
        )
    position = torch.empty(info.vocab_size, dtype=torch.long)
    position[theirs] = torch.arange(theirs.numel())
    return position[mine]


def hf_config(info: TargetInfo):
    """The target's transformers config (``TargetInfo.extra``), or None."""
    return info.extra.get("hf_config")


def target_layers(info: TargetInfo) -> int | None:
    cfg = hf_config(info)
    return None if cfg is None else int(cfg.num_hidden_layers)
