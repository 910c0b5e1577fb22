"""``lk_lambda``: the LK paper's ``L^λ``, a KL → TV blend driven by the acceptance rate."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .core import Rows, global_position_mean, position_mean
from .registry import register_loss
from .rowstats import AlphaOn, alpha_request


@register_loss("lk_lambda", needs=lambda prm: alpha_request(prm, kl=True))
def lk_lambda(
    rows: Rows,
    weight: Tensor,
    *,
    eta: float = 3.0,
    lambda_scope: Literal["position", "token"] = "position",
    fixed: float | None = None,
    alpha_on: AlphaOn = "p",
) -> Tensor:
    """``L^λ = λ·KL(p̃‖q) + (1 − λ)(1 − α)`` with no gradient through ``λ``.

    ``λ = exp(−η·ᾱ_k)``, ``ᾱ_k`` the masked mean α of position ``k`` over batch × sequence,
    pooled over the loss's data-parallel ``group`` if it has one (``lambda_scope=position``);
    or per token ``λ = exp(−η·α)`` (``lambda_scope=token``); or a constant (``fixed=0.5``).
    """
    if fixed is not None:
        lam = torch.full_like(rows.alpha, fixed)
    elif lambda_scope == "position":
        mean_alpha = global_position_mean(rows.alpha, rows.mask, rows.group)  # [K]
        lam = torch.exp(-eta * mean_alpha).expand_as(rows.alpha)
    else:
        lam = torch.exp(-eta * rows.alpha.detach())
    per_row = lam * rows.kl + (1 - lam) * (1 - rows.alpha)
    return position_mean(per_row, weight, rows.count)
