"""``ce``: cross-entropy on the target-generated token (hard label; DFlash's default)."""

from __future__ import annotations

from torch import Tensor

from .core import Rows, position_mean
from .registry import register_loss
from .rowstats import Request


@register_loss("ce", needs=Request(logq_y=True))
def ce(rows: Rows, weight: Tensor) -> Tensor:
    """Cross-entropy ``−log q(y)``; gradient w.r.t. the logits ``q − onehot(y)``. Rows whose
    label is −100 (not in the draft vocabulary) are ignored and not counted."""
    ok = rows.label_ok
    return position_mean(-rows.logq_y, weight * ok, ok.sum(0).to(weight.dtype))
