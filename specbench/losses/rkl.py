"""``rkl``: reverse KL ``KL(q‖p̃)``, the mode-seeking divergence."""

from __future__ import annotations

from torch import Tensor

from .core import Rows, position_mean
from .registry import register_loss
from .rowstats import Request


@register_loss("rkl", needs=Request(rkl=True))
def rkl(rows: Rows, weight: Tensor) -> Tensor:
    """Reverse KL ``Σ q log(q / p̃)``; gradient w.r.t. the logits ``q ⊙ (log(q/p̃) − KL(q‖p̃))``.

    Target log-probs are floored at ``−10⁴``: draft mass on a token the target never emits
    costs ``≈ 10⁴`` per unit of probability instead of ``+∞``.
    """
    return position_mean(rows.rkl, weight, rows.count)
