"""Per-row statistics by their definitions, in plain torch autograd.

The table every fused statistic of :mod:`.rowstats` is tested against (its eager twin), and
what :func:`~.rowstats.row_stats` computes a statistic with no fused kernel by. A new
statistic is one ``@statistic`` function here; a loss asks for it by name
(``Request(eager=("name",))``) and reads it as ``rows.<name>``. The eager path keeps
full-vocabulary tensors of every row for autograd: a statistic that stays gets a fused,
chunked kernel in ``rowstats.py``, checked against its twin here.

Notation as in :mod:`.rowstats`: ``q = softmax(z)``, ``p = exp(t)`` over the draft
vocabulary (``Σp = Z ≤ 1``), ``p̃ = p / Z``; target logs floored at ``T_FLOOR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

T_FLOOR = -1.0e4  # target log-probs are floored here so that p = 0 exactly and 0·t stays 0
LOG2 = math.log(2.0)


class Dists:
    """The distributions of a batch of rows ``z[R, V]``, ``t[R, V]`` (labels ``y[R]``), each
    computed once, when a statistic first asks for it."""

    def __init__(self, z: Tensor, t: Tensor, y: Tensor, alpha_on: str = "p") -> None:
        self.z, self.t, self.y, self.alpha_on = z, t, y, alpha_on

    @cached_property
    def lq(self) -> Tensor:  # log q
        return self.z.log_softmax(-1)

    @cached_property
    def q(self) -> Tensor:
        return self.lq.exp()

    @cached_property
    def p(self) -> Tensor:
        return self.t.exp()

    @cached_property
    def zsum(self) -> Tensor:  # Z = Σ p, [R, 1]
        return self.p.sum(-1, keepdim=True).clamp_min(torch.finfo(self.p.dtype).tiny)

    @cached_property
    def pt(self) -> Tensor:  # p̃
        return self.p / self.zsum

    @cached_property
    def lpt(self) -> Tensor:  # log p̃, floored
        return self.t.clamp_min(T_FLOOR) - self.zsum.log()

    @cached_property
    def a(self) -> Tensor:  # what α is taken on: p or p̃
        return self.pt if self.alpha_on == "p_tilde" else self.p

    @cached_property
    def r(self) -> Tensor:  # 1{a > q}
        return (self.a > self.q).to(self.q.dtype)


@dataclass(frozen=True)
class Statistic:
    """A per-row statistic: ``fn(dists) -> [R]``, and its value at a masked row."""

    name: str
    fn: Callable[[Dists], Tensor]
    masked: float


STATISTICS: dict[str, Statistic] = {}


def statistic(name: str, masked: float = 0.0) -> Callable[[Callable], Callable]:
    """Register ``fn(d: Dists) -> [R]`` as the statistic ``name``. ``masked``: what a masked
    row reads, that of a perfect row (q = p̃: no divergence, α = 1, q(y) = 1) so that every
    loss stays finite there and its zero gradient stays zero (a stat of −inf, or α = 0 on a
    padded row of −inf target log-probs, would make it 0·∞ = NaN)."""

    def add(fn: Callable[[Dists], Tensor]) -> Callable[[Dists], Tensor]:
        if name in STATISTICS:
            raise ValueError(f"statistic {name!r} is registered twice")
        STATISTICS[name] = Statistic(name, fn, masked)
        return fn

    return add


@statistic("kl")
def kl(d: Dists) -> Tensor:
    """``Σ p̃ (log p̃ − log q)``."""
    return (d.pt * (d.lpt - d.lq)).sum(-1)


@statistic("rkl")
def rkl(d: Dists) -> Tensor:
    """``Σ q (log q − log p̃)``."""
    return (d.q * (d.lq - d.lpt)).sum(-1)


@statistic("jsd")
def jsd(d: Dists) -> Tensor:
    """``½ Σ p̃ log(p̃/m) + ½ Σ q log(q/m)``, ``m = (p̃ + q)/2``."""
    lm = torch.logaddexp(d.lq, d.lpt) - LOG2
    return 0.5 * (d.pt * (d.lpt - lm)).sum(-1) + 0.5 * (d.q * (d.lq - lm)).sum(-1)


@statistic("alpha", masked=1.0)
def alpha(d: Dists) -> Tensor:
    """``α = Σ min(a, q)``."""
    return torch.minimum(d.a, d.q).sum(-1)


@statistic("pg_r")
def pg_r(d: Dists) -> Tensor:
    """``Σ sg(q) r log q`` (the REINFORCE surrogate)."""
    return (d.q.detach() * d.r * d.lq).sum(-1)


@statistic("pg_1")
def pg_1(d: Dists) -> Tensor:
    """``Σ sg(q) log q``."""
    return (d.q.detach() * d.lq).sum(-1)


@statistic("pg_s", masked=0.5)  # ½: TVD++'s σ = sqrt(S(1 − S)) is not 0 there
def pg_s(d: Dists) -> Tensor:
    """``S = Σ q r``, detached."""
    return (d.q * d.r).sum(-1).detach()


@statistic("logq_y")
def logq_y(d: Dists) -> Tensor:
    """``log q(y)`` of the label (meaningless where ``y < 0``)."""
    return d.lq.gather(-1, d.y.clamp_min(0)[:, None])[:, 0]


@statistic("bc", masked=1.0)
def bc(d: Dists) -> Tensor:
    """Bhattacharyya coefficient ``Σ sqrt(p̃ q) = Σ exp(½(log p̃ + log q))`` (no fused
    kernel: computed here)."""
    return torch.exp(0.5 * (d.lpt + d.lq)).sum(-1)


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
    dtype = dtype or z.dtype
    if y is None:
        y = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    d = Dists(z.to(dtype), t.detach().to(dtype), y, alpha_on)
    return {name: STATISTICS[name].fn(d) for name in names}
