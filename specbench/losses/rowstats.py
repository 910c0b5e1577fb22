"""Per-row statistics of (draft, target) distribution pairs, computed in chunks over rows.

Every loss in this package is a function of a few per-row scalars. A *row* is one
(token, draft position) pair with draft logits ``z`` and target log-probabilities ``t`` over
the draft vocabulary (``t`` is normalised over the full target vocabulary, then sliced):

- ``q = softmax(z)``, ``p = exp(t)`` (original target probabilities restricted to the draft
  vocabulary, ``Σp = Z ≤ 1``), ``p̃ = p / Z`` (renormalised over the draft vocabulary);
- ``kl     = Σ p̃ (log p̃ − log q)``                       gradient ``q − p̃``
- ``rkl    = Σ q (log q − log p̃)``                        gradient ``q ⊙ (d − rkl)``,
  ``d = log q − log p̃``;
- ``jsd    = ½ Σ p̃ log(p̃/m) + ½ Σ q log(q/m)``,           gradient ``½ q ⊙ (c − Σ q c)``,
  ``m = (p̃ + q)/2``, ``c = log(q/m)``;
- ``alpha  = Σ min(a, q)`` with ``a = p`` or ``a = p̃``      gradient ``q ⊙ (r − S)``
  where ``r = 1{a > q}`` and ``S = Σ q r``;
- ``pg_r   = Σ sg(q) r log q`` (REINFORCE surrogate)        gradient ``q ⊙ (r − S)``
- ``pg_1   = Σ sg(q) log q``                                gradient ``0``
- ``pg_s   = Σ q r`` (``S``, the mean reward under q)      no gradient (use detached)
- ``logq_y = log q(y)`` for the label ``y``                 gradient ``onehot(y) − q``

:class:`RowStats` is a custom autograd function: its forward walks over chunks of rows and
keeps only per-row scalars (plus ``log Σ exp z`` and ``Z`` per row); its backward walks over
the chunks again, recomputes ``q``, ``p`` and ``r`` and writes ``∂loss/∂z`` chunk by chunk
from the closed-form gradients above (``S`` is taken from the recomputed ``r``, so the α
gradient sums to exactly zero). Three ``[chunk_rows, V]`` compute-dtype buffers (four for
low-precision inputs; one more, in the targets' dtype, for targets given as
:class:`~.rows.IndexedRows`, gathered into it a chunk at a time in forward and again in
backward) are all the full-vocabulary memory it ever allocates besides the returned
gradient, whatever the number of rows; nothing of vocabulary size is saved between forward
and backward except the inputs themselves. Targets get no gradient (frozen).
Draft logits must be finite; target log-probs may be ``−inf``: they are floored at
``T_FLOOR = −10⁴`` wherever a log of the target enters (so ``p = 0`` exactly there and
``0 · log p = 0``); ``rkl`` therefore charges ``≈ 10⁴ · q(v)`` for draft mass on a token the
target never emits, instead of ``+∞``.

``rkl`` and ``jsd`` are computed from ``u = log q − log p̃`` alone: ``rkl = Σ q u`` and, with
``h = log(p̃/m) = log 2 − softplus(u)`` and ``log(q/m) = h + u``,
``jsd = ½ Σ (p̃ + q) h + ½ Σ q u`` (no cancellation between entropies when ``q ≈ p̃``).

Each of these has an eager twin in :mod:`.eager` (its definition in plain autograd, which the
tests compare it with); a statistic that has only the eager definition is computed there
(:func:`row_stats` falls back to it), so a loss can start in plain torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .eager import LOG2, T_FLOOR, eager_row_stats
from .rows import IndexedRows, RowsLike, materialize, row_chunk

# the statistics with a fused kernel here; any other of .eager.STATISTICS is computed there
STAT_NAMES = ("kl", "rkl", "jsd", "alpha", "pg_r", "pg_1", "pg_s", "logq_y")
# Rows per chunk of full-vocabulary work, by device. On a CPU a chunk's buffers should stay
# in cache: CHUNK_ELEMENTS // V rows (4 MiB fp32 buffers). On a GPU a chunk is a few kernel
# launches (~45), so it should be large: CUDA_CHUNK_BYTES // (4·V) rows (256 MiB buffers;
# 3-4 alive, ~1 GiB: 2,048 rows at a 32k vocabulary, 512 at 128k, instead of 32 and 8).
CHUNK_ELEMENTS = 1 << 20
CUDA_CHUNK_BYTES = 1 << 28
AlphaOn = Literal["p", "p_tilde"]  # α on the original target probabilities or on p̃


@dataclass(frozen=True)
class Request:
    """What a loss needs: which row statistics, α on ``"p"`` or ``"p_tilde"``, whether
    the greedy (argmax) draft tokens are compared with the labels (``greedy``), and any
    statistics without a fused kernel, by name (``eager``: :mod:`.eager` computes them)."""

    kl: bool = False
    rkl: bool = False
    jsd: bool = False
    alpha: bool = False
    pg: bool = False
    logq_y: bool = False
    greedy: bool = False
    alpha_on: str = "p"
    eager: tuple[str, ...] = ()

    def __or__(self, other: Request) -> Request:
        mine, theirs = self.alpha or self.pg, other.alpha or other.pg
        if mine and theirs and self.alpha_on != other.alpha_on:
            raise ValueError("terms of one loss disagree on alpha_on")
        flags = {f: getattr(self, f) or getattr(other, f) for f in ("kl", "rkl", "jsd")}
        flags.update(alpha=self.alpha or other.alpha, pg=self.pg or other.pg)
        return Request(
            **flags,
            logq_y=self.logq_y or other.logq_y,
            greedy=self.greedy or other.greedy,
            alpha_on=self.alpha_on if mine else other.alpha_on,
            eager=tuple(sorted({*self.eager, *other.eager})),
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the statistics computed: the fused ones, then the eager ones."""
        return self.fused + self.eager

    @property
    def fused(self) -> tuple[str, ...]:
        """Names of the statistics the fused kernel computes, in column order."""
        want = {"kl": self.kl, "rkl": self.rkl, "jsd": self.jsd}
        want.update(alpha=self.alpha, logq_y=self.logq_y)
        want.update(pg_r=self.pg, pg_1=self.pg, pg_s=self.pg)
        return tuple(n for n in STAT_NAMES if want[n])


def alpha_request(prm: dict[str, Any], **flags: bool) -> Request:
    """``needs`` of a loss with an ``alpha_on`` parameter: α (unless ``alpha=False``) plus
    ``flags``, on the chosen target."""
    return Request(**{"alpha": True, **flags}, alpha_on=prm["alpha_on"])


def default_chunk_rows(vocab: int, device: torch.device | str = "cpu") -> int:
    """Rows per chunk: ``$SPECBENCH_LOSS_CHUNK_ROWS`` if set, else by device: a memory
    budget on CUDA (``CUDA_CHUNK_BYTES``), the cache on a CPU (``CHUNK_ELEMENTS``)."""
    env = os.environ.get("SPECBENCH_LOSS_CHUNK_ROWS")
    if env:
        return max(1, int(env))
    if torch.device(device).type == "cuda":
        return max(1, CUDA_CHUNK_BYTES // (4 * max(1, vocab)))
    return max(1, CHUNK_ELEMENTS // max(1, vocab))


def _load(x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """``x`` in the compute dtype: itself, or upcast into the workspace buffer."""
    return x if x.dtype == buf.dtype else buf.copy_(x)


def _exp(t: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """``p = exp(t)`` into ``buf`` (``p = 0`` where ``t = −inf``)."""
    return torch.exp(t, out=buf) if t.dtype == buf.dtype else buf.copy_(t).exp_()


def _floored(t: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """``max(t, T_FLOOR)`` in the compute dtype, into ``buf``."""
    if t.dtype != buf.dtype:
        return buf.copy_(t).clamp_min_(T_FLOOR)
    return torch.clamp_min(t, T_FLOOR, out=buf)


def _log_ratio(z, t, lse, zsum, buf: torch.Tensor) -> torch.Tensor:
    """``u = log q − log p̃ = (z − lse) − (max(t, T_FLOOR) − log Z)``, into ``buf``."""
    return _floored(t, buf).neg_().add_(z).sub_(lse - zsum.log())


def _softplus_(u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^u)`` into ``out`` (which may be ``u``), without overflow."""
    return torch.logaddexp(u, torch.zeros((), dtype=u.dtype, device=u.device), out=out)


def _add_centred(out, q, d, g, scratch: torch.Tensor | None) -> None:
    """``out += g · q ⊙ (d − Σ q d)`` (``g`` per row); overwrites ``d`` and ``scratch`` (a
    free chunk buffer for ``q ⊙ d``; ``None`` allocates one)."""
    qd = q * d if scratch is None else torch.mul(q, d, out=scratch)
    d.sub_(qd.sum(dim=-1, keepdim=True)).mul_(g[:, None])
    out.addcmul_(q, d)


def _forward_chunk(z, t, y, req: Request, ws: torch.Tensor):
    """Per-row statistics of one chunk, plus the row constants the backward needs.

    ``ws[0..3]`` are chunk-sized compute-dtype buffers, reused from chunk to chunk.
    """
    c = z.shape[0]
    e_buf, p_buf, tmp, up = (w[:c] for w in ws)
    zf = _load(z, up)
    m = zf.amax(dim=-1, keepdim=True)
    e = torch.sub(zf, m, out=e_buf).exp_()  # q = e / s
    s = e.sum(dim=-1, keepdim=True)
    lse = m + s.log()
    p = _exp(t, p_buf)
    zsum = p.sum(dim=-1, keepdim=True).clamp_min_(torch.finfo(p.dtype).tiny)  # Z = Σp
    out: dict[str, torch.Tensor] = {}
    if req.rkl or req.jsd:  # from u = log q − log p̃ (module docstring); q = e / s
        u = _log_ratio(zf, t, lse, zsum, tmp)
        qu = torch.linalg.vecdot(e, u) / s.squeeze(-1)  # Σ q u
        if req.rkl:
            out["rkl"] = qu
        if req.jsd:
            h = _softplus_(u, u).neg_().add_(LOG2)  # log(p̃/m)
            ph = torch.linalg.vecdot(p, h) / zsum.squeeze(-1)
            qh = torch.linalg.vecdot(e, h) / s.squeeze(-1)
            out["jsd"] = 0.5 * (ph + qh + qu)
    if req.kl:  # Σ p̃ (t − log Z − z + lse) = Σ p (t − z) / Z + lse − log Z; t floored: 0·t = 0
        dot = torch.linalg.vecdot(p, _floored(t, tmp).sub_(zf))[:, None]
        out["kl"] = (dot / zsum + lse - zsum.log()).squeeze(-1)
    if req.alpha or req.pg:
        q = e.mul_(1 / s)
        a = p.mul_(1 / zsum) if req.alpha_on == "p_tilde" else p
        if req.alpha:
            out["alpha"] = torch.minimum(a, q, out=tmp).sum(dim=-1)
        if req.pg:  # r = 1{a > q} as a float mask; a is not needed afterwards
            r = torch.gt(a, q, out=tmp)
            logq = torch.sub(zf, lse, out=a)
            out["pg_1"] = torch.linalg.vecdot(q, logq)
            qr = q.mul_(r)
            out["pg_r"] = torch.linalg.vecdot(qr, logq)
            out["pg_s"] = qr.sum(dim=-1)
    if req.logq_y:
        out["logq_y"] = (zf.gather(-1, y.clamp_min(0)[:, None]) - lse).squeeze(-1)
    return out, lse, zsum


def _backward_chunk(z, t, y, lse, zsum, g: dict[str, torch.Tensor], req: Request, ws, out):
    """Write ``∂loss/∂z`` of one chunk into ``out`` from the per-row upstream gradients ``g``.

    ``grad = q ⊙ (a + b·r − b·S) − g_kl·p̃ + g_y·onehot(y)`` with ``a = g_kl − g_y`` and
    ``b = g_alpha + g_pg_r`` (both per row), ``r = 1{p_α > q}``, ``S = Σ q r``; plus
    ``g_rkl · q ⊙ (u − Σ q u)`` and ``½ g_jsd · q ⊙ (c − Σ q c)`` with ``u = log q − log p̃``,
    ``c = log(q/m) = log 2 + u − softplus(u)``. ``u`` is recomputed from ``z`` itself: for
    low-precision input ``out`` is the buffer that held the upcast ``z``.
    """
    c = z.shape[0]
    q_buf, p_buf, tmp, up = (w[:c] for w in ws)
    q = torch.sub(_load(z, up), lse, out=q_buf).exp_()
    zero = torch.zeros_like(lse)
    g_kl = g["kl"][:, None] if req.kl else zero
    g_y = g["logq_y"][:, None] if req.logq_y else zero
    a = g_kl - g_y
    p = _exp(t, p_buf) if (req.kl or req.alpha or req.pg) else None
    if req.alpha or req.pg:
        b = (g["alpha"][:, None] if req.alpha else zero) + (g["pg_r"][:, None] if req.pg else zero)
        pa = torch.div(p, zsum, out=tmp) if req.alpha_on == "p_tilde" else p
        r = torch.gt(pa, q, out=tmp)
        torch.addcmul(a, r, b, out=out).mul_(q)  # q ⊙ (a + b·r), whose sum is a + b·S
        out.addcmul_(q, a - out.sum(dim=-1, keepdim=True))  # − b·S·q
    else:
        torch.mul(q, a, out=out)
    if req.kl:
        out.addcmul_(p, -g_kl / zsum)
    if req.logq_y:
        out.scatter_add_(-1, y.clamp_min(0)[:, None], g_y)
    if req.rkl or req.jsd:  # p and r are no longer needed: their buffers are free
        u = _log_ratio(z, t, lse, zsum, p_buf)
        if req.jsd:
            c = _softplus_(u, tmp).neg_().add_(u).add_(LOG2)
            _add_centred(out, q, c, 0.5 * g["jsd"], None if req.rkl else u)
        if req.rkl:
            _add_centred(out, q, u, g["rkl"], tmp)
    return out


def _workspace(z: torch.Tensor, chunk_rows: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Three ``[chunk, V]`` compute-dtype buffers, and a fourth to upcast low-precision input."""
    n = 3 if z.dtype == dtype else 4
    ws = z.new_empty((n, min(chunk_rows, z.shape[0]), z.shape[1]), dtype=dtype)
    return list(ws.unbind(0)) + ([ws[0, :0]] if n == 3 else [])


def _target_buffer(t: RowsLike, chunk_rows: int) -> torch.Tensor | None:
    """A ``[chunk, V]`` buffer (in ``t``'s dtype) to gather chunks of :class:`IndexedRows`
    into, reused from chunk to chunk; ``None`` for a plain tensor, whose chunks are views."""
    if not isinstance(t, IndexedRows):
        return None
    return t.source.new_empty((min(chunk_rows, t.index.numel()), t.shape[-1]))


class RowStats(torch.autograd.Function):
    """``stats[R, n] = RowStats.apply(z[R, V], t[R, V], y[R], request, chunk_rows, dtype)``.

    ``t`` is a tensor or :class:`~.rows.IndexedRows`, read a chunk at a time (gathered in
    forward, and again in backward: nothing of its size is kept in between).
    """

    @staticmethod
    def forward(ctx, z, t: RowsLike, y, req: Request, chunk_rows: int, dtype: torch.dtype):
        rows = z.shape[0]
        names = req.fused
        stats = z.new_empty((rows, len(names)), dtype=dtype)
        lse = z.new_empty((rows, 1), dtype=dtype)
        zsum = z.new_empty((rows, 1), dtype=dtype)
        ws = _workspace(z, chunk_rows, dtype)
        t_buf = _target_buffer(t, chunk_rows)
        for lo in range(0, rows, chunk_rows):
            sl = slice(lo, lo + chunk_rows)
            hi = min(rows, lo + chunk_rows)
            t_sl = row_chunk(t, lo, hi, None if t_buf is None else t_buf[: hi - lo])
            out, lse[sl], zsum[sl] = _forward_chunk(z[sl], t_sl, y[sl], req, ws)
            for j, name in enumerate(names):
                stats[sl, j] = out[name]
        # a plain t is saved as itself; IndexedRows as its source and index (index None: plain)
        source, index = (t.source, t.index) if isinstance(t, IndexedRows) else (t, None)
        ctx.save_for_backward(z, source, index, y, lse, zsum)
        ctx.req, ctx.chunk_rows, ctx.dtype = req, chunk_rows, dtype
        return stats

    @staticmethod
    def backward(ctx, grad_stats):
        z, source, index, y, lse, zsum = ctx.saved_tensors
        t = source if index is None else IndexedRows(source, index)
        req, cr, dtype = ctx.req, ctx.chunk_rows, ctx.dtype
        grad_z = torch.empty_like(z)
        ws = _workspace(z, cr, dtype)
        t_buf = _target_buffer(t, cr)
        names = req.fused
        for lo in range(0, z.shape[0], cr):
            sl = slice(lo, lo + cr)
            hi = min(z.shape[0], lo + cr)
            t_sl = row_chunk(t, lo, hi, None if t_buf is None else t_buf[: hi - lo])
            g = {name: grad_stats[sl, j] for j, name in enumerate(names)}
            out = grad_z[sl] if z.dtype == dtype else ws[3][: grad_z[sl].shape[0]]
            out = _backward_chunk(z[sl], t_sl, y[sl], lse[sl], zsum[sl], g, req, ws, out)
            if z.dtype != dtype:
                grad_z[sl] = out
        return grad_z, None, None, None, None, None


def row_stats(
    z: torch.Tensor,
    t: RowsLike,
    y: torch.Tensor | None,
    req: Request,
    chunk_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-row statistics ``{name: [R]}`` of ``z[R, V]`` (draft logits) vs ``t[R, V]`` (a
    tensor or :class:`~.rows.IndexedRows`: no gradient reaches it either way).

    Computed in float64 if either input is float64, else float32. ``y`` ([R] long, −100 for
    no label) is needed only for ``logq_y`` (entries with ``y < 0`` are meaningless there).
    The statistics in ``req.eager`` (no fused kernel) come from :func:`.eager.eager_row_stats`.
    """
    dtype = torch.float64 if torch.float64 in (z.dtype, t.dtype) else torch.float32
    if y is None:
        y = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    cr = chunk_rows or default_chunk_rows(z.shape[-1], z.device)
    t = t.detach() if isinstance(t, torch.Tensor) else t  # IndexedRows: not an autograd input
    out = {}
    if req.fused:
        stats = RowStats.apply(z, t, y, req, cr, dtype)
        out = {name: stats[:, j] for j, name in enumerate(req.fused)}
    if not req.eager:
        return out
    # the eager statistics hold [R, V] tensors of every row for autograd anyway, so their
    # targets are simply gathered whole: this path is the test oracle and the start of a loss
    return out | eager_row_stats(z, materialize(t), y, req.eager, req.alpha_on, dtype)
