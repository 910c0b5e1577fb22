"""T=0 replay: greedy speculative decoding without running the target again.

At T=0 speculative decoding emits exactly the target's greedy continuation, and the target
features of every committed position are those of that continuation. Both can be computed
once per (target, domain) — the ``eval_t0`` feature cache — and every draft × loss is then
evaluated by replaying the verification rounds against it: a drafted token is accepted iff
it equals the cached greedy token, and the draft is extended with cached features. The
result equals live decoding (``tests/test_replay.py`` checks it), which is what keeps a
685B-target matrix affordable at T=0.
"""

from __future__ import annotations

import time

import torch

from specbench.decoding.speculative import DecodeResult
from specbench.drafts.base import Draft


def _greedy(logits: torch.Tensor) -> int:
    return int(logits.argmax())


@torch.no_grad()
def replay_greedy(
    draft: Draft,
    features: torch.Tensor,  # [L, 4, d] of prompt + greedy response
    tokens: torch.Tensor,  # [L] prompt + greedy response (target ids)
    prompt_len: int,
    draft_to_target: torch.Tensor,
    max_new_tokens: int,
    k: int,
    eos_token_id: int | None = None,
) -> DecodeResult:
    """Replay greedy verification rounds; bookkeeping mirrors :func:`speculative_decode`.

    Every verified draft position needs its greedy token in the cache, EOS or not (live
    decoding verifies a whole round before it cuts at EOS): ``tokens`` must hold the greedy
    continuation generated *through* EOS, ``max_new_tokens + k`` tokens past the prompt.
    """
    t0 = time.perf_counter()
    device = getattr(draft, "device", features.device)
    features, draft_to_target = features.to(device), draft_to_target.to(device)
    tokens = tokens.tolist()
    end = len(tokens)
    res = DecodeResult.for_rounds(k)
    session = draft.start_session()
    session.begin(tokens[0])
    m = prompt_len
    res.tokens = [tokens[m]]  # the first token comes from the target's prefill
    # the prompt's positions, each paired with the token that follows it
    session.extend(features[:m], torch.tensor(tokens[1 : m + 1], device=device))
    c = m  # tokens[c] is the last emitted token; the target has processed tokens[:c]
    stop = eos_token_id is not None and tokens[m] == eos_token_id
    while not stop and len(res.tokens) < max_new_tokens:
        ids, _ = session.propose(k, _greedy)
        drafted = draft_to_target[ids].tolist()
        accepted = 0
        for j, tok in enumerate(drafted):
            if c + 1 + j >= end:
                raise ValueError(
                    "cached greedy continuation too short to verify the round; "
                    "generate eval_t0 responses with max_new_tokens >= live tokens + k"
                )
            res.reached[j] += 1
            # T=0 accept rule: the draft token must be the target's greedy token
            if tok != tokens[c + 1 + j]:
                break
            res.accepted_at[j] += 1
            res.alpha_sum[j] += 1.0
            accepted += 1
        new = tokens[c + 1 : c + 2 + accepted]  # accepted drafts + correction/bonus token
        res.accepted.append(accepted)
        res.tokens += new
        res.emitted.append(len(new) - res.cut(max_new_tokens, eos_token_id))
        stop = res.stopped_by_eos
        if not stop and len(res.tokens) < max_new_tokens:
            session.extend(features[c : c + accepted + 1], torch.tensor(new, device=device))
        c += accepted + 1
    res.cut(max_new_tokens, eos_token_id)
    res.wall_seconds = time.perf_counter() - t0
    res.draft_seconds = res.wall_seconds
    return res
