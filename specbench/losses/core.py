"""Assembling a loss from a spec: ``loss = Σ_k w_k · L_k + Σ extra terms``.

Shapes: ``N`` rows (tokens/anchors; any leading dims are flattened), ``K`` draft positions,
``V`` draft vocabulary. ``L_k`` is the base loss at draft position ``k`` averaged over the
valid rows of that position (0 if there are none); ``w_k`` is the head decay ``γ^(k−1)``
(γ = 0.8) unless a position weighting such as ``decay`` replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from .eager import STATISTICS
from .registry import Resolved, canonical, resolve
from .rows import RowsLike
from .rowstats import STAT_NAMES, Request, row_stats


@dataclass
class Rows:
    """Per-row statistics (``[N, K]``, compute dtype) and masks that losses are written in.

    ``kl``, ``rkl``, ``jsd``, ``alpha``, ``pg_r``, ``pg_1``, ``pg_s`` and ``logq_y`` are
    ``None`` unless requested (see :mod:`specbench.losses.rowstats` for their definitions and
    gradients); a statistic without a fused kernel (:mod:`specbench.losses.eager`) is in
    ``eager`` and reads as an attribute too (``rows.bc``). At masked rows they hold their
    statistic's ``masked`` constant, with no gradient.
    """

    mask: Tensor  # [N, K] bool, valid rows
    label_ok: Tensor  # [N, K] bool, valid rows whose label is in the draft vocabulary
    kl: Tensor | None = None
    rkl: Tensor | None = None
    jsd: Tensor | None = None
    alpha: Tensor | None = None
    pg_r: Tensor | None = None
    pg_1: Tensor | None = None
    pg_s: Tensor | None = None
    logq_y: Tensor | None = None
    greedy_ok: Tensor | None = None  # [N, K] bool: argmax draft token == label
    group: Any = None  # the ranks batch statistics pool over (None: these rows alone)
    eager: dict[str, Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Tensor:
        """An eager statistic by name (called only where no field has the name)."""
        eager = self.__dict__.get("eager", {})
        if name in eager:
            return eager[name]
        raise AttributeError(f"Rows has no statistic {name!r}: did the loss request it?")

    @property
    def count(self) -> Tensor:
        """Valid rows per position, ``[K]``."""
        return self.mask.sum(0).to(self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        stats = (self.kl, self.rkl, self.jsd, self.alpha, self.pg_r, self.logq_y)
        return next(v for v in (*stats, *self.eager.values()) if v is not None).dtype


def position_mean(values: Tensor, weight: Tensor, count: Tensor) -> Tensor:
    """``Σ_n weight·values / count`` per position ``[K]``; 0 where ``count == 0``.

    Rows with zero weight contribute nothing to the value, even if it is not finite; their
    gradient is zero only if ``values`` is finite there with a finite derivative (masked
    rows are: each statistic's ``masked`` value).
    """
    values = torch.where(weight != 0, values, torch.zeros((), dtype=values.dtype))
    return (weight * values).sum(0) / count.clamp_min(1)


def allreduce_sum(x: Tensor, group: Any = None) -> Tensor:
    """``Σ`` of ``x`` over the ranks of ``group``; ``x`` itself when ``group`` is None.

    No gradient. ``group`` is a process group of ranks that replicate *one* draft (data
    parallel), never the default group by accident: drafts spread over ranks must not pool.
    """
    if group is not None:
        x = x.detach().clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def world_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (1 for None: these rows alone)."""
    return 1 if group is None else dist.get_world_size(group)


def allreduce_sum_grad(x: Tensor, group: Any = None) -> Tensor:
    """``Σ_ranks x`` whose gradient w.r.t. this rank's ``x`` is ``W·∂`` (``W`` ranks).

    DDP averages gradients over the ``W`` ranks, so the averaged gradient is exactly that of
    a function of the global sum: ``value = Σ_r x_r``, ``∂value/∂x_this = W`` (1 alone).
    """
    return allreduce_sum(x.detach(), group) + world_size(group) * (x - x.detach())


def global_position_mean(values: Tensor, mask: Tensor, group: Any = None) -> Tensor:
    """Detached masked mean over rows per position ``[K]``, pooled over ``group`` by count."""
    w = mask.to(values.dtype)
    sums = torch.stack([(w * torch.where(mask, values, 0).detach()).sum(0), w.sum(0)])
    sums = allreduce_sum(sums, group)
    return sums[0] / sums[1].clamp_min(1)


def head_decay(k: int, gamma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``w_k = γ^(k−1)`` for ``k = 1..K``."""
    return gamma ** torch.arange(k, dtype=dtype, device=device)


@dataclass
class LossFn:
    """A built loss. Call with keyword arguments; returns a scalar tensor."""

    spec: str  # canonical spec, the label in tables
    terms: list[Resolved]
    request: Request
    chunk_rows: int | None = None
    group: Any = None  # data-parallel ranks of this one draft that pool statistics (or None)

    @property
    def needs_labels(self) -> bool:
        return self.request.logq_y or self.request.greedy

    def __call__(
        self,
        *,
        draft_logits: Tensor,
        target_logits: RowsLike,
        mask: Tensor,
        labels: Tensor | None = None,
    ) -> Tensor:
        """``draft_logits`` and ``target_logits`` ``[..., K, V]`` (target: log-probs normalised
        over the full target vocabulary, then sliced to the draft vocabulary; a tensor, or
        :class:`~specbench.losses.rows.IndexedRows` that are gathered a chunk at a time),
        ``mask`` ``[..., K]`` bool, ``labels`` ``[..., K]`` draft-vocab ids (−100: none)."""
        z, t, mask, labels = _check_inputs(self, draft_logits, target_logits, mask, labels)
        n, k, v = z.shape
        y = labels.reshape(-1) if labels is not None else None
        flat = row_stats(z.reshape(n * k, v), t.reshape(n * k, v), y, self.request, self.chunk_rows)
        label_ok = mask & (labels >= 0) if labels is not None else torch.zeros_like(mask)
        stats = {a: torch.where(mask, s.view(n, k), STATISTICS[a].masked) for a, s in flat.items()}
        fused = {a: s for a, s in stats.items() if a in STAT_NAMES}
        eager = {a: s for a, s in stats.items() if a not in STAT_NAMES}
        rows = Rows(mask=mask, label_ok=label_ok, group=self.group, eager=eager, **fused)
        if self.request.greedy:
            rows.greedy_ok = label_ok & (z.detach().argmax(-1) == labels)
        dtype = rows.dtype
        base, *mods = self.terms
        pos_w = head_decay(k, base.params["gamma"], dtype, z.device)
        weight = mask.to(dtype)
        extra = torch.zeros((), dtype=dtype, device=z.device)
        for term in mods:
            kind, fn, prm = term.loss.kind, term.loss.fn, term.params
            if kind == "position":
                pos_w = fn(k, **prm).to(dtype=dtype, device=z.device)
            elif kind == "row":
                weight = weight * fn(rows, **prm).detach()
            else:
                extra = extra + fn(rows, **prm)
        base_prm = {key: val for key, val in base.params.items() if key != "gamma"}
        per_position = base.loss.fn(rows, weight, **base_prm)
        return (pos_w * per_position).sum() + extra

    def __repr__(self) -> str:
        return f"LossFn({self.spec!r})"


def _check_inputs(fn: LossFn, z: Tensor, t: RowsLike, mask: Tensor, labels: Tensor | None):
    if z.dim() < 2 or z.shape != t.shape:
        raise ValueError(
            f"draft_logits {tuple(z.shape)} and target_logits {tuple(t.shape)} must both be "
            "[..., K, V]"
        )
    k, v = z.shape[-2:]
    if mask.shape != z.shape[:-1] or mask.dtype != torch.bool:
        got = f"{mask.dtype} {tuple(mask.shape)}"
        raise ValueError(f"mask must be bool {tuple(z.shape[:-1])}, got {got}")
    if labels is None and fn.needs_labels:
        raise ValueError(f"loss {fn.spec!r} needs labels (the target tokens), got None")
    if labels is not None:
        if labels.shape != mask.shape or labels.dtype != torch.long:
            got = f"{labels.dtype} {tuple(labels.shape)}"
            raise ValueError(f"labels must be long {tuple(mask.shape)}, got {got}")
        bad = ((labels >= v) | ((labels < 0) & (labels != -100))) & mask
        why = f"labels must be draft-vocab ids in [0, {v}) or -100"
        if is_fake(labels):  # traced for its memory (specbench.plan): no values to check
            pass
        elif labels.device.type == "cpu":
            if bool(bad.any()):
                raise ValueError(why)
        else:  # checked on the device: no host sync in the training loop
            torch._assert_async(~bad.any(), why)
        labels = labels.reshape(-1, k)
    return z.reshape(-1, k, v), t.reshape(-1, k, v), mask.reshape(-1, k), labels


def build(spec: str, *, chunk_rows: int | None = None, group: Any = None) -> LossFn:
    """Build the loss named by ``spec`` (e.g. ``"lk_lambda(eta=10)"``, ``"ce+decay+focal"``).

    ``chunk_rows``: rows (token × position) per chunk of full-vocabulary work; default
    ``$SPECBENCH_LOSS_CHUNK_ROWS``, else sized by the device
    (:func:`~specbench.losses.rowstats.default_chunk_rows`). ``group``: the process group of
    ranks that hold replicas of this one draft, each on its own rows (data parallel); the batch
    statistics (LK^λ's ᾱ, TVD++'s μ, ``lk_alpha(reduce=batch)``'s ᾱ) pool over it. None
    (the default, and what a draft trained on its own rank needs, however many ranks the
    job has) pools over this call's rows only, and makes no collective call. Unknown names
    or parameters raise a ``ValueError`` that lists the valid ones.
    """
    terms = resolve(spec)
    request = Request()
    for term in terms:
        request = request | term.loss.needs(term.params)
    return LossFn(canonical(spec), terms, request, chunk_rows, group)
