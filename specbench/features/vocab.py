"""The draft vocabulary: which target tokens a draft can emit.

Two kinds (``VOCABS``): ``truncated``, the most frequent target tokens of the training
responses (EAGLE-3's d2t map), and ``full``, every target token (the identity map; MEDUSA,
the MLP speculator, MTP and DFlash draft over it in their references).

``draft_to_target[d]`` is the target id of draft id ``d``; its inverse maps every target id
to a draft id, or ``-100`` off the draft vocabulary (the label ignored by cross-entropy).
"""

from __future__ import annotations

from collections import Counter

import torch

VOCABS = ("truncated", "full")


def build_draft_vocab(
    responses: list[list[int]], size: int, always: tuple[int, ...] = ()
) -> tuple[torch.Tensor, float]:
    """Most frequent response tokens (plus ``always``); returns (draft→target ids, coverage).

    Coverage is the fraction of response tokens inside the draft vocabulary: an upper bound
    on what any draft can be accepted on.
    """
    counts = Counter(t for r in responses for t in r)
    keep = list(dict.fromkeys([*always, *(t for t, _ in counts.most_common())]))[:size]
    total = sum(counts.values())
    covered = sum(counts[t] for t in keep)
    return torch.tensor(sorted(keep), dtype=torch.long), covered / max(total, 1)


def target_to_draft_map(draft_to_target: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Inverse id map: target id → draft id, ``-100`` for tokens outside the draft vocab."""
    inv = torch.full((vocab_size,), -100, dtype=torch.long)
    inv[draft_to_target] = torch.arange(draft_to_target.numel())
    return inv


def vocab_payload(responses: list[list[int]], size: int, always: tuple[int, ...] = ()) -> dict:
    """The draft vocabulary file's content: the id map, its size and its coverage."""
    d2t, coverage = build_draft_vocab(responses, size, always)
    return {
        "draft_to_target": d2t.tolist(),
        "size": int(d2t.numel()),
        "train_response_tokens": sum(map(len, responses)),
        "coverage": coverage,
    }


def full_vocab_payload(vocab_size: int) -> dict:
    """The identity map over all ``vocab_size`` target tokens (coverage 1 by construction)."""
    return {"draft_to_target": list(range(vocab_size)), "size": vocab_size, "coverage": 1.0}
