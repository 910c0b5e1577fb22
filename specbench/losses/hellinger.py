"""``hellinger``: the squared Hellinger distance ``H² = 1 − Σ sqrt(p̃ q)`` between ``p̃`` and
``q`` (symmetric, in ``[0, 1]``; ``H² ≤ TV(p̃, q) ≤ √2·H``).

Written on the eager statistic ``bc`` (Bhattacharyya coefficient, :mod:`.eager`): the
gradient is autograd's, with no closed form of its own.
"""

from __future__ import annotations

from torch import Tensor

from .core import Rows, position_mean
from .registry import register_loss
from .rowstats import Request


@register_loss("hellinger", needs=Request(eager=("bc",)))
def hellinger(rows: Rows, weight: Tensor) -> Tensor:
    """``1 − Σ_v sqrt(p̃(v) q(v))`` per row, averaged over the valid rows of a position."""
    return position_mean(1 - rows.bc, weight, rows.count)
