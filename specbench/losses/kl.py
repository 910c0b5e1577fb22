"""``kl``: forward KL ``KL(p̃‖q)`` (SPEC §3), the standard draft-training loss."""

from __future__ import annotations

from torch import Tensor

from .core import Rows, position_mean
from .registry import register_loss
from .rowstats import Request


@register_loss("kl", needs=Request(kl=True))
def kl(rows: Rows, weight: Tensor) -> Tensor:
    """Forward KL ``Σ p̃ log(p̃ / q)``; gradient w.r.t. the logits ``q − p̃``.

    ``p̃ = p / Σp`` is the target renormalised over the draft vocabulary.
    """
    return position_mean(rows.kl, weight, rows.count)
