"""``tvdpp``: TVD++ (Goel et al. 2024), TV's policy gradient with a normalised advantage."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from .core import Rows, global_position_mean, position_mean
from .registry import register_loss
from .rowstats import AlphaOn, alpha_request


@register_loss("tvdpp", needs=lambda prm: alpha_request(prm, alpha=False, pg=True))
def tvdpp(
    rows: Rows,
    weight: Tensor,
    *,
    scope: Literal["position", "token"] = "position",
    alpha_on: AlphaOn = "p",
    eps: float = 1e-6,
) -> Tensor:
    """``−E_{v∼q}[sg(r̂_v)·log q_v]`` with ``r = 1{a > q}`` and the normalised advantage
    ``r̂ = (r − μ)/max(σ, eps)``.

    ``μ``, ``σ`` are the mean and standard deviation of the reward: over ``v ∼ q`` and all
    valid rows of the position, pooled over the loss's data-parallel ``group`` if it has one
    (``scope=position``, the batch normalisation of policy-gradient practice:
    ``μ = mean_n S_n``, ``σ² = μ(1 − μ)``), or per row
    (``scope=token``: ``μ = S``, ``σ² = S(1 − S)``), with ``S = E_q[r]``.

    The expectation over ``q`` is exact (a sum over the vocabulary), so the baseline ``μ``
    cancels in the gradient: ``∇ = −q ⊙ (r − S)/σ = ∇TV / σ``; the value is
    ``−(Σ q r log q − μ Σ q log q)/σ``. Only the gradient is meaningful (it is a surrogate).
    """
    s = rows.pg_s.detach()
    mu = global_position_mean(s, rows.mask, rows.group).expand_as(s) if scope == "position" else s
    sigma = (mu * (1 - mu)).clamp_min(0).sqrt().clamp_min(eps)
    per_row = -(rows.pg_r - mu * rows.pg_1) / sigma
    return position_mean(per_row, weight, rows.count)
