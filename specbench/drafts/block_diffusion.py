"""Block-diffusion drafter after DFlash (z-lab, arXiv 2602.06036): one pass drafts a block.

At anchor ``i`` the block ``[x_{i+1}, MASK × (B−1)]`` sits at positions ``i+1 .. i+B``::

    c_j   = RMSNorm(fc([h^low_j; h^mid_j; h^high_j; h^last_j]))     context, positions j ≤ i
    layer: q from the block; k, v from [c_{≤i} ; block] with the layer's own k/v projections
           (context K/V are not normed by the layer's input norm, as in DFlash), no causal
           mask inside the block; Qwen3-style per-head q/k RMSNorm (hparam ``qk_norm``)
    logits_j = head(RMSNorm(out_j))          block position j = 1..B−1 predicts x_{i+1+j}

Embedding and head are the target's, frozen (DFlash freezes both), the head restricted to the
draft vocabulary's rows; MASK is a learned embedding. Geometry as DFlash / SpecForge's DFlash
trainer: block ``B = 16`` (``max_k = 15``); training draws ``train_anchors`` (512) random
anchors per sequence among response positions (the known token ``x_{i+1}`` and the first
target are response tokens, :func:`~specbench.drafts.anchors.in_response`) and runs all their
blocks in one pass, each block seeing only its own context. In eval mode every position is
an anchor (teacher-forced expected τ must be paired across losses). Decoding caches the
context K/V per layer (they do not depend on the block) and drafts a whole block in one
forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specbench.drafts.anchors import anchor_count, in_response, sample_anchors
from specbench.drafts.base import Draft, DraftSession, SampleFn, TrainOutput, register_draft
from specbench.drafts.layers import (
    DecoderLayer,
    KVCache,
    RMSNorm,
    draft_rope,
    register_vocab,
    rope_cos_sin,
    target_head_rows,
)
from specbench.targets.info import TargetInfo


@register_draft("block_diffusion")
class BlockDiffusion(Draft):
    """Hparams: ``num_layers`` (2), ``block_size`` B (16, DFlash's; max_k = B−1 = 15),
    ``train_anchors`` (512, SpecForge's ``num_anchors``; None = every response anchor),
    ``intermediate_size`` (target's dense width), ``qk_norm`` (True)."""

    def __init__(
        self,
        info: TargetInfo,
        num_layers: int = 2,
        block_size: int = 16,
        train_anchors: int | None = 512,
        intermediate_size: int | None = None,
        qk_norm: bool = True,
    ) -> None:
        inter = int(intermediate_size or info.intermediate_size)
        train_anchors = anchor_count(train_anchors)
        super().__init__(
            info,
            num_layers=int(num_layers),
            block_size=int(block_size),
            train_anchors=train_anchors,
            intermediate_size=inter,
            qk_norm=bool(qk_norm),
        )
        if block_size < 2:
            raise ValueError("block_size must be ≥ 2 (one known token plus masks)")
        d, eps = info.hidden_size, info.rms_norm_eps
        self.block_size, self.train_anchors = int(block_size), train_anchors
        self.max_k = self.block_size - 1
        self.head_dim = info.head_dim
        self.rope = draft_rope(info, self.head_dim)
        self.fc = nn.Linear(4 * d, d, bias=False)
        self.hidden_norm = RMSNorm(d, eps=eps)
        self.layers = nn.ModuleList(DecoderLayer(info, inter, qk_norm) for _ in range(num_layers))
        self.norm = RMSNorm(d, eps=eps)
        scale = info.embed_tokens[info.draft_to_target].float().std().item()  # no full copy
        self.mask_embedding = nn.Parameter(torch.randn(d) * scale)
        self.register_buffer("head_weight", target_head_rows(info), persistent=False)
        register_vocab(self, info)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    # -- pieces ---------------------------------------------------------------------------
    def context_kv(self, features: torch.Tensor, positions: torch.Tensor):
        """Per-layer context keys/values ``[B, Hkv, T, hd]`` of target features ``[B, T, 4, d]``."""
        ctx = self.hidden_norm(self.fc(features.to(self.dtype).flatten(-2)))
        cos, sin = rope_cos_sin(positions, self.rope, ctx.dtype)
        return [layer.self_attn.project_kv(ctx, cos, sin) for layer in self.layers]

    def block_inputs(self, first: torch.Tensor) -> torch.Tensor:
        """``[..., B, d]`` embeddings of blocks ``[first, MASK, ..., MASK]``."""
        emb = F.embedding(first, self.target_embed).to(self.dtype)[..., None, :]
        masks = self.mask_embedding.expand(*first.shape, self.block_size - 1, -1)
        return torch.cat([emb, masks], dim=-2)

    def run_block(self, x, positions, context, mask) -> torch.Tensor:
        """Layers over block tokens ``x [B, T, d]``; returns draft-vocab logits ``[B, T, V]``."""
        cos, sin = rope_cos_sin(positions, self.rope, x.dtype)
        for layer, prefix in zip(self.layers, context, strict=True):
            x = layer(x, cos, sin, mask, prefix=prefix)
        return F.linear(self.norm(x), self.head_weight.to(x.dtype))

    # -- contract -------------------------------------------------------------------------
    def forward_train(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> TrainOutput:
        self.check_k(k)
        B, L = input_ids.shape
        Bs, valid = self.block_size, attention_mask.bool()
        if self.training:  # among response positions (all real tokens without a loss mask)
            eligible = in_response(valid if loss_mask is None else loss_mask.bool() & valid)
            anchors = sample_anchors(eligible, self.train_anchors, generator)  # [B, A]
        else:  # evaluation (expected τ) scores every anchor, the same ones for every loss
            anchors = torch.arange(L, device=input_ids.device).expand(B, L)
        A = anchors.shape[1]
        first = F.pad(input_ids, (0, 1)).gather(1, anchors + 1)  # x_{i+1}
        x = self.block_inputs(first).reshape(B, A * Bs, -1)
        offsets = torch.arange(Bs, device=anchors.device)
        positions = (anchors[..., None] + 1 + offsets).reshape(B, A * Bs)
        # query of block a sees context j ≤ anchor_a (real tokens) and all of block a
        ctx_pos = torch.arange(L, device=anchors.device)
        see_ctx = (ctx_pos <= anchors[..., None]) & valid[:, None, :]  # [B, A, L]
        see_ctx = see_ctx.repeat_interleave(Bs, dim=1)
        block_id = torch.arange(A, device=anchors.device).repeat_interleave(Bs)
        see_block = (block_id[:, None] == block_id[None, :]).expand(B, -1, -1)
        mask = torch.cat([see_ctx, see_block], dim=-1)[:, None]
        logits = self.run_block(x, positions, self.context_kv(features, ctx_pos), mask)
        logits = logits.view(B, A, Bs, -1)[:, :, 1 : 1 + k]
        return TrainOutput(logits, anchors)

    def start_session(self) -> BlockDiffusionSession:
        return BlockDiffusionSession(self)

    def flops_per_step(self) -> float:
        """One block pass (B tokens through the layers and head) per B−1 drafted tokens."""
        per_token = 2.0 * (sum(p.numel() for p in self.parameters()) + self.head_weight.numel())
        return per_token * self.block_size / self.max_k


class BlockDiffusionSession(DraftSession):
    """Context K/V of every verified position, per layer; the block's own K/V are never kept."""

    def __init__(self, draft: BlockDiffusion) -> None:
        self.draft = draft
        self.caches = [KVCache() for _ in draft.layers]
        self.next_token: torch.Tensor | None = None

    @torch.no_grad()
    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        n0, n = len(self.caches[0]), next_tokens.numel()
        if n == 0:
            return
        positions = torch.arange(n0, n0 + n, device=next_tokens.device)
        kvs = self.draft.context_kv(features[None], positions)
        for cache, (k, v) in zip(self.caches, kvs, strict=True):
            cache.update(k, v)
        self.next_token = next_tokens.reshape(-1)[-1]

    @torch.no_grad()
    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.draft
        if self.next_token is None:
            raise RuntimeError("propose() before any extend()")
        d.check_k(k)
        n = len(self.caches[0])  # anchor i = n − 1, block at n .. n + B − 1
        x = d.block_inputs(self.next_token.reshape(1))  # [1, B, d]
        positions = torch.arange(n, n + d.block_size, device=x.device)
        mask = torch.ones(1, 1, d.block_size, n + d.block_size, dtype=torch.bool, device=x.device)
        context = [(c.k, c.v) for c in self.caches]
        logits = d.run_block(x, positions, context, mask)[0, 1 : 1 + k]
        ids = [int(sample_fn(row)) for row in logits]  # positions sampled independently
        return torch.tensor(ids, dtype=torch.long, device=x.device), logits
