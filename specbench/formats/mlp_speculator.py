"""The MLP speculator to and from IBM fms-extras' checkpoint format, which vLLM loads
(``method: mlp_speculator``; ``MLPSpeculatorConfig``, ``model_type: mlp_speculator``).

speculators 0.9.0 defines no MLP-speculator model, so this is the one format that serves it.
Names: ``emb.{i}``, ``proj.{i}``, ``head.{i}``, ``ln.{i}.weight/bias`` (tied: stored once, and
``proj.0``, ``proj.1``), the same indices as ours. The format has no vocabulary map: its
embeddings and heads span the whole target vocabulary, so only a draft whose vocabulary is
the full one converts exactly (see :mod:`specbench.formats`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from specbench.drafts import Draft, build_draft
from specbench.formats.common import (
    is_full_vocab,
    read_checkpoint,
    require,
    write_checkpoint,
)
from specbench.formats.registry import refuse_format, register_format
from specbench.targets.info import TargetInfo

TRUNCATED = (
    "mlp_speculator: fms-extras' format (what vLLM loads) has no vocabulary map: heads and "
    "embeddings span all {V} target tokens, and a head row cannot give −∞ to the tokens off "
    "this draft's {Vd}-token vocabulary; only a full-vocabulary draft (data.draft_vocab_size "
    "≥ the target vocabulary) converts exactly"
)


def load_vllm(path: str | Path, info: TargetInfo) -> Draft:
    """An fms-extras / vLLM MLP-speculator checkpoint as our ``mlp_speculator``."""
    cfg, tensors = read_checkpoint(path)
    where = f"MLP-speculator checkpoint {path}"
    kind = cfg.get("model_type")
    require(kind == "mlp_speculator", f"{where}: model_type {kind!r}, not 'mlp_speculator'")
    require(
        int(cfg["emb_dim"]) == info.hidden_size,
        f"{where}: emb_dim {cfg['emb_dim']} (the target's hidden size is {info.hidden_size})",
    )
    require(
        int(cfg["vocab_size"]) == info.vocab_size,
        f"{where}: vocab_size {cfg['vocab_size']} (the target's is {info.vocab_size})",
    )
    require(is_full_vocab(info), TRUNCATED.format(V=info.vocab_size, Vd=info.draft_vocab_size))
    draft = build_draft(
        "mlp_speculator",
        info,
        num_stages=int(cfg["n_predict"]),
        inner_dim=int(cfg.get("inner_dim") or cfg["emb_dim"]),
        scale_input=bool(cfg.get("scale_input", False)),
        tie_weights=bool(cfg.get("tie_weights", False)),
    )
    own = draft.state_dict()
    missing = sorted(set(own) - set(tensors))
    require(not missing, f"{where}: missing tensors {missing}")
    extra = sorted(set(tensors) - set(own))
    require(not extra, f"{where}: tensors our MLP speculator does not have: {extra}")
    state = {}
    for name, value in tensors.items():
        value = value.float()
        if name.startswith("emb."):  # append our off-vocabulary row (never used: full vocab)
            value = torch.cat([value, value.new_zeros(1, value.shape[1])])
        state[name] = value
    draft.load_state_dict(state)
    return draft


refuse_format(
    "mlp_speculator",
    "speculators",
    "speculators 0.9.0 defines no MLP-speculator model (it has eagle3, mtp, dflash, "
    "dflash2, dspark, peagle, xpress); vLLM's method=mlp_speculator loads IBM fms-extras' "
    "format: use --format vllm",
)


@register_format(
    "mlp_speculator",
    "vllm",
    load=load_vllm,  # no vocabulary map: the whole target vocabulary
    loaded_by="vLLM `method: mlp_speculator` (IBM fms-extras `MLPSpeculatorPreTrainedModel`; "
    "vLLM 0.32 no longer registers the class); full-vocabulary drafts only (the format has no "
    "vocabulary map)",
    verified="none on CPU (fms-extras is not on PyPI, vLLM needs vLLM): round trip through our "
    "reader only",
)
def export_vllm(draft: Draft, info: TargetInfo, out: Path, verifier: str, k: int) -> Path:
    """``config.json`` (``MLPSpeculatorPreTrainedModel``) + ``model.safetensors``."""
    require(is_full_vocab(info), TRUNCATED.format(V=info.vocab_size, Vd=info.draft_vocab_size))
    h = draft.hparams
    state = draft.state_dict()
    tensors = {}
    for name, value in state.items():
        if name.startswith("emb."):  # our last row is the off-vocabulary token: none here
            value = value[: info.vocab_size]
        tensors[name] = value
    config = {
        "architectures": ["MLPSpeculatorPreTrainedModel"],
        "model_type": "mlp_speculator",
        "vocab_size": info.vocab_size,
        "emb_dim": info.hidden_size,
        "inner_dim": h["inner_dim"],
        "n_predict": h["num_stages"],
        "top_k_tokens_per_head": [1] * h["num_stages"],
        "n_candidates": 1,
        "tie_weights": h["tie_weights"],
        "scale_input": h["scale_input"],
        "torch_dtype": "float32",
    }
    return write_checkpoint(out, config, tensors)
