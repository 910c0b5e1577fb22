"""What a draft may know about its target (:class:`TargetInfo`), from a model or a checkpoint."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specbench.targets.checkpoint import checkpoint_folder, tensor_index
from specbench.targets.quantized import quant_method, unquantized_numel


@dataclass
class TargetInfo:
    """What a draft may know about its target. Frozen target tensors are shared, not copied."""

    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int  # dense FFN width; for MoE targets: experts_per_token × expert_size
    rms_norm_eps: float
    rope_theta: float
    # frozen, in the checkpoint's dtype (bf16 for the hub targets: half the host and device
    # memory of a float32 copy); drafts cast what they read of them
    embed_tokens: torch.Tensor  # [target_vocab, hidden]
    lm_head: torch.Tensor  # [target_vocab, hidden]
    draft_to_target: torch.Tensor  # [draft_vocab] long: draft id -> target id
    target_flops_per_token: float = 0.0  # ≈ 2 × target parameters, for the cost ratio c
    mtp_state_dict: dict[str, torch.Tensor] | None = None  # released MTP weights, if any
    extra: dict[str, Any] = field(default_factory=dict)
    # attention head width: the config's ``head_dim`` where it has one (gpt-oss: 64, not
    # 2880 // 64 = 45; Qwen3-235B: 128, not 64; DeepSeek-V3: transformers sets it to the MLA
    # qk_rope_head_dim, 64, which SpecForge's draft config copies too), else hidden // heads
    head_dim: int | None = None
    # the target's RoPE as transformers standardises it (``rope_type``, ``rope_theta`` and the
    # scaling keys: ``factor``, ``original_max_position_embeddings``, llama3's
    # ``low/high_freq_factor``, yarn's ``beta_fast/slow``, ``mscale``…); the attention drafts
    # use it as it is. Empty = plain θ-RoPE with ``rope_theta``
    rope_parameters: dict[str, Any] = field(default_factory=dict)
    max_position_embeddings: int | None = None  # the target's context (yarn without factor)
    # where a draft built from the target's own layers (``draft_lm``'s ``init:
    # target_layers``) reads them: its checkpoint folder (also its tokenizer), or, for a model
    # in memory, ``read_tensors(keep)``: its state-dict tensors whose names pass ``keep``
    checkpoint: Path | None = None
    read_tensors: Callable[[Callable[[str], bool]], dict[str, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def draft_vocab_size(self) -> int:
        return int(self.draft_to_target.numel())


def _dense_ffn_width(cfg) -> int:
    """FFN width for a draft layer: dense width, or experts_per_token × expert width for MoE."""
    experts = getattr(cfg, "num_experts_per_tok", None) or getattr(cfg, "experts_per_token", None)
    expert_width = getattr(cfg, "moe_intermediate_size", None)
    if experts and expert_width:
        return int(experts) * int(expert_width)
    if experts and getattr(cfg, "num_local_experts", None):  # gpt-oss: experts share the width
        return int(experts) * int(cfg.intermediate_size)
    return int(cfg.intermediate_size)


def released_mtp_weights(name_or_path: str | Path, config) -> dict[str, torch.Tensor] | None:
    """The MTP layer a checkpoint ships (DeepSeek-V3: ``model.layers.{num_hidden_layers}.*``).

    transformers drops these tensors when it loads the model, so they are read from the
    checkpoint's safetensors files directly. None when the target ships no MTP module.
    """
    if not getattr(config, "num_nextn_predict_layers", 0):
        return None
    folder = checkpoint_folder(name_or_path)
    if folder is None:
        return None
    from safetensors import safe_open

    prefix = f"model.layers.{config.num_hidden_layers}."
    where = tensor_index(folder)
    files = sorted({f for k, f in where.items() if k.startswith(prefix)})
    out: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    return out or None


def target_info_from_model(
    model: nn.Module,
    draft_to_target: torch.Tensor | None = None,
    name_or_path: str | None = None,
) -> TargetInfo:
    """Describe ``model`` for draft construction; the draft vocabulary defaults to the full one.

    With ``name_or_path``, released MTP weights in the checkpoint are attached for the
    ``mtp`` draft to start from.
    """
    info = _info(
        model.config,
        model.get_input_embeddings().weight.detach(),
        model.get_output_embeddings().weight.detach(),
        draft_to_target,
        n_params=sum(p.numel() for p in model.parameters()),
        mtp=released_mtp_weights(name_or_path, model.config) if name_or_path else None,
    )

    def read(keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in model.state_dict().items() if keep(k)}

    info.read_tensors = read
    info.checkpoint = checkpoint_folder(name_or_path) if name_or_path else None
    return info


def rope_parameters(cfg) -> dict[str, Any]:
    """A copy of the config's RoPE parameters with ``rope_type`` and ``rope_theta`` filled in.

    transformers 5 keeps them in ``rope_parameters`` (``rope_scaling`` of older configs is
    folded into it when the config is read); a config object without it falls back on
    ``rope_scaling`` + ``rope_theta``. Scaled types get ``original_max_position_embeddings``
    (default: ``max_position_embeddings``), as transformers' standardisation does.
    """
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    params = copy.deepcopy(dict(params))
    if "type" in params:  # the oldest spelling of rope_type
        params.setdefault("rope_type", params.pop("type"))
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", float(getattr(cfg, "rope_theta", None) or 10000.0))
    if params["rope_type"] in ("llama3", "yarn", "longrope"):
        original = getattr(cfg, "original_max_position_embeddings", None)
        original = original or getattr(cfg, "max_position_embeddings", None)
        if original is not None:
            params.setdefault("original_max_position_embeddings", int(original))
    return params


def _info(cfg, embed, head, draft_to_target, n_params: int, mtp) -> TargetInfo:
    """The one place a :class:`TargetInfo` is assembled from a transformers config."""
    if draft_to_target is None:
        draft_to_target = torch.arange(cfg.vocab_size)
    rope = rope_parameters(cfg)
    max_positions = getattr(cfg, "max_position_embeddings", None)
    return TargetInfo(
        hidden_size=cfg.hidden_size,
        vocab_size=cfg.vocab_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=getattr(cfg, "num_key_value_heads", cfg.num_attention_heads),
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        intermediate_size=_dense_ffn_width(cfg),
        rms_norm_eps=float(getattr(cfg, "rms_norm_eps", 1e-6)),
        rope_theta=float(rope["rope_theta"]),
        rope_parameters=rope,
        max_position_embeddings=None if max_positions is None else int(max_positions),
        embed_tokens=embed,
        lm_head=head,
        draft_to_target=draft_to_target.long(),
        target_flops_per_token=2.0 * n_params,
        mtp_state_dict=mtp,
        extra={"hf_config": cfg},
    )


def target_info_from_checkpoint(
    name_or_path: str, draft_to_target: torch.Tensor | None = None
) -> TargetInfo:
    """:class:`TargetInfo` without loading the model: config, embedding and head only.

    Building a draft needs no target forward, so a 685B target costs it two vocabulary-sized
    matrices, not the whole checkpoint (online training loads the target separately, and
    under ZeRO-3 holds only a partition of it).
    """
    from safetensors import safe_open
    from transformers import AutoConfig

    folder = checkpoint_folder(name_or_path)
    if folder is None:
        raise FileNotFoundError(f"no local checkpoint for {name_or_path!r} (download it first)")
    cfg = AutoConfig.from_pretrained(folder)
    where = tensor_index(folder)

    def read(*names: str) -> torch.Tensor | None:
        for n in names:
            if n in where:
                with safe_open(str(folder / where[n]), framework="pt") as f:
                    return f.get_tensor(n)  # its own dtype: readers cast what they use
        return None

    embed = read("model.embed_tokens.weight", "model.language_model.embed_tokens.weight")
    if embed is None:
        raise KeyError(f"{name_or_path}: no embedding matrix found in the checkpoint")
    head = read("lm_head.weight")
    head = embed if head is None else head  # tied embeddings
    method, n_params = quant_method(cfg), 0
    for name in sorted(set(where.values())):
        with safe_open(str(folder / name), framework="pt") as f:
            for k in f.keys():
                n_params += unquantized_numel(method, k, f.get_slice(k).get_shape())
    info = _info(cfg, embed, head, draft_to_target, n_params, released_mtp_weights(folder, cfg))

    info.checkpoint = folder
    return info
