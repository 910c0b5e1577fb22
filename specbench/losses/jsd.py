"""``jsd``: Jensen–Shannon divergence between ``p̃`` and ``q`` (symmetric, ``≤ log 2``)."""

from __future__ import annotations

from torch import Tensor

from .core import Rows, position_mean
from .registry import register_loss
from .rowstats import Request


@register_loss("jsd", needs=Request(jsd=True))
def jsd(rows: Rows, weight: Tensor) -> Tensor:
    """``½ KL(p̃‖m) + ½ KL(q‖m)`` with ``m = (p̃ + q)/2``; gradient w.r.t. the logits
    ``½ q ⊙ (log(q/m) − KL(q‖m))``."""
    return position_mean(rows.jsd, weight, rows.count)
