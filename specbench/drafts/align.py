"""Align a draft's training forward with the target quantities it is scored against.

For each anchor ``i`` and draft step ``j = 1..K`` (convention: :mod:`specbench.drafts.base`),
step ``j`` predicts ``x_{i+1+j}`` against the target distribution ``p_{i+j}``. Training
(the loss) and evaluation (expected τ) both read these ``[N, K, ...]`` tensors. The target
log-probs are not copied out: they stay the batch's ``[B, L, V]`` tensor, read through an
``[N, K]`` index of its rows (:class:`~specbench.losses.rows.IndexedRows`), since each
batch position would be copied about K times (6.6 GiB of float32 for MEDUSA on Llama-3.1-8B
at a micro-batch of 2 × 1,152 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specbench.drafts.base import Draft
from specbench.losses.rows import IndexedRows


@dataclass
class StepTargets:
    logits: torch.Tensor  # [N, K, V] draft logits
    target_logprobs: IndexedRows  # [N, K, V] full-vocab-normalised log p, sliced
    target_argmax: torch.Tensor  # [N, K] target id of the target's argmax
    labels: torch.Tensor  # [N, K] draft-vocab id of the target token, -100 if outside
    mask: torch.Tensor  # [N, K] bool


def align(
    draft: Draft, batch: dict, k: int, t2d: torch.Tensor, generator: torch.Generator | None = None
) -> StepTargets:
    """Run the draft's training forward and gather the matching target quantities."""
    out = draft.forward_train(
        batch["features"],
        batch["input_ids"],
        batch["attention_mask"],
        k,
        generator,
        loss_mask=batch["loss_mask"],
    )
    anchors = out.anchors  # [B, A]
    b_idx = torch.arange(anchors.shape[0], device=anchors.device)[:, None, None]
    steps = torch.arange(1, k + 1, device=anchors.device)[None, None, :]
    pos = anchors[:, :, None] + steps  # position whose next-token distribution step j matches
    width = batch["input_ids"].shape[1]
    in_range = pos + 1 < width
    pos_c = pos.clamp(max=width - 1)
    nxt = (pos + 1).clamp(max=width - 1)
    mask = in_range & batch["loss_mask"][b_idx, pos_c] & batch["attention_mask"][b_idx, nxt]
    labels = t2d[batch["input_ids"][b_idx, nxt]]
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    logprobs = batch["logprobs"]  # [B, L, V]
    rows = b_idx * logprobs.shape[1] + pos_c  # [B, A, K] row of logprobs as [B·L, V]
    return StepTargets(
        logits=flat(out.logits),
        target_logprobs=IndexedRows(logprobs.reshape(-1, logprobs.shape[-1]), flat(rows)),
        target_argmax=flat(batch["target_argmax"][b_idx, pos_c]),
        labels=flat(labels),
        mask=flat(mask),
    )


def usable_k(draft: Draft, k: int) -> int:
    """``k`` capped at what the architecture can draft (heads, stages, block − 1)."""
    return k if draft.max_k is None else min(k, draft.max_k)


def training_k(draft: Draft, k: int) -> int:
    """The K a draft trains at: its architecture's own (``Draft.train_k``) or ``k``, capped."""
    return usable_k(draft, k if draft.train_k is None else draft.train_k)
