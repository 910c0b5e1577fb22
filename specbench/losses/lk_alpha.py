"""``lk_alpha``: the LK paper's ``L^α = −log α`` (α as in :mod:`specbench.losses.tv`)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .core import Rows, allreduce_sum, allreduce_sum_grad, position_mean
from .registry import register_loss
from .rowstats import AlphaOn, alpha_request


@register_loss("lk_alpha", needs=alpha_request)
def lk_alpha(
    rows: Rows,
    weight: Tensor,
    *,
    reduce: Literal["token", "batch"] = "token",
    alpha_on: AlphaOn = "p",
    eps: float = 1e-6,
) -> Tensor:
    """``mean_n −log(α_n + eps)`` (``reduce=token``) or ``−log(ᾱ_k + eps)`` (``reduce=batch``).

    ``ᾱ_k = Σ_n w·α / Σ_n 1`` over the valid rows of position ``k``, pooled (numerator and
    denominator all-reduced, like L^λ's ᾱ) over the ranks of the loss's data-parallel
    ``group`` if it has one (:func:`~specbench.losses.core.build`). Its gradient reaching
    this rank is then ``W`` times this rank's share, so that DDP's average over ``W`` ranks
    is the gradient of ``−log ᾱ_k`` over the global batch. A position with no valid row
    anywhere adds 0.
    """
    if reduce == "token":
        return position_mean(-torch.log(rows.alpha + eps), weight, rows.count)
    total = allreduce_sum_grad((weight * rows.alpha).sum(0), rows.group)
    count = allreduce_sum(rows.count, rows.group)
    valid = count > 0
    mean_alpha = torch.where(valid, total / count.clamp_min(1), 1.0)
    return torch.where(valid, -torch.log(mean_alpha + eps), 0.0)
