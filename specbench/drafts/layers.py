"""Building blocks shared by the attention drafts (EAGLE-3, MTP, block diffusion).

Everything works on explicit boolean attention masks (``True`` = may attend, shape
``[B, 1, T_query, T_key]``) so that training (many anchors and draft steps at once) and
decoding (one sequence, a KV cache) run the very same computation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specbench.targets.info import TargetInfo

RMSNorm = nn.RMSNorm  # x / sqrt(mean(x²) + eps) · weight, as Llama / DeepSeek / Qwen


# RoPE variants whose inverse frequencies depend on nothing but the target's parameters and
# the head width (``dynamic`` / ``longrope`` also depend on the sequence length)
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def default_inv_freq(head_dim: int, theta: float, device: torch.device | None) -> torch.Tensor:
    """Plain θ-RoPE inverse frequencies ``ω_j = θ^(−2j/hd)``, ``j = 0 … hd/2 − 1`` (float32)."""
    exponent = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    return 1.0 / theta**exponent


def scaled_inv_freq(
    params: dict[str, Any], head_dim: int, max_positions: int | None, device: torch.device | None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention factor of a scaled RoPE, from transformers'
    ``ROPE_INIT_FUNCTIONS[rope_type]`` given the target's parameters and our ``head_dim``.

    - ``linear``: ``ω_j / s``;
    - ``llama3``: ``ω_j`` for wavelengths ``2π/ω_j < L₀/β_high``, ``ω_j / s`` above
      ``L₀/β_low``, between them ``(1 − μ)·ω_j/s + μ·ω_j`` with
      ``μ = (L₀/λ_j − β_low)/(β_high − β_low)`` (``L₀`` = original context);
    - ``yarn``: ``ω_j·(1 − r_j)/s + ω_j·r_j`` with ``r_j`` = 1 − the linear ramp between the
      correction dimensions of β_fast and β_slow rotations over ``L₀``; attention factor
      ``m = 0.1·ln s + 1`` (or ``m(s, mscale)/m(s, mscale_all_dim)``), which multiplies
      cos and sin, so ``q·k`` scales by ``m²``.
    """
    from transformers import PretrainedConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = PretrainedConfig()
    config.head_dim = head_dim  # the draft's; the functions read hidden/heads only without it
    config.hidden_size, config.num_attention_heads = head_dim, 1
    config.max_position_embeddings = max_positions
    config.rope_parameters = copy.deepcopy(params)
    inv_freq, factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, device)
    return inv_freq.float(), float(factor)


@dataclass(eq=False)
class Rope:
    """The target's RoPE at a draft's head width: ``params`` are the target's rope
    parameters (``rope_type``, ``rope_theta``, ``factor`` …), ``max_positions`` its context.

    Tables are computed on first use on each device and kept (a plain attribute, so neither
    saved nor cast by ``Module.to``); they are float32 whatever the draft's dtype.
    """

    params: dict[str, Any]
    head_dim: int
    max_positions: int | None = None
    _tables: dict[torch.device, tuple[torch.Tensor, float]] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        kind = self.params.get("rope_type", "default")
        if kind not in ROPE_TYPES or set(self.params) & {"full_attention", "sliding_attention"}:
            raise ValueError(
                f"the target's RoPE {kind!r} is not supported by the attention drafts "
                f"(supported: {', '.join(ROPE_TYPES)})"
            )
        partial = float(self.params.get("partial_rotary_factor", 1.0))
        if partial != 1.0:
            raise ValueError(f"partial_rotary_factor {partial}: the drafts rotate whole heads")

    def inv_freq(self, device: torch.device) -> tuple[torch.Tensor, float]:
        """``(ω [hd/2] float32 on device, attention factor)``."""
        if device not in self._tables:
            if self.params.get("rope_type", "default") == "default":
                theta = float(self.params["rope_theta"])
                self._tables[device] = default_inv_freq(self.head_dim, theta, device), 1.0
            else:
                self._tables[device] = scaled_inv_freq(
                    self.params, self.head_dim, self.max_positions, device
                )
        return self._tables[device]


def draft_rope(info: TargetInfo, head_dim: int) -> Rope:
    """The RoPE of the target described by ``info``, at the draft's ``head_dim``; a target
    without rope parameters (hand-built ``info``) gets plain θ-RoPE with ``info.rope_theta``."""
    params = dict(info.rope_parameters) or {"rope_type": "default"}
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", info.rope_theta)
    return Rope(params, head_dim, info.max_position_embeddings)


def rope_cos_sin(
    positions: torch.Tensor, rope: Rope, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama ("rotate half") RoPE tables ``[..., T, hd]`` at integer ``positions [..., T]``
    (``[T]`` for a shared layout, ``[B, T]`` for per-row positions):
    ``cos = m·cos(t·[ω; ω])``, ``sin = m·sin(t·[ω; ω])`` with ``m`` the attention factor."""
    inv_freq, factor = rope.inv_freq(positions.device)
    angles = positions.float()[..., None] * inv_freq  # [..., T, hd/2]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos(), angles.sin()
    if factor != 1.0:
        cos, sin = cos * factor, sin * factor
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, hd]``; ``cos``/``sin`` are ``[T, hd]`` or ``[B, T, hd]``."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache:
    """Keys and values of one attention layer, appended along the sequence axis (dim -2).

    Duck-types ``update`` of transformers' caches, so the same object also serves
    transformers' DeepSeek-V3 layer (which caches its compressed MLA latents instead).
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int = 0, cache_kwargs=None):
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)
        self.k, self.v = k, v
        return k, v

    def crop(self, n: int) -> None:
        """Forget everything after the first ``n`` positions (drops a proposal's K/V)."""
        if self.k is not None:
            self.k, self.v = self.k[..., :n, :], self.v[..., :n, :]


class Attention(nn.Module):
    """Grouped-query attention with RoPE.

    ``in_dim`` may exceed ``hidden`` (EAGLE-3 projects [emb; hidden] of width 2d to q/k/v);
    ``qk_norm`` adds Qwen3's per-head RMSNorm on q and k (used by the DFlash drafter);
    ``prefix`` = (k, v) are extra keys/values placed before this call's own (DFlash context).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        eps: float,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(in_dim, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(in_dim, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(in_dim, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, eps=eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], n, self.head_dim)  # [B, T, n, hd]

    def project_kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated keys and values ``[B, Hkv, T, hd]`` of inputs ``x [B, T, in_dim]``."""
        k = self.k_norm(self._heads(self.k_proj(x), self.n_kv_heads)).transpose(1, 2)
        v = self._heads(self.v_proj(x), self.n_kv_heads).transpose(1, 2)
        return apply_rope(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        q = self.q_norm(self._heads(self.q_proj(x), self.n_heads)).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k, v = self.project_kv(x, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        if prefix is not None:
            k, v = torch.cat([prefix[0], k], dim=-2), torch.cat([prefix[1], v], dim=-2)
        # softmax(q kᵀ / √hd + mask) v, with kv heads shared by groups of query heads
        if q.device.type in REPEAT_KV_DEVICES:
            k, v = repeat_kv(k, self.n_heads), repeat_kv(v, self.n_heads)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).flatten(-2))


# Devices where the kv-head groups are repeated out rather than passed as ``enable_gqa``:
# with a mask, CUDA runs GQA only on the math kernel, which keeps [B, H, T, S] fp32
# probabilities per call (4 GiB per EAGLE-3 TTT step on Llama-3.1-8B at 4 × 1,152 tokens);
# repeated K/V take the memory-efficient kernel (one [B, H, S, hd] copy of K and V instead).
# On a CPU ``enable_gqa`` stays: repeating is no faster there (1.03x the time with one
# thread, 1.13x with two: ``python -m benchmarks.gqa_bench``), and CPU results stay as they were.
REPEAT_KV_DEVICES = {"cuda"}


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, Hkv, S, hd]`` → ``[B, n_heads, S, hd]``: query head ``h`` reads kv head
    ``h // (n_heads / Hkv)``, as ``enable_gqa`` (and transformers' ``repeat_kv``) pair them."""
    groups = n_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


class SwiGLU(nn.Module):
    """Llama feed-forward: down(SiLU(gate(x)) ⊙ up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm Llama/Qwen3 decoder layer (module names as in transformers)."""

    def __init__(self, info: TargetInfo, intermediate: int, qk_norm: bool = False) -> None:
        super().__init__()
        d, eps = info.hidden_size, info.rms_norm_eps
        hd = info.head_dim
        self.input_layernorm = RMSNorm(d, eps=eps)
        self.self_attn = Attention(
            d, d, info.num_attention_heads, info.num_key_value_heads, hd, eps, qk_norm
        )
        self.post_attention_layernorm = RMSNorm(d, eps=eps)
        self.mlp = SwiGLU(d, intermediate)

    def forward(self, x, cos, sin, mask, cache=None, prefix=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, prefix)
        return x + self.mlp(self.post_attention_layernorm(x))


def ttt_mask(valid: torch.Tensor, step: int, anchors: torch.Tensor | None = None) -> torch.Tensor:
    """Training-time-test attention mask ``[B, 1, A, L + (step−1)·A]`` for draft step ``step``.

    ``anchors [B, A]`` are the query positions (default: all ``L`` positions, ``A = L``).
    Keys are laid out step by step: ``[step-1 keys of positions 0..L-1, step-2 keys of the A
    anchors, ...]``. The query of an anchor ``i`` sees step-1 keys ``j ≤ i`` (causal, real
    tokens only; its own key always, so padded rows never see nothing) and, of steps
    2..step, only its own key: the diagonal is by anchor slot, so repeated anchors (padding)
    never see each other.
    """
    B, L = valid.shape
    idx = torch.arange(L, device=valid.device)
    if anchors is None:
        anchors = idx.expand(B, L)
    own = idx == anchors[..., None]  # [B, A, L]
    first = ((idx <= anchors[..., None]) & valid[:, None, :]) | own
    A = anchors.shape[1]
    eye = torch.eye(A, dtype=torch.bool, device=valid.device).expand(B, A, A)
    return torch.cat([first] + [eye] * (step - 1), dim=-1)[:, None]


def register_vocab(module: nn.Module, info: TargetInfo, embedding: bool = True) -> None:
    """Non-persistent (never saved) buffers for the frozen target embedding and vocab maps.

    ``d2t[draft id] = target id``; ``t2d[target id] = draft id``, or ``V_draft`` for target
    tokens outside the draft vocabulary. The embedding buffer shares the target's storage.
    """
    d2t = info.draft_to_target.long()
    t2d = torch.full((info.vocab_size,), d2t.numel(), dtype=torch.long, device=d2t.device)
    t2d[d2t] = torch.arange(d2t.numel(), device=d2t.device)
    if embedding:
        module.register_buffer("target_embed", info.embed_tokens.detach(), persistent=False)
    module.register_buffer("d2t", d2t, persistent=False)
    module.register_buffer("t2d", t2d, persistent=False)


def target_head_rows(info: TargetInfo) -> torch.Tensor:
    """The target LM head restricted to the draft vocabulary, ``[V_draft, d]`` float32 copy."""
    return info.lm_head.detach()[info.draft_to_target.to(info.lm_head.device)].float().clone()
