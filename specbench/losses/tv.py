"""``tv``: total variation ``1 − α`` (Leviathan et al.; the LK paper's baseline).

``α = Σ min(a, q)`` with ``a = p``, the original target probabilities restricted to the draft
vocabulary (default: tokens outside it can never be accepted), or ``a = p̃``
(``alpha_on=p_tilde``).
"""

from __future__ import annotations

from torch import Tensor

from .core import Rows, position_mean
from .registry import register_loss
from .rowstats import AlphaOn, alpha_request


@register_loss("tv", needs=alpha_request)
def tv(rows: Rows, weight: Tensor, *, alpha_on: AlphaOn = "p") -> Tensor:
    """Total variation ``1 − α``; gradient w.r.t. the logits ``−q ⊙ (r − S)``,
    ``r = 1{a > q}``, ``S = Σ q r``."""
    return position_mean(1 - rows.alpha, weight, rows.count)
