"""Rows of a tensor picked by an index, gathered a chunk at a time.

:func:`specbench.drafts.align.align` pairs each (anchor, draft step) row with the target's
log-probs at one position of the batch: ``t[n, k] = logprobs[b, pos]``. Gathered at once that
is an ``[N, K, V]`` copy of the ``[B, L, V]`` batch, about K-fold (6.6 GiB of float32 for
MEDUSA on Llama-3.1-8B's 128k vocabulary, K = 6, a micro-batch of 2 × 1,152 tokens).
Everything that reads it (the losses' :class:`~specbench.losses.rowstats.RowStats`, the
acceptance statistics) walks over rows in chunks anyway, so it takes :class:`IndexedRows`
and gathers each chunk when it gets there. Targets get no gradient, so a backward that needs
a chunk again gathers it again.

Functions here take either a plain tensor or :class:`IndexedRows` (:data:`RowsLike`), so the
losses keep accepting plain ``[N, K, V]`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)  # eq=False: no element-wise tensor comparison
class IndexedRows:
    """``source[index]`` without the copy: row ``index[n, k]`` of ``source`` for each ``(n, k)``.

    It has the ``shape`` (``[*index.shape, V]``), ``dtype`` and ``device`` the gathered tensor
    would have; :meth:`rows` gives a chunk of its rows (flattened to ``[R, V]``) as a real
    tensor, :meth:`materialize` all of it.
    """

    source: Tensor  # [S, V], e.g. a batch's [B·L, V] target log-probs
    index: Tensor  # [N, K] long, a row of source per output row

    def __post_init__(self) -> None:
        if self.source.dim() != 2 or self.index.dtype != torch.long:
            raise ValueError(
                f"IndexedRows wants a [S, V] source and a long index, got source "
                f"{tuple(self.source.shape)} and a {self.index.dtype} index"
            )

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.index.shape, self.source.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def device(self) -> torch.device:
        return self.source.device

    def reshape(self, *shape: int) -> IndexedRows:
        """The same rows seen as ``shape`` (its last dimension must stay ``V``)."""
        if shape[-1] not in (-1, self.source.shape[1]):
            raise ValueError(f"cannot reshape {tuple(self.shape)} to {shape}: V must stay last")
        return IndexedRows(self.source, self.index.reshape(*shape[:-1]))

    def rows(self, lo: int, hi: int, out: Tensor | None = None) -> Tensor:
        """Flattened rows ``lo:hi`` ``[hi − lo, V]``, gathered (into ``out`` if given)."""
        return torch.index_select(self.source, 0, self.index.reshape(-1)[lo:hi], out=out)

    def materialize(self) -> Tensor:
        """The whole gathered ``[*index.shape, V]`` tensor (the copy this type avoids)."""
        return self.rows(0, self.index.numel()).view(self.shape)


RowsLike = Tensor | IndexedRows  # what the losses and acceptance statistics read targets from


def row_chunk(t: RowsLike, lo: int, hi: int, out: Tensor | None = None) -> Tensor:
    """Rows ``lo:hi`` of ``t`` flattened to ``[R, V]``: a view of a plain tensor (``out`` is
    not used), or gathered for :class:`IndexedRows` (into ``out`` if given)."""
    if isinstance(t, IndexedRows):
        return t.rows(lo, hi, out)
    return t.reshape(-1, t.shape[-1])[lo:hi]


def materialize(t: RowsLike) -> Tensor:
    """``t`` as a plain tensor (gathered if it is :class:`IndexedRows`)."""
    return t.materialize() if isinstance(t, IndexedRows) else t
