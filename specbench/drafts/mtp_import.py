"""Initialise the ``mtp`` draft from a released DeepSeek-V3 multi-token-prediction layer.

DeepSeek-V3 checkpoints store the MTP module as one extra decoder layer, index
``N = num_hidden_layers`` (61 for V3), under ``model.layers.N.``. The mapping into the draft::

    enorm.weight, hnorm.weight, eh_proj.weight      -> enorm / hnorm / eh_proj (same names)
    shared_head.norm.weight                         -> shared_head_norm.weight
    input_layernorm, post_attention_layernorm,
    self_attn.* (MLA: q_a_proj, q_a_layernorm, q_b_proj, kv_a_proj_with_mqa,
    kv_a_layernorm, kv_b_proj, o_proj), mlp.gate.weight,
    mlp.gate.e_score_correction_bias, mlp.shared_experts.*      -> block.<same name>
    mlp.experts.{e}.gate_proj/up_proj.weight        -> block.mlp.experts.gate_up_proj[e]
                                                       = [gate; up] (transformers' fused layout)
    mlp.experts.{e}.down_proj.weight                -> block.mlp.experts.down_proj[e]
    embed_tokens.weight, shared_head.head.weight    -> not imported: copies of the target's
                                                       embedding and head, which the draft
                                                       already uses (frozen; head rows of the
                                                       draft vocabulary)

FP8 checkpoints (``weight`` + ``weight_scale_inv``, one scale per 128×128 block) are
dequantised to float. With the dense ``llama`` block only the names that exist with the same
shape are imported (``enorm``, ``hnorm``, ``eh_proj``, the shared-head norm and the block's two
layer norms; never MLA attention weights into a GQA attention, even where shapes agree); the
report lists what was skipped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from specbench.targets.quantized import dequantize_fp8_weight

SHARED_WITH_TARGET = ("embed_tokens.", "shared_head.head.")
TOP_LEVEL = ("enorm.", "hnorm.", "eh_proj.")


@dataclass
class ImportReport:
    """Which draft tensors were set from the checkpoint, and which checkpoint tensors were not."""

    layer: int
    imported: list[str] = field(default_factory=list)  # draft state-dict names
    skipped: list[str] = field(default_factory=list)  # checkpoint names (after renaming)


def mtp_layer_index(state_dict: dict[str, torch.Tensor]) -> int:
    """The decoder-layer index that holds the MTP module (the one with an ``eh_proj``)."""
    found = [
        int(m[1])
        for k in state_dict
        if (m := re.fullmatch(r"model\.layers\.(\d+)\.eh_proj\.weight", k))
    ]
    if not found:
        raise ValueError("no 'model.layers.N.eh_proj.weight' in the MTP state dict")
    return min(found)  # V3 ships one MTP layer; with several, the first one drafts


def released_to_draft(
    state_dict: dict[str, torch.Tensor], layer: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename (and fuse experts of) layer ``layer``'s tensors into draft state-dict names.

    Returns the mapped tensors and the checkpoint names deliberately left out.
    """
    prefix = f"model.layers.{layer}."
    mapped: dict[str, torch.Tensor] = {}
    left_out: list[str] = []
    experts: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in state_dict.items():
        if not key.startswith(prefix) or key.endswith("_scale_inv"):
            continue
        name = key[len(prefix) :]
        if key + "_scale_inv" in state_dict:  # fp8 weight with its block scales
            tensor = dequantize_fp8_weight(
                tensor, state_dict[key + "_scale_inv"], (128, 128), torch.float32
            )
        if name.startswith(SHARED_WITH_TARGET):
            left_out.append(name)
        elif m := re.fullmatch(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", name):
            experts[int(m[1])][m[2]] = tensor
        elif name.startswith(TOP_LEVEL):
            mapped[name] = tensor
        elif name.startswith("shared_head.norm."):
            mapped[name.replace("shared_head.norm.", "shared_head_norm.")] = tensor
        else:
            mapped["block." + name] = tensor
    if experts:  # transformers stores routed experts fused: [E, 2I, d] (gate; up), [E, d, I]
        order = sorted(experts)
        if order != list(range(len(order))):
            raise ValueError(f"MTP experts are not numbered 0..E-1: {order[:5]}...")
        mapped["block.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([experts[e]["gate"], experts[e]["up"]], dim=0) for e in order]
        )
        mapped["block.mlp.experts.down_proj"] = torch.stack([experts[e]["down"] for e in order])
    return mapped, left_out


@torch.no_grad()
def import_mtp_state_dict(draft: nn.Module, state_dict: dict[str, torch.Tensor]) -> ImportReport:
    """Copy every released MTP tensor that has a same-named, same-shaped slot in ``draft``."""
    layer = mtp_layer_index(state_dict)
    mapped, left_out = released_to_draft(state_dict, layer)
    own = draft.state_dict()  # tensors share storage with the draft's parameters/buffers
    report = ImportReport(layer=layer, skipped=list(left_out))
    # MLA weights mean nothing to a GQA attention even where shapes agree (e.g. o_proj)
    mla = "self_attn.kv_a_proj_with_mqa.weight"
    same_attention = ("block." + mla in mapped) == ("block." + mla in own)
    for name, tensor in mapped.items():
        if name.startswith("block.self_attn.") and not same_attention:
            report.skipped.append(name)
        elif name in own and own[name].shape == tensor.shape:
            own[name].copy_(tensor.to(own[name].dtype))
            report.imported.append(name)
        else:
            report.skipped.append(name)
    return report
