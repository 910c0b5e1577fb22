"""Position weightings and block terms (SPEC §3) that compose with any base loss via ``+``.

All of them read ``q_k(y_k) = exp(logq_y)``, the draft probability of the target-generated
token at block position ``k``. A valid position whose label is not in the draft vocabulary
(−100) cannot be accepted: its ``q_k(y_k)`` counts as 0. For ``chain`` and ``focal`` a
masked position counts as 0 too, which ends the accepted prefix there; ``dpace`` passes over
masked positions instead (see there). A *block* is one row ``n`` (``K`` draft positions);
block means are over blocks with at least one valid position.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .core import Rows
from .registry import register_loss
from .rowstats import Request


def suffix_survival(log_q: Tensor, keep: Tensor | None = None) -> Tensor:
    """``W_j = Σ_{m≥j} Π_{i≤m} q_i`` along the last dim, from ``log q`` (may be −inf); with
    ``keep`` (bool, same shape) the sum runs over the kept ``m`` only.

    This is ``∂/∂log q_j`` of ``Σ_k Π_{i≤k} q_i`` (the chain reward) and, on ``q̃``, the
    D-PACE weight.
    """
    prefix = torch.exp(torch.cumsum(log_q, dim=-1))
    if keep is not None:
        prefix = torch.where(keep, prefix, 0.0)
    return prefix.flip(-1).cumsum(-1).flip(-1)


def _log_q_label(rows: Rows) -> Tensor:
    """``log q_k(y_k)``, −inf where the position is masked out or has no draft-vocab label."""
    return torch.where(rows.label_ok, rows.logq_y, -math.inf)


def _blocks(rows: Rows) -> Tensor:
    return rows.mask.any(-1).sum().clamp_min(1).to(rows.logq_y.dtype)


@register_loss("decay", kind="position")
def decay(k: int, *, gamma: float = 7.0) -> Tensor:
    """Block positional decay ``w_k = exp(−(k−1)/γ_b)``; replaces the head decay."""
    return torch.exp(-torch.arange(k, dtype=torch.float64) / gamma)


@register_loss("dpace", kind="row", needs=Request(logq_y=True))
def dpace(rows: Rows, *, mix: float = 0.5) -> Tensor:
    """D-PACE row weights ``sg(Σ_{m≥j, m valid} Π_{i≤m} q̃_i)``, ``q̃ = mix·q(y) + (1 − mix)``.

    A masked position passes through: ``q̃ = 1`` there (the survival product runs on past
    it) and it adds no term of its own to the suffix sums; its weight is 0. This is what
    speculators 0.9.0 (``losses/utils.py: dpace_loss_decay``) and SpecForge 0.2.0
    (``algorithms/common/dflash_family_model.py: _dpace_weight``) do. (Until now specbench
    set ``q̃ = 0`` there, which zeroed the rest of the block. That is the same for a masked
    tail, a block running past the end of the response. It is not the same for an interior
    mask, such as the peers' masked anchor slot or a block spanning an unsupervised span.
    Such a mask means "not trained on", not "rejected", so the old behaviour was dropped.)
    At a valid position without a draft-vocab label ``q(y) = 0``, so ``q̃ = 1 − mix``.
    """
    q = torch.where(rows.label_ok, rows.logq_y.detach().exp(), 0.0)
    q_mix = torch.where(rows.mask, mix * q + (1 - mix), 1.0)
    return torch.where(rows.mask, suffix_survival(torch.log(q_mix), rows.mask), 0.0)


@register_loss("focal", kind="term", needs=Request(logq_y=True, greedy=True))
def focal(rows: Rows, *, alpha: float = 0.3) -> Tensor:
    """First-error focal: ``α_f · CE`` at ``j*``, the first valid block position whose
    greedy (argmax) draft token is not the label; nothing for a block with no error.

    A label outside the draft vocabulary counts as an error (greedy decoding would be
    rejected there) but has no CE, so that block adds nothing. Mean over blocks.
    """
    wrong = rows.mask & ~rows.greedy_ok
    first = wrong & (torch.cumsum(wrong.to(torch.int32), dim=-1) == 1)
    hit = first & rows.label_ok
    ce = torch.where(hit, -rows.logq_y, 0.0).sum()
    return alpha * ce / _blocks(rows)


@register_loss("chain", kind="term", needs=Request(logq_y=True))
def chain(rows: Rows, *, alpha: float = 40.0) -> Tensor:
    """Chain reward ``−α_c·R``, ``R = mean_blocks (1/K) Σ_k Π_{j≤k} q_j(y_j)``, a
    differentiable surrogate of the expected accepted length (``exp(cumsum(log q))``)."""
    prefix = torch.exp(torch.cumsum(_log_q_label(rows), dim=-1))
    reward = prefix.mean(-1).sum() / _blocks(rows)
    return -alpha * reward
