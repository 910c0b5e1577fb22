"""DeepSeek-V3 multi-token prediction (MTP) module used as a recurrent draft.

DeepSeek-V3 (§2.2) and its reference implementations (vLLM ``deepseek_mtp.py``) compute::

    g^k_i  = Block(eh_proj([enorm(emb(x_{i+k})); hnorm(g^{k-1}_i)]))   g^0_i = h^last_i
    logits = head(shared_head.norm(g^k_i))

i.e. the embedding comes *first* in the concatenation (the paper's formula writes
``[norm(h); norm(emb)]``, the released ``eh_proj`` weights are laid out ``[emb; h]``).
``h^last`` is the target's final normed hidden state, as in vLLM. The one released MTP
layer is reused autoregressively for every draft step, with EAGLE-3's training-time test
(:mod:`specbench.drafts.recurrent`).

Vocabulary: the head is the target's LM head, frozen, restricted to the draft vocabulary's
rows so that every architecture drafts over the same vocabulary (with the full vocabulary
as draft vocabulary this is exactly DeepSeek's shared head). Embedding: the target's, frozen.

Block (hparam ``block``): ``"deepseek_v3"`` is transformers' ``DeepseekV3DecoderLayer`` (MLA
attention, MoE feed-forward) built from the target's config in ``info.extra["hf_config"]``;
``"llama"`` is a dense Llama layer of the target's dimensions and RoPE (scaling included);
``"auto"`` picks deepseek_v3 for DeepSeek-V3 targets. Released weights
(``info.mtp_state_dict``) are imported by :func:`specbench.drafts.mtp_import.import_mtp_state_dict`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from specbench.drafts.base import register_draft
from specbench.drafts.layers import (
    DecoderLayer,
    KVCache,
    RMSNorm,
    Rope,
    draft_rope,
    register_vocab,
    rope_cos_sin,
    target_head_rows,
)
from specbench.drafts.mtp_import import ImportReport, import_mtp_state_dict
from specbench.drafts.recurrent import RecurrentDraft
from specbench.features import LAST
from specbench.targets.info import TargetInfo

BLOCKS = ("auto", "llama", "deepseek_v3")


def _deepseek_block(hf_config) -> tuple[nn.Module, nn.Module]:
    """transformers' DeepSeek-V3 decoder layer at index ``num_hidden_layers`` (MoE, like the
    released MTP layer) and its rotary embedding, randomly initialised."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
        DeepseekV3DecoderLayer,
        DeepseekV3RotaryEmbedding,
    )

    cfg = copy.deepcopy(hf_config)
    cfg._attn_implementation = "sdpa"  # takes our boolean masks as they are
    layer = DeepseekV3DecoderLayer(cfg, layer_idx=cfg.num_hidden_layers)
    with torch.no_grad():  # experts are allocated with torch.empty: initialise everything
        for p in layer.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, cfg.initializer_range)
    return layer, DeepseekV3RotaryEmbedding(cfg)


@register_draft("mtp")
class MTP(RecurrentDraft):
    """MTP draft. Hparams: ``block`` ("auto" | "llama" | "deepseek_v3", default "auto");
    ``intermediate_size`` of the llama block's FFN (default: the target's dense width);
    ``train_anchors`` (default None = all positions; see
    :class:`~specbench.drafts.recurrent.RecurrentDraft`); ``freeze_experts`` (deepseek_v3
    block): keep the routed experts at their (released) weights and fine-tune the rest.

    Why ``freeze_experts``: DeepSeek-V3's MTP layer holds 256 routed experts, 11.3e9 of its
    ~11.6e9 parameters. AdamW on all of them needs ~16 bytes each (fp32 weight, gradient,
    two moments): ~185 GB, more than one GPU. Frozen, they cost their 45 GB of fp32 weights
    and the ~0.35e9 trainable parameters (MLA attention, router, shared expert, ``eh_proj``,
    norms) ~6 GB of optimizer state: one 80 GB GPU."""

    max_k = None

    def __init__(
        self,
        info: TargetInfo,
        block: str = "auto",
        intermediate_size: int | None = None,
        train_anchors: int | None = None,
        freeze_experts: bool = False,
    ) -> None:
        hf_config = info.extra.get("hf_config")
        if block not in BLOCKS:
            raise ValueError(f"mtp block must be one of {BLOCKS}, got {block!r}")
        if block == "auto":
            is_ds = getattr(hf_config, "model_type", None) == "deepseek_v3"
            block = "deepseek_v3" if is_ds else "llama"
        if block == "deepseek_v3" and hf_config is None:
            raise ValueError("mtp block 'deepseek_v3' needs extra['hf_config'] (target config)")
        intermediate_size = int(intermediate_size or info.intermediate_size)
        if freeze_experts and block != "deepseek_v3":
            raise ValueError(
                "mtp freeze_experts needs the deepseek_v3 block (a dense block has none)"
            )
        super().__init__(
            info,
            train_anchors,
            block=block,
            intermediate_size=intermediate_size,
            freeze_experts=freeze_experts,
        )
        d, eps = info.hidden_size, info.rms_norm_eps
        self.enorm = RMSNorm(d, eps=eps)
        self.hnorm = RMSNorm(d, eps=eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.rotary: nn.Module | None = None  # deepseek_v3: transformers' (yarn) RoPE
        self.rope: Rope | None = None  # llama: the target's RoPE, scaling included
        if block == "deepseek_v3":
            self.block, self.rotary = _deepseek_block(hf_config)
        else:
            self.block = DecoderLayer(info, intermediate_size)
            self.rope = draft_rope(info, info.head_dim)
        self.shared_head_norm = RMSNorm(d, eps=eps)
        self.register_buffer("head_weight", target_head_rows(info), persistent=False)
        register_vocab(self, info)
        self.import_report: ImportReport | None = None
        if info.mtp_state_dict is not None:
            self.import_report = import_mtp_state_dict(self, info.mtp_state_dict)
        if freeze_experts:
            if self.import_report is None:
                raise ValueError(
                    "mtp freeze_experts keeps the released experts, but the target has no MTP "
                    "weights to import (info.mtp_state_dict is None): they would stay random"
                )
            self.block.mlp.experts.requires_grad_(False)

    def prepare(self, device: torch.device) -> None:
        """On CUDA, transformers runs the experts with ``grouped_mm``, which takes bf16 only
        (and no autocast): frozen experts are kept in bf16 there (their checkpoint values, so
        nothing changes; half of their 45 GB on DeepSeek-V3), trainable ones in float32 run
        on the per-expert loop instead, which autocast covers."""
        super().prepare(device)
        experts = getattr(getattr(self.block, "mlp", None), "experts", None)
        if experts is None or torch.device(device).type != "cuda":
            return
        if not any(p.requires_grad for p in experts.parameters()):
            for module in experts.modules():  # new frozen parameters (``Module.to`` would
                for name, p in module.named_parameters(recurse=False):  # swap them in place)
                    module._parameters[name] = nn.Parameter(p.detach().bfloat16(), False)
        else:
            experts.config._experts_implementation = "eager"

    def initial_hidden(self, features: torch.Tensor) -> torch.Tensor:
        return features[..., LAST, :]

    def step(self, emb, hidden, positions, mask, cache: KVCache) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(hidden)], dim=-1))
        if self.rotary is not None:  # transformers' DeepSeek layer (residuals inside)
            # transformers wants position ids [B, T]; training passes per-row ones already
            cos, sin = self.rotary(x, positions.expand(x.shape[0], -1))
            return self.block(
                x, attention_mask=mask, past_key_values=cache, position_embeddings=(cos, sin)
            )
        cos, sin = rope_cos_sin(positions, self.rope, x.dtype)
        return self.block(x, cos, sin, mask, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.shared_head_norm(hidden), self.head_weight.to(hidden.dtype))

    def flops_per_step(self) -> float:
        """2 × parameters touched: routed experts count at top-k / n_experts; plus the head."""
        total = sum(p.numel() for p in self.parameters())
        experts = getattr(getattr(self.block, "mlp", None), "experts", None)
        if experts is not None and hasattr(experts, "gate_up_proj"):
            router = self.block.mlp.gate
            frac = router.top_k / router.num_experts
            expert_params = experts.gate_up_proj.numel() + experts.down_proj.numel()
            total -= (1.0 - frac) * expert_params
        return 2.0 * (total + self.head_weight.numel())
