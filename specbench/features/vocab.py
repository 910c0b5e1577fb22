"""The draft vocabulary: which target tokens a draft can emit.

Two kinds (``VOCABS``): ``truncated``, the most frequent target tokens of the training
responses (EAGLE-3's d2t map), and ``full``, every target token (the identity map; MEDUSA,
the MLP speculator, MTP and DFlash draft over it in their references).

``draft_to_target[d]`` is the target id of draft id ``d``; its inverse maps every target id
to a draft id, or ``-100`` off the draft vocabulary (the label ignored by cross-entropy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

VOCABS = ("truncated", "full")
NEVER = np.iinfo(np.int64).max  # first position of a token not seen yet


class TokenCounts:
    """Token frequencies over a stream of responses, in memory O(vocabulary), not O(tokens).

    Ids are buffered into flat arrays of up to ``buffer`` tokens and counted with
    ``np.bincount``: 660k responses of Infinity-Instruct held as Python lists would take
    ~20 GB, their counts take a few MB. Each token's first position in the stream is kept
    too, so that equal counts rank by first appearance, as ``Counter.most_common`` does.
    """

    def __init__(self, buffer: int = 1 << 20) -> None:
        self.counts = np.zeros(0, dtype=np.int64)
        self.first = np.zeros(0, dtype=np.int64)
        self.total = 0  # tokens counted
        self._buffer, self._pending, self._pending_len = buffer, [], 0

    def add(self, ids: Sequence[int]) -> None:
        """Count one response's token ids."""
        if len(ids):
            self._pending.append(np.asarray(ids, dtype=np.int64))
            self._pending_len += len(ids)
            if self._pending_len >= self._buffer:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        ids = np.concatenate(self._pending)
        self._pending, self._pending_len = [], 0
        top = int(ids.max()) + 1
        if top > self.counts.size:  # ids beyond any seen so far: grow both tables
            grow = top - self.counts.size
            self.counts = np.concatenate([self.counts, np.zeros(grow, dtype=np.int64)])
            self.first = np.concatenate([self.first, np.full(grow, NEVER, dtype=np.int64)])
        self.counts += np.bincount(ids, minlength=self.counts.size)
        seen, where = np.unique(ids, return_index=True)
        new = self.first[seen] == NEVER
        self.first[seen[new]] = self.total + where[new]
        self.total += ids.size

    def ranked(self) -> np.ndarray:
        """The ids seen, most frequent first; equal counts by first appearance."""
        self._flush()
        ids = np.flatnonzero(self.counts)
        return ids[np.lexsort((self.first[ids], -self.counts[ids]))]

    def covered(self, ids: Iterable[int]) -> int:
        """How many of the counted tokens are one of ``ids``."""
        self._flush()
        keep = np.fromiter(ids, dtype=np.int64)
        return int(self.counts[keep[keep < self.counts.size]].sum())


def count_tokens(responses: Iterable[Sequence[int]]) -> TokenCounts:
    """:class:`TokenCounts` of a stream of responses (read once, never held)."""
    counts = TokenCounts()
    for ids in responses:
        counts.add(ids)
    return counts


def build_draft_vocab(
    responses: Iterable[Sequence[int]] | TokenCounts, size: int, always: tuple[int, ...] = ()
) -> tuple[torch.Tensor, float]:
    """Most frequent response tokens (plus ``always``); returns (draft→target ids, coverage).

    ``responses``: token ids per response (any iterable, streamed), or their counts.
    Coverage is the fraction of response tokens inside the draft vocabulary: an upper bound
    on what any draft can be accepted on.
    """
    counts = responses if isinstance(responses, TokenCounts) else count_tokens(responses)
    ranked = counts.ranked()
    keep = list(dict.fromkeys([*always, *ranked[: size + len(always)].tolist()]))[:size]
    coverage = counts.covered(keep) / max(counts.total, 1)
    return torch.tensor(sorted(keep), dtype=torch.long), coverage


def target_to_draft_map(draft_to_target: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Inverse id map: target id → draft id, ``-100`` for tokens outside the draft vocab."""
    inv = torch.full((vocab_size,), -100, dtype=torch.long)
    inv[draft_to_target] = torch.arange(draft_to_target.numel())
    return inv


def vocab_payload(
    responses: Iterable[Sequence[int]], size: int, always: tuple[int, ...] = ()
) -> dict:
    """The draft vocabulary file's content: the id map, its size and its coverage."""
    counts = count_tokens(responses)
    d2t, coverage = build_draft_vocab(counts, size, always)
    return {
        "draft_to_target": d2t.tolist(),
        "size": int(d2t.numel()),
        "train_response_tokens": counts.total,
        "coverage": coverage,
    }


def full_vocab_payload(vocab_size: int) -> dict:
    """The identity map over all ``vocab_size`` target tokens (coverage 1 by construction)."""
    return {"draft_to_target": list(range(vocab_size)), "size": vocab_size, "coverage": 1.0}
