"""Teacher-forced expected acceptance length (SPEC §4).

At every anchor of a held-out target-generated response, draft step ``k`` is accepted with
probability ``α_k = Σ_v min(p_k(v), q_k(v))`` given the target's own prefix, so the expected
number of tokens per verification round is ``1 + Σ_k Π_{j≤k} α_j`` (the ``1`` is the
bonus/correction token, matching live τ). This conditions on the target's path rather than
on the draft's own accepted tokens — exact for step 1, an approximation beyond it that the
live/expected comparison checks.
"""

from __future__ import annotations

import torch

from specbench.acceptance import alpha
from specbench.losses.rows import RowsLike, row_chunk
from specbench.losses.rowstats import default_chunk_rows


def expected_tau(alpha: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Expected τ per anchor: ``1 + Σ_k Π_{j≤k} α_j`` [N] from ``alpha``, ``valid`` [N, K].

    A step that is not valid (it would run past the response) stops the chain there: it and
    every later step contribute nothing, even if a later step were marked valid.
    """
    if alpha.shape != valid.shape or alpha.dim() != 2:
        raise ValueError(f"alpha {tuple(alpha.shape)} and valid {tuple(valid.shape)}: want [N, K]")
    alive = valid.bool().long().cumprod(dim=1).bool()  # False from the first invalid step on
    a = torch.where(alive, alpha.double(), torch.zeros((), dtype=torch.float64))
    return 1.0 + a.cumprod(dim=1).sum(dim=1)


def acceptance_probs(
    draft_logits: torch.Tensor,
    target_logprobs: RowsLike,
    target_argmax_in_draft: torch.Tensor,
    temperature: float,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Per-step acceptance probability α [N, K] of a draft against the target, in fp32.

    Args:
        draft_logits: [N, K, Vd] draft logits over the draft vocabulary.
        target_logprobs: [N, K, Vd] target log-probabilities normalised over the *full* target
            vocabulary, then sliced to the draft vocabulary (not renormalised: mass outside the
            draft vocabulary can never be accepted); a tensor or
            :class:`~specbench.losses.rows.IndexedRows`.
        target_argmax_in_draft: [N, K] draft id of the target's argmax, ``-1`` if the argmax
            lies outside the draft vocabulary (then nothing is accepted at T=0).
        temperature: ``1`` → ``α = Σ_v min(p(v), q(v))``; ``0`` → ``α = 1{argmax q = argmax p}``.
        chunk_rows: rows (anchor × step) per chunk at T=1 (default: as the losses',
            :func:`~specbench.losses.rowstats.default_chunk_rows`): ``p``, ``q`` and
            ``min(p, q)`` are float32 ``[chunk_rows, Vd]`` temporaries, not ``[N, K, Vd]``.

    Other temperatures would need the target's full-vocabulary normaliser of ``p^(1/T)``,
    which the sliced log-probabilities do not carry, so they are rejected.
    """
    if temperature == 0:
        return (draft_logits.argmax(dim=-1) == target_argmax_in_draft).float()
    if temperature != 1:
        raise ValueError(
            f"acceptance_probs supports T=0 and T=1 exactly, not T={temperature}: tempering "
            "sliced target log-probabilities needs the full-vocabulary normaliser"
        )
    *lead, v = draft_logits.shape
    z = draft_logits.reshape(-1, v)  # [R, Vd]
    out = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    step = chunk_rows or default_chunk_rows(v, z.device)
    for lo in range(0, z.shape[0], step):
        hi = min(z.shape[0], lo + step)
        q = torch.softmax(z[lo:hi].float(), dim=-1)
        p = row_chunk(target_logprobs, lo, hi).float().exp()
        out[lo:hi] = alpha(p, q)
    return out.view(lead)
