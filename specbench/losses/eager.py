"""Per-row statistics by their definitions, in plain torch autograd.

The table every fused statistic of :mod:`.rowstats` is tested against (its eager twin), and
what :func:`~.rowstats.row_stats` computes a statistic with no fused kernel by. A new
statistic is one :func:`statistic` line here; a loss asks for it by name
(``Request(eager=("name",))``) and reads it as ``rows.<name>``. The eager path keeps
full-vocabulary tensors of every row for autograd: a statistic that stays gets a fused,
chunked kernel in ``rowstats.py``, checked against its twin here. Notation as there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

T_FLOOR = -1.0e4  # target log-probs are floored here so that p = 0 exactly and 0·t stays 0
LOG2 = math.log(2.0)


class Dists:
    """The distributions of rows ``z[R, V]``, ``t[R, V]`` (labels ``y[R]``): ``lq = log q``,
    ``p``, ``zsum = Z``, ``pt = p̃``, ``lpt = log p̃`` (floored), ``a`` (α's p or p̃),
    ``r = 1{a > q}``."""

    def __init__(self, z: Tensor, t: Tensor, y: Tensor, alpha_on: str = "p") -> None:
        self.y, self.lq = y, z.log_softmax(-1)
        self.q, self.p = self.lq.exp(), t.exp()
        self.zsum = self.p.sum(-1, keepdim=True).clamp_min(torch.finfo(self.p.dtype).tiny)
        self.pt, self.lpt = self.p / self.zsum, t.clamp_min(T_FLOOR) - self.zsum.log()
        self.a = self.pt if alpha_on == "p_tilde" else self.p
        self.r = (self.a > self.q).to(self.q.dtype)


@dataclass(frozen=True)
class Statistic:
    """A per-row statistic: ``fn(dists) -> [R]``, and what a masked row reads: that of a
    perfect row (q = p̃: no divergence, α = 1, q(y) = 1), so that every loss stays finite
    there and its zero gradient stays zero (−inf, or α = 0 on a padded row of −inf target
    log-probs, would make it 0·∞ = NaN)."""

    name: str
    fn: Callable[[Dists], Tensor]
    masked: float = 0.0


STATISTICS: dict[str, Statistic] = {}


def statistic(name: str, fn: Callable[[Dists], Tensor], masked: float = 0.0) -> None:
    """Register the statistic ``name``: ``fn(d: Dists) -> [R]``."""
    if name in STATISTICS:
        raise ValueError(f"statistic {name!r} is registered twice")
    STATISTICS[name] = Statistic(name, fn, masked)


def _jsd(d: Dists) -> Tensor:  # ½ Σ p̃ log(p̃/m) + ½ Σ q log(q/m), m = (p̃ + q)/2
    lm = torch.logaddexp(d.lq, d.lpt) - LOG2
    return 0.5 * (d.pt * (d.lpt - lm)).sum(-1) + 0.5 * (d.q * (d.lq - lm)).sum(-1)


statistic("kl", lambda d: (d.pt * (d.lpt - d.lq)).sum(-1))  # Σ p̃ (log p̃ − log q)
statistic("rkl", lambda d: (d.q * (d.lq - d.lpt)).sum(-1))  # Σ q (log q − log p̃)
statistic("jsd", _jsd)
statistic("alpha", lambda d: torch.minimum(d.a, d.q).sum(-1), masked=1.0)  # Σ min(a, q)
statistic("pg_r", lambda d: (d.q.detach() * d.r * d.lq).sum(-1))  # Σ sg(q) r log q
statistic("pg_1", lambda d: (d.q.detach() * d.lq).sum(-1))  # Σ sg(q) log q
# S = Σ q r (detached); ½ at a masked row so that TVD++'s σ = sqrt(S(1 − S)) is not 0
statistic("pg_s", lambda d: (d.q * d.r).sum(-1).detach(), masked=0.5)
statistic("logq_y", lambda d: d.lq.gather(-1, d.y.clamp_min(0)[:, None])[:, 0])  # log q(y)
# Bhattacharyya coefficient Σ sqrt(p̃ q), no fused kernel (hellinger)
statistic("bc", lambda d: torch.exp(0.5 * (d.lpt + d.lq)).sum(-1), masked=1.0)


def eager_row_stats(
    z: Tensor,
    t: Tensor,
    y: Tensor | None,
    names: tuple[str, ...],
    alpha_on: str = "p",
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """``{name: [R]}`` of ``z[R, V]`` vs ``t[R, V]`` by the definitions above (autograd
    through ``z``; ``t`` is detached), in ``dtype`` (default: ``z``'s)."""
    if not names:
        return {}
    dtype = dtype or z.dtype
    if y is None:
        y = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    d = Dists(z.to(dtype), t.detach().to(dtype), y, alpha_on)
    return {name: STATISTICS[name].fn(d) for name in names}
