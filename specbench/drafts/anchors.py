"""Training anchors: the positions a draft is trained at when it subsamples them.

Anchor ``i`` (convention: :mod:`specbench.drafts.base`) knows ``x_{i+1}``; its step ``k``
predicts ``x_{i+1+k}`` against ``p_{i+k}``. Which anchors are *eligible* is the architecture's
choice (:func:`with_first_target`, :func:`in_response`); :func:`sample_anchors` then draws
a uniform random subset of them without replacement, the same way for every architecture.
"""

from __future__ import annotations

import torch


def anchor_count(train_anchors: int | None) -> int | None:
    """The hparam ``train_anchors`` checked: a positive count, or None (every anchor)."""
    if train_anchors is None:
        return None
    if int(train_anchors) < 1:
        raise ValueError(f"train_anchors must be ≥ 1 or None, got {train_anchors}")
    return int(train_anchors)


def sample_anchors(
    eligible: torch.Tensor, num: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[B, min(num, L)]`` sorted distinct random anchors per row among ``eligible [B, L]``.

    ``num=None`` keeps every eligible position (width: the largest count of a row). Rows with
    fewer eligible positions are filled with ``L − 1``, whose targets run off the sequence:
    :func:`specbench.drafts.align.align` masks them, so the repeats count nowhere.
    """
    B, L = eligible.shape
    width = max(1, int(eligible.sum(1).max())) if num is None else min(int(num), L)
    device = generator.device if generator is not None else eligible.device
    score = torch.rand(B, L, generator=generator, device=device).to(eligible.device)
    top, idx = torch.where(eligible, score, -1.0).topk(width, dim=1)
    return torch.where(top >= 0, idx, L - 1).sort(dim=1).values


def with_first_target(valid: torch.Tensor) -> torch.Tensor:
    """Anchors whose step-1 target exists: real tokens at ``i`` and ``i + 2`` ``[B, L]``.

    Prompt positions included, as in the all-position objective (EAGLE-3's training-time
    test scores every position whose targets are response tokens), so a subsample of these
    anchors estimates that objective without bias.
    """
    ok = torch.zeros_like(valid, dtype=torch.bool)
    ok[:, :-2] = valid[:, :-2].bool() & valid[:, 2:].bool()
    return ok


def in_response(loss_mask: torch.Tensor) -> torch.Tensor:
    """Anchors whose known token ``x_{i+1}`` and first target ``x_{i+2}`` are both response
    tokens: ``loss_mask[i] ∧ loss_mask[i+1]`` (``loss_mask[i]``: ``x_{i+1}`` is a response
    token). SpecForge's DFlash trainer draws its anchors so; decoding only ever anchors at
    the last verified position, which is never inside the prompt.
    """
    ok = torch.zeros_like(loss_mask, dtype=torch.bool)
    ok[:, :-1] = loss_mask[:, :-1].bool() & loss_mask[:, 1:].bool()
    return ok
