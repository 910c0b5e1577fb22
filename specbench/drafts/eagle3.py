"""EAGLE-3 (Li et al. 2025): one decoder layer over [emb(token); fused target features].

    h0_i   = fc([h^low_i; h^mid_i; h^high_i])                 3d → d
    a      = Attn([RMSNorm(emb(x_{i+k})); RMSNorm(g^{k-1}_i)])  q/k/v from 2d
    g^k_i  = g^{k-1}_i + a;  g^k_i += MLP(RMSNorm(g^k_i))        (g^0 = h0, residual on hidden)
    logits = lm_head(RMSNorm(g^k_i))                          over the draft vocabulary

The token embedding is the target's (frozen, not saved); ``lm_head`` is trainable and starts
from the target head's rows of the draft vocabulary. Recurrence and training-time test: see
:mod:`specbench.drafts.recurrent`. As in SpecForge's Llama EAGLE-3 draft, the layer has the
target's hidden size, head counts, head width (the config's ``head_dim``) and RMSNorm eps;
its RoPE is the target's, scaling included (llama3, yarn: SpecForge copies ``rope_scaling``
into the draft config, and vLLM / SGLang serve the draft with it).
"""

from __future__ import annotations

import torch
from torch import nn

from specbench.drafts.base import register_draft
from specbench.drafts.layers import (
    Attention,
    KVCache,
    RMSNorm,
    SwiGLU,
    draft_rope,
    register_vocab,
    rope_cos_sin,
    target_head_rows,
)
from specbench.drafts.recurrent import RecurrentDraft
from specbench.features import HIGH, LOW
from specbench.targets.info import TargetInfo


@register_draft("eagle3")
class Eagle3(RecurrentDraft):
    """EAGLE-3 draft. Hparams: ``intermediate_size`` (default: the target's dense FFN width,
    for MoE targets experts_per_token × expert width); ``train_anchors`` (default None = all
    positions; see :class:`~specbench.drafts.recurrent.RecurrentDraft`); ``aux_layers``: the
    three target layers it fuses (default None: the run's low, mid and high; an imported
    checkpoint may read others)."""

    max_k = None  # recurrent: any number of steps
    reference_vocab = "truncated"  # EAGLE-3 drafts over a frequent-token subset (d2t/t2d)

    def __init__(
        self,
        info: TargetInfo,
        intermediate_size: int | None = None,
        train_anchors: int | None = None,
        aux_layers: list[int] | None = None,
    ) -> None:
        intermediate_size = int(intermediate_size or info.intermediate_size)
        super().__init__(info, train_anchors, intermediate_size=intermediate_size)
        self.aux_layers = None if aux_layers is None else [int(i) for i in aux_layers]
        if self.aux_layers is not None and len(self.aux_layers) != 3:
            raise ValueError(f"eagle3: aux_layers are three target layers, got {aux_layers}")
        d, eps = info.hidden_size, info.rms_norm_eps
        self.head_dim = info.head_dim
        self.rope = draft_rope(info, self.head_dim)
        self.fc = nn.Linear(3 * d, d, bias=False)
        self.input_layernorm = RMSNorm(d, eps=eps)  # on the token embedding
        self.hidden_norm = RMSNorm(d, eps=eps)  # on the fused / previous hidden state
        self.self_attn = Attention(
            2 * d, d, info.num_attention_heads, info.num_key_value_heads, self.head_dim, eps
        )
        self.post_attention_layernorm = RMSNorm(d, eps=eps)
        self.mlp = SwiGLU(d, intermediate_size)
        self.norm = RMSNorm(d, eps=eps)
        self.lm_head = nn.Linear(d, info.draft_vocab_size, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(target_head_rows(info))
        register_vocab(self, info)

    def target_layers(self, num_hidden_layers: int) -> tuple[int, ...]:
        if self.aux_layers is None:
            return super().target_layers(num_hidden_layers)
        return (*self.aux_layers, num_hidden_layers)

    def initial_hidden(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features[..., LOW : HIGH + 1, :].flatten(-2))  # (low, mid, high)

    def step(self, emb, hidden, positions, mask, cache: KVCache) -> torch.Tensor:
        cos, sin = rope_cos_sin(positions, self.rope, hidden.dtype)
        x = torch.cat([self.input_layernorm(emb), self.hidden_norm(hidden)], dim=-1)
        hidden = hidden + self.self_attn(x, cos, sin, mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))
