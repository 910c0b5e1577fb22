"""Evaluate one trained draft on one domain at one temperature.

Three measurements, reported side by side:
- **expected τ** (teacher-forced, SPEC §4) at every start position of the held-out
  target-generated responses — cheap and paired, but biased at T=1 beyond draft step 1;
- **unbiased τ** (T=1, :mod:`.unbiased`): the draft's own chains verified by the target at
  many start positions in one forward — unbiased for live τ and paired across losses;
- **live τ**: exact speculative decoding (T>0, the real target in the loop) or its exact
  T=0 replay against the cached greedy continuation.
Per-prompt sums are kept so that gains can be bootstrapped by prompt. Each is registered as an
:class:`~specbench.decoding.estimators.Estimator`, which the evaluation job loops over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specbench.decoding.estimators import Estimator, Setting, register_estimator
from specbench.decoding.expected import acceptance_probs, expected_tau
from specbench.decoding.replay import replay_greedy
from specbench.decoding.speculative import DecodeResult, speculative_decode
from specbench.decoding.unbiased import unbiased_tau_by_prompt
from specbench.drafts.align import align
from specbench.drafts.base import Draft
from specbench.features.cache import FeatureCache
from specbench.features.vocab import target_to_draft_map


@dataclass
class ExpectedSums:
    """Teacher-forced sums over one prompt (the unit statistics are clustered by)."""

    anchors: int = 0
    tau_expected_sum: float = 0.0
    in_vocab: int = 0  # anchors whose next response token (step 1's) is in the draft vocabulary


@dataclass
class UnbiasedSums:
    """Unbiased T=1 sums over one prompt."""

    unbiased_anchors: int = 0
    tau_unbiased_sum: float = 0.0
    unbiased_seconds: float = 0.0


@dataclass
class LiveSums:
    """Live-decoding (or T=0 replay) sums over one prompt; per-draft-step counts as lists."""

    rounds: int = 0
    accepted_sum: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0
    target_seconds: float = 0.0
    draft_seconds: float = 0.0
    reached: list[int] | None = None
    accepted_at: list[int] | None = None


@torch.no_grad()
def expected_tau_by_prompt(
    draft: Draft,
    cache: FeatureCache,
    k: int,
    temperature: float,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[int, ExpectedSums]:
    """Teacher-forced expected τ summed per prompt over every response start position.

    Runs on the draft's device, ``batch_size`` sequences at a time (default:
    :func:`expected_batch_size`). ``shard=(rank, world)``: only every ``world``-th batch.
    """
    device = draft.device
    if batch_size is None:
        longest = max(b - a for a, b in zip(cache.offsets, cache.offsets[1:], strict=False))
        batch_size = expected_batch_size(longest, k, draft.info.draft_vocab_size, device)
    t2d = target_to_draft_map(cache.draft_to_target, draft.info.vocab_size).to(device)
    stats: dict[int, ExpectedSums] = {}
    rank, world = shard
    for start in range(rank * batch_size, len(cache), world * batch_size):
        idx = list(range(start, min(start + batch_size, len(cache))))
        batch = cache.batch(idx, device)
        tau, st = expected_batch(draft, batch, k, t2d, temperature)
        rows_per_seq = st.mask.shape[0] // len(idx)
        for r in range(len(idx)):
            sl = slice(r * rows_per_seq, (r + 1) * rows_per_seq)
            valid = st.mask[sl, 0]  # a start position needs its first draft step verifiable
            pid = int(batch["prompt_index"][r])
            s = stats.setdefault(pid, ExpectedSums())
            s.anchors += int(valid.sum())
            s.tau_expected_sum += float(tau[sl][valid].sum())
            s.in_vocab += int((st.labels[sl, 0][valid] != -100).sum())
    return stats


def expected_batch(
    draft: Draft, batch: dict, k: int, t2d: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, object]:
    """Expected τ [N] of every start position of one cache batch, and the aligned steps
    (``align``'s result, whose ``mask`` and ``labels`` the caller sums per prompt): the
    tensor work of :func:`expected_tau_by_prompt`, which the planner traces."""
    st = align(draft, batch, k, t2d)
    argmax_in_draft = t2d[st.target_argmax]
    alpha = acceptance_probs(st.logits, st.target_logprobs, argmax_in_draft, temperature)
    return expected_tau(alpha, st.mask), st


# CUDA memory the float32 [N, K, V] tensors of one expected-τ batch may take together: the
# draft's logits, the target's log-probs, and acceptance_probs' temporaries (p, q, min(p, q)).
# Conservative since the target's log-probs stay the batch's rows by index and acceptance_probs
# works a chunk of rows at a time: of these only the draft's logits are still [N, K, V].
EXPECTED_BUDGET = 16 * 2**30
EXPECTED_TENSORS = 5


def expected_batch_size(length: int, k: int, vocab: int, device: torch.device) -> int:
    """Sequences per expected-τ batch: 8 on a CPU (where memory has never bound); on a GPU as
    many as fit :data:`EXPECTED_BUDGET` (at most 8): MEDUSA over Llama-3.1-8B's full 128k
    vocabulary at K = 6 and ~1,000 tokens holds 3.2 GB per sequence per tensor, so 8 at once
    would take ~125 GB."""
    if torch.device(device).type != "cuda":
        return 8
    per_sequence = EXPECTED_TENSORS * 4 * length * k * vocab
    return max(1, min(8, EXPECTED_BUDGET // per_sequence))


def _add_live(s: LiveSums, res: DecodeResult) -> None:
    s.rounds += res.num_rounds
    s.accepted_sum += sum(res.accepted)
    s.tokens += len(res.tokens)
    s.wall_seconds += res.wall_seconds
    s.target_seconds += res.target_seconds
    s.draft_seconds += res.draft_seconds
    s.reached, s.accepted_at = list(res.reached), list(res.accepted_at)


@torch.no_grad()
def live_tau_by_prompt(
    draft: Draft,
    cache: FeatureCache,
    n_prompts: int,
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    runner=None,
    eos_token_id: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[int, LiveSums]:
    """Live speculative decoding (T>0, needs ``runner``) or exact T=0 replay (no target).

    ``shard=(rank, world)``: only every ``world``-th prompt; each prompt has its own random
    stream, so the union over ranks equals one process's result.
    """
    out: dict[int, LiveSums] = {}
    rank, world = shard
    for i in range(rank, min(n_prompts, len(cache)), world):
        seq = cache.sequence(i)
        pid, m = int(seq["prompt_index"]), int(seq["prompt_len"])
        if temperature == 0:
            res = replay_greedy(
                draft,
                seq["features"],
                seq["input_ids"],
                m,
                cache.draft_to_target,
                max_new_tokens,
                k,
                eos_token_id,
            )
        else:
            # one generator per (seed, prompt): every loss sees the same random stream
            gen = torch.Generator().manual_seed(1_000_003 * seed + pid)
            res = speculative_decode(
                runner,
                draft.start_session(),
                cache.draft_to_target,
                seq["input_ids"][:m],
                max_new_tokens,
                k,
                temperature,
                gen,
                eos_token_id=eos_token_id,
            )
        s = out.setdefault(pid, LiveSums())
        _add_live(s, res)
    return out


def _expected(st: Setting, cache: FeatureCache, temperature: int) -> dict[int, ExpectedSums]:
    return expected_tau_by_prompt(st.draft, cache, st.k, float(temperature), shard=st.shard)


def _live(st: Setting, cache: FeatureCache, temperature: int) -> dict[int, LiveSums]:
    # T=0 replays the cached greedy path without the target: every prompt is cheap
    n = len(cache) if temperature == 0 else st.live_prompts
    return live_tau_by_prompt(
        st.draft, cache, n, st.k, float(temperature), st.live_new_tokens, st.seed,
        runner=st.runner, eos_token_id=st.eos_token_id, shard=st.shard,
    )  # fmt: skip


def _unbiased(st: Setting, cache: FeatureCache, temperature: int) -> dict[int, UnbiasedSums]:
    found = unbiased_tau_by_prompt(
        st.draft, cache, st.runner, st.k, st.seed,
        max_anchors_per_prompt=st.unbiased_anchors, shard=st.shard,
    )  # fmt: skip
    return {pid: UnbiasedSums(u.anchors, u.tau_unbiased_sum, u.seconds) for pid, u in found.items()}


# registration order is the order of the tables' columns
register_estimator(  # live decoding (T=1) / exact replay (T=0): Σ(accepted + 1) / Σ rounds
    Estimator("tau_live", "accepted_plus_rounds", "rounds", LiveSums, _live, headline=(0,))
)
register_estimator(  # teacher-forced (SPEC §4), every start position of the responses
    Estimator("tau_expected", "tau_expected_sum", "anchors", ExpectedSums, _expected)
)
register_estimator(  # the draft's own chains verified by the target, T=1 only
    Estimator(
        "tau_unbiased",
        "tau_unbiased_sum",
        "unbiased_anchors",
        UnbiasedSums,
        _unbiased,
        temperatures=(1,),
        headline=(1,),
    )  # fmt: skip
)
