"""MEDUSA-1 heads (Cai et al. 2024) on the target's last hidden state.

Head ``k = 1..K`` at anchor ``i`` (0-indexed ``k-1`` below) predicts ``x_{i+1+k}``::

    r_k      = h + SiLU(W_k h + b_k)        W_k zero-initialised (the block starts as identity
                                             up to the bias, as in the MEDUSA code), ``num_layers``
                                             such blocks per head
    logits_k = lm_head_k(r_k)               own head over the draft vocabulary, initialised from
                                             the target head's rows

``h`` is the target's final normed hidden state (the LM-head input). Heads do not see
drafted tokens, so decoding just evaluates the first ``k`` heads at the last position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specbench.drafts.anchors import anchor_count, sample_anchors, with_first_target
from specbench.drafts.base import Draft, DraftSession, SampleFn, TrainOutput, register_draft
from specbench.drafts.layers import target_head_rows
from specbench.features import LAST
from specbench.targets.info import TargetInfo


class ResBlock(nn.Module):
    """``x + SiLU(W x + b)`` with ``W = 0`` at initialisation (bias keeps nn.Linear's init)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, d)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


@register_draft("medusa")
class Medusa(Draft):
    """MEDUSA draft. Hparams: ``num_heads`` (default 6, = max_k), ``num_layers`` residual
    blocks per head (default 1), ``train_anchors`` (positions per sequence that training
    runs the heads at, at random; None = all — heads are per-position, so a subsample is an
    unbiased, cheaper estimate of the same objective; eval mode always uses all)."""

    def __init__(
        self,
        info: TargetInfo,
        num_heads: int = 6,
        num_layers: int = 1,
        train_anchors: int | None = None,
    ) -> None:
        train_anchors = anchor_count(train_anchors)
        super().__init__(
            info, num_heads=int(num_heads), num_layers=int(num_layers), train_anchors=train_anchors
        )
        self.max_k = int(num_heads)
        self.train_anchors = train_anchors
        d = info.hidden_size
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(d) for _ in range(num_layers)]) for _ in range(num_heads)
        )
        self.heads = nn.ModuleList(
            nn.Linear(d, info.draft_vocab_size, bias=False) for _ in range(num_heads)
        )
        rows = target_head_rows(info)
        with torch.no_grad():
            for head in self.heads:
                head.weight.copy_(rows)

    def head_logits(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Logits ``[..., k, V_draft]`` of the first ``k`` heads at ``h [..., d]``.

        One residual block + head per step: head ``j`` (0-based) predicts ``x_{i+2+j}``.
        """
        self.check_k(k)
        if k == 0:
            return h.new_empty(*h.shape[:-1], 0, self.info.draft_vocab_size)
        return torch.stack([self.heads[j](self.blocks[j](h)) for j in range(k)], dim=-2)

    def forward_train(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> TrainOutput:
        B, L = input_ids.shape
        h = features[..., LAST, :].to(self.heads[0].weight.dtype)
        if self.training and self.train_anchors is not None:
            eligible = with_first_target(attention_mask.bool())
            anchors = sample_anchors(eligible, self.train_anchors, generator)
            h = h.gather(1, anchors[..., None].expand(-1, -1, h.shape[-1]))
        else:
            anchors = torch.arange(L, device=input_ids.device).expand(B, L)
        return TrainOutput(self.head_logits(h, k), anchors)

    def start_session(self) -> MedusaSession:
        return MedusaSession(self)

    def flops_per_step(self) -> float:
        """One draft step evaluates one head."""
        return 2.0 * sum(p.numel() for p in self.parameters()) / self.max_k


class MedusaSession(DraftSession):
    """Only the last verified position's hidden state matters."""

    def __init__(self, draft: Medusa) -> None:
        self.draft = draft
        self.last: torch.Tensor | None = None

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        if next_tokens.numel():
            self.last = features[-1, LAST]

    @torch.no_grad()
    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        if self.last is None:
            raise RuntimeError("propose() before any extend()")
        h = self.last.to(self.draft.heads[0].weight.dtype)
        logits = self.draft.head_logits(h, k)  # [k, V_draft]
        ids = [int(sample_fn(row)) for row in logits]
        return torch.tensor(ids, dtype=torch.long, device=logits.device), logits
