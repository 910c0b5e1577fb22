"""The acceptance probability of one draft position: ``α = Σ_v min(p(v), q(v)) = 1 − TV(p, q)``.

Exact speculative sampling accepts a draft token ``d ~ q`` with probability
``min(1, p(d)/q(d))``, so a position is accepted with probability ``α`` (SPEC §4). Training
logs it, expected τ multiplies it along a chain, live decoding sums it per position.
"""

from __future__ import annotations

import torch


def alpha(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``Σ_v min(p, q)`` over the last dimension ``[..., V] → [...]`` (probabilities, not logs)."""
    return torch.minimum(p, q).sum(dim=-1)
