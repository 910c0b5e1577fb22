"""The fine-tuned MTP module under the target's own MTP-layer names (DeepSeek-V3:
``model.layers.{num_hidden_layers}.*``, layer 61), so it drops into the checkpoint.

The inverse of :func:`specbench.drafts.mtp_import.released_to_draft`: ``block.*`` →
``model.layers.N.*`` with transformers' fused routed experts split back into
``mlp.experts.{e}.{gate,up,down}_proj.weight``; ``shared_head_norm`` → ``shared_head.norm``;
``embed_tokens`` and ``shared_head.head`` are the target's (full-vocabulary) embedding and head,
as in the released layer. The weights are written unquantised; ``config.json`` is the
target's, which is what vLLM's ``deepseek_mtp`` reads beside them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from specbench.drafts import Draft
from specbench.formats.common import hf_config, require, write_checkpoint
from specbench.formats.registry import register_format
from specbench.targets.info import TargetInfo


def mtp_tensors(draft: Draft, info: TargetInfo) -> dict[str, torch.Tensor]:
    """The draft's MTP module as the target checkpoint's MTP-layer tensors."""
    cfg = hf_config(info)
    require(
        draft.hparams.get("block") == "deepseek_v3" and cfg is not None,
        "mtp: the target's MTP naming exists for DeepSeek-V3 targets (block deepseek_v3); "
        f"this draft has a {draft.hparams.get('block')!r} block, which no checkpoint holds",
    )
    prefix = f"model.layers.{cfg.num_hidden_layers}."
    out: dict[str, torch.Tensor] = {}
    for name, value in draft.state_dict().items():
        if name == "block.mlp.experts.gate_up_proj":  # [E, 2I, d]: gate rows, then up rows
            for e, fused in enumerate(value):
                gate, up = fused.chunk(2, dim=0)
                out[f"{prefix}mlp.experts.{e}.gate_proj.weight"] = gate
                out[f"{prefix}mlp.experts.{e}.up_proj.weight"] = up
        elif name == "block.mlp.experts.down_proj":  # [E, d, I]
            for e, down in enumerate(value):
                out[f"{prefix}mlp.experts.{e}.down_proj.weight"] = down
        elif name.startswith("block."):
            out[prefix + name.removeprefix("block.")] = value
        elif name.startswith("shared_head_norm."):
            out[prefix + name.replace("shared_head_norm.", "shared_head.norm.")] = value
        else:  # enorm, hnorm, eh_proj
            out[prefix + name] = value
    dtype = out[prefix + "eh_proj.weight"].dtype
    out[prefix + "embed_tokens.weight"] = info.embed_tokens.detach().to(dtype)
    out[prefix + "shared_head.head.weight"] = info.lm_head.detach().to(dtype)
    return out


@register_format(
    "mtp",
    "mtp",  # export only: drafts/mtp_import.py reads the released layer as a target's module
    loaded_by="the target checkpoint itself: DeepSeek-V3's `model.layers.61.*`; vLLM "
    "`method: deepseek_mtp`",
    verified="none on CPU (speculators' MTP converter reads Qwen3-Next-style `mtp.*` names, not "
    "DeepSeek's): read back by `drafts/mtp_import.py`, exact",
)
def export_mtp(draft: Draft, info: TargetInfo, out: Path, verifier: str, k: int) -> Path:
    cfg = hf_config(info)
    tensors = mtp_tensors(draft, info)
    config = cfg.to_dict()
    config.pop("quantization_config", None)  # the layer is written unquantised
    note = (
        f"MTP layer {cfg.num_hidden_layers} of {verifier}, fine-tuned by specbench: replace "
        "that layer's tensors in the target checkpoint with model.safetensors, or serve this "
        "folder as a deepseek_mtp draft.\n"
    )
    return write_checkpoint(out, config, tensors, extra={"README.md": note})
