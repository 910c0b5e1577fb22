"""MEDUSA to and from vLLM's MEDUSA format (``method: medusa``; vLLM's ``MedusaConfig``).

vLLM's ``Medusa`` holds ``blocks.{i}.layers.{j}`` (residual SiLU blocks, with a bias when
``medusa_fc_bias``), ``lm_heads.{i}`` and, for a truncated vocabulary, ``token_map`` (draft
id → target id) with ``truncated_vocab_size``: the same computation as ours, so the mapping
is exact both ways. (FasterDecoding's own ``medusa_lm_head.pt`` is a pickled full-vocabulary
state dict; vLLM does not read it, and neither do we.)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from specbench.drafts import Draft, build_draft
from specbench.formats.common import (
    is_full_vocab,
    read_checkpoint,
    reorder_rows,
    require,
    write_checkpoint,
)
from specbench.formats.registry import refuse_format, register_format
from specbench.targets.info import TargetInfo


def load_vllm(path: str | Path, info: TargetInfo) -> Draft:
    """A vLLM-format MEDUSA checkpoint as our ``medusa``."""
    cfg, tensors = read_checkpoint(path)
    where = f"MEDUSA checkpoint {path}"
    kind = cfg.get("model_type")
    require(kind == "medusa", f"{where}: model_type {kind!r}, not 'medusa'")
    require(
        int(cfg["hidden_size"]) == info.hidden_size,
        f"{where}: hidden_size {cfg['hidden_size']} (target: {info.hidden_size})",
    )
    require(
        not cfg.get("original_lm_head", False),
        f"{where}: original_lm_head (one head shared by every step; ours has one per step)",
    )
    heads, layers = int(cfg["num_heads"]), int(cfg["num_hidden_layers"])
    bias = "blocks.0.layers.0.bias" in tensors
    require(bias or layers == 0, f"{where}: residual blocks without bias (ours have one)")
    token_map = tensors.get("token_map")
    ckpt_d2t = token_map.long() if token_map is not None else torch.arange(int(cfg["vocab_size"]))
    rows = reorder_rows(ckpt_d2t, info, where)
    draft = build_draft("medusa", info, num_heads=heads, num_layers=layers)
    state = {}
    for i in range(heads):
        for j in range(layers):
            for p in ("weight", "bias"):
                state[f"blocks.{i}.{j}.linear.{p}"] = tensors[f"blocks.{i}.layers.{j}.{p}"]
        head = tensors[f"lm_heads.{i}.weight"]
        if token_map is not None and head.shape[0] > token_map.numel():  # vLLM slices too
            head = head[token_map.long()]
        state[f"heads.{i}.weight"] = head[rows]
    draft.load_state_dict({k: v.float() for k, v in state.items()})
    return draft


def token_map_vocab(tensors: dict[str, torch.Tensor], vocab_size: int) -> torch.Tensor:
    """The target ids of a MEDUSA checkpoint's draft vocabulary (no ``token_map``: all)."""
    return tensors["token_map"].long() if "token_map" in tensors else torch.arange(vocab_size)


refuse_format(
    "medusa",
    "speculators",
    "speculators 0.9.0 defines no MEDUSA model; vLLM's method=medusa loads its own "
    "MEDUSA format: use --format vllm",
)
refuse_format("medusa", "sglang", "SGLang serves no MEDUSA drafts; vLLM does: use --format vllm")


@register_format(
    "medusa",
    "vllm",
    load=load_vllm,
    vocab=token_map_vocab,
    loaded_by="vLLM `method: medusa` (its `MedusaConfig`; `token_map` for a truncated "
    "vocabulary, which vLLM 0.32 fails to load: `docs/vllm-t1.md`)",
    verified="served by vLLM 0.32 on CPU (full vocabulary): T=0 counters equal the replay's "
    "(`pytest -m served`); round trip through our reader",
)
def export_vllm(draft: Draft, info: TargetInfo, out: Path, verifier: str, k: int) -> Path:
    h = draft.hparams
    tensors: dict[str, torch.Tensor] = {}
    for name, value in draft.state_dict().items():
        if m := re.fullmatch(r"blocks\.(\d+)\.(\d+)\.linear\.(weight|bias)", name):
            tensors[f"blocks.{m[1]}.layers.{m[2]}.{m[3]}"] = value
        elif m := re.fullmatch(r"heads\.(\d+)\.weight", name):
            tensors[f"lm_heads.{m[1]}.weight"] = value
        else:  # pragma: no cover - a new parameter would need a name in the format
            raise ValueError(f"medusa: no vLLM name for {name}")
    if not is_full_vocab(info):
        tensors["token_map"] = info.draft_to_target.cpu().long()
    config = {
        "architectures": ["MedusaModel"],
        "model_type": "medusa",
        "hidden_size": info.hidden_size,
        "vocab_size": info.vocab_size,
        "truncated_vocab_size": info.draft_vocab_size,
        "num_heads": h["num_heads"],
        "num_hidden_layers": h["num_layers"],
        "medusa_fc_bias": True,
        "original_lm_head": False,
        "max_paths": 64,
        "topk": 10,
        "torch_dtype": "float32",
    }
    return write_checkpoint(out, config, tensors)
