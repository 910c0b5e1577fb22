"""Unbiased, paired T=1 acceptance length from branch verification (SPEC §4).

Anchor ``s`` (convention of :mod:`specbench.drafts.base`): the target has processed
``x_0..x_s`` and emitted ``x_{s+1}``; a live round starting there drafts ``d_1..d_K ~ q`` (the
draft's own chain) and accepts ``d_k`` with probability ``r_k = min(1, p_k(d_k)/q_k(d_k))``,
where ``p_k`` is the target's T=1 law at position ``s+k`` given ``[x_0..x_{s+1}, d_1..d_{k-1}]``.
Per anchor we sample one chain exactly as live decoding does, score the branch
``[x_0..x_{s+1}, d_1..d_{K-1}]`` with the target and return

    τ̂(s) = 1 + Σ_k (Π_{j<k} r_j) · α_k,      α_k = Σ_v min(p_k(v), q_k(v)) given d_<k.

It is unbiased for the live τ of a round starting at ``s``. Proof sketch: the live round
accepts ``N = Σ_k 1[A_k]`` drafts, ``A_k`` = "the first ``k`` are accepted", so
``E[τ] = 1 + Σ_k P(A_k)``. Given the chain, the accept coins are independent with
probabilities ``r_j``, and ``E_{d_k ~ q_k}[r_k] = Σ_v q_k(v) min(1, p_k(v)/q_k(v)) = α_k``, so

    P(A_k) = E_{d_≤k ~ q}[Π_{j≤k} r_j] = E_{d_<k ~ q}[Π_{j<k} r_j · α_k].

τ̂ is this with the coins and the last draw integrated out (lower variance than one live
round), and the target is scored on the draft's own tokens, not the target's path: the
teacher-forced ``expected_tau`` conditions step ``k ≥ 2`` on ``x ~ p`` instead, which biases
it by an amount that depends on the draft. ``q`` is zero off the draft vocabulary, so ``p``
normalised over the full vocabulary and sliced to the draft vocabulary is all it needs.

Cost: the branches of ``batch_size`` anchors are scored in one forward against the KV
cache of the prefix up to the last anchor (``K − 1`` tokens each, a 4D tree mask, explicit
position ids) and cropped off again: ``K − 1`` target tokens per anchor. ``p_1`` is the
cached distribution at ``s + 1``. The prefix KV is the target's over the whole sequence,
cropped (:func:`prefix_cache`): read from the feature cache where its ``kv`` rows were
stored once for every draft (``eval.prefix_kv``; :mod:`specbench.targets.kv` in the
features job), else prefilled here (the sequence's ``T`` tokens, about half the
estimator's time on SmolLM2-135M). Both are the same :func:`prefill`, so τ̂ does not depend
on which.

Random numbers: draft step ``j`` at anchor ``s`` samples by inverse CDF with a uniform of a
SplitMix stream per ``(seed, prompt_index, s)`` (as :mod:`.speculative` does per output
position), so every draft evaluated with the same seed sees the same uniforms at the same
place: paired.

``greedy_draft=True`` scores the rule vLLM's speculative decoding applies by default
(``draft_sample_method="greedy"``): the draft proposes its argmax chain and the verifier
treats ``q`` as one-hot there, so ``r_j = α_j = p_j(d_j)``. Still lossless for the output,
but its τ is ``1 + Σ_k Π_{j≤k} p_j(d_j)``, not the exact speculative sampling's; with it the
same estimator is exact (no draw to average over) for that rule.

A mean over all anchors weighs every response position once, live τ weighs the positions
where rounds happen to start; the two agree on the tiny targets of ``tests/test_unbiased.py``
(which also checks τ̂ at the live rounds' own starts, where it is exact in expectation).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from specbench.decoding.speculative import position_uniforms, splitmix64
from specbench.targets.kv import attention_masks, cache_from_kv, model_dtype, prefill

if TYPE_CHECKING:
    from specbench.drafts.base import Draft, SampleFn
    from specbench.targets.runner import TargetRunner

_MASK64 = (1 << 64) - 1
_SUBSAMPLE = 1 << 62  # stream index of the anchor sub-sampling (positions never get there)


@dataclass
class UnbiasedStats:
    """Sums over one prompt (the unit statistics are clustered by)."""

    prompt_index: int
    anchors: int = 0
    tau_unbiased_sum: float = 0.0
    target_tokens: int = 0  # tokens through the target here: prefill (0 if stored), branches
    seconds: float = 0.0


def unbiased_tau(r: torch.Tensor, alpha: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``τ̂ = 1 + Σ_k [Π_{j<k} r_j] · α_k`` per anchor [N] (float64) from ``[N, K]`` inputs.

    ``r[:, j]`` is the accept probability ``min(1, p_j(d_j)/q_j(d_j))`` of the sampled draft
    token (``r[:, K-1]`` is not used), ``alpha[:, k]`` is ``Σ_v min(p_k, q_k)`` given the
    sampled ``d_<k``. A step that is not valid (past the response) stops the chain there, as
    in :func:`specbench.decoding.expected.expected_tau`.

    Unbiased for ``E[τ] = 1 + Σ_k P(first k accepted)`` of a live round when ``d ~ q``:
    ``P(first k accepted) = E_{d_≤k}[Π_{j≤k} r_j] = E_{d_<k}[Π_{j<k} r_j · α_k]``, since
    ``E_{d_k ~ q_k}[r_k] = Σ_v min(p_k(v), q_k(v)) = α_k`` (module docstring).
    """
    if not r.shape == alpha.shape == valid.shape or r.dim() != 2:
        raise ValueError(f"r {tuple(r.shape)}, alpha {tuple(alpha.shape)}, valid: want [N, K]")
    alive = valid.bool().long().cumprod(dim=1).bool()  # False from the first invalid step on
    ones = torch.ones_like(r[:, :1], dtype=torch.float64)
    reach = torch.cat([ones, r[:, :-1].double()], dim=1).cumprod(dim=1)  # Π_{j<k} r_j
    zero = torch.zeros((), dtype=torch.float64, device=r.device)
    return 1.0 + torch.where(alive, reach * alpha.double(), zero).sum(dim=1)


def _crn_sampler(stream: int) -> SampleFn:
    """T=1 inverse-CDF draft sampler; the j-th call uses uniform ``j`` of ``stream``."""
    calls = itertools.count()

    def sample_fn(z: torch.Tensor) -> int:
        u = position_uniforms(stream, next(calls))[0]
        cdf = torch.softmax(z.float(), dim=-1).double().cumsum(0)  # never picks zero mass
        return int(torch.searchsorted(cdf, cdf[-1:] * u, right=True).clamp_max(cdf.numel() - 1))

    return sample_fn


def _propose_checked(session, k: int, sample) -> tuple[torch.Tensor, torch.Tensor]:
    """``session.propose``, asserting the draft sampled from exactly the logits it returns:
    τ̂ uses those as ``q``, so a draft that sampled from others (a top-k, a temperature)
    would bias the estimate silently."""
    seen: list[torch.Tensor] = []

    def recording(z: torch.Tensor) -> int:
        seen.append(z.detach())
        return sample(z)

    d, logits = session.propose(k, recording)
    given = logits.detach().float().reshape(k, -1)
    if len(seen) != k or not torch.equal(torch.stack(seen).float().to(given.device), given):
        raise ValueError("the draft returned other logits than it sampled its tokens from")
    return d, logits


def _argmax(z: torch.Tensor) -> int:
    """The greedy draft step (vLLM's default ``draft_sample_method``)."""
    return int(z.argmax())


@torch.no_grad()
def prefix_cache(runner: TargetRunner, seq: dict, n: int) -> tuple[DynamicCache, int]:
    """(KV cache of the first ``n`` positions of a cached sequence, target tokens run for it).

    From the sequence's stored ``kv`` rows when the cache has them (no forward), else one
    :func:`prefill` of the whole sequence cropped to ``n``: the rows are that same prefill
    (``specbench.targets.kv.sequence_kv``), so both caches hold the same numbers.
    (Prefilling only ``n`` tokens would differ in the last bits: the attention kernels block
    by sequence length.)
    """
    if "kv" in seq:
        return cache_from_kv(seq["kv"], n, runner.device), 0
    ids = seq["input_ids"]
    cache = prefill(runner, ids.long())
    # this transformers' crop takes minus the tokens to remove (0: a no-op); keep the first n
    cache.crop(n - cache.get_seq_length())
    return cache, ids.numel()


@torch.no_grad()
def score_branches(
    runner: TargetRunner,
    cache: DynamicCache,
    anchors: torch.Tensor,  # [B] anchor positions s (≤ E − 1)
    branch_ids: torch.Tensor,  # [B, K-1] target ids d_1..d_{K-1}
    draft_to_target: torch.Tensor,  # [Vd]
) -> torch.Tensor:
    """``log p`` [B, K-1, Vd] of steps 2..K: full-vocabulary log-softmax, sliced.

    One forward of the ``B·(K−1)`` branch tokens against the prefix cache (``E + 1`` entries):
    branch token ``j`` of anchor ``s`` sits at position ``s + 1 + j`` and sees the prefix up to
    ``s + 1`` and its own branch's tokens ``≤ j``. The cache is cropped back afterwards.
    """
    model, dev = runner.model, runner.device
    B, n_steps = branch_ids.shape
    if B == 0 or n_steps == 0:
        return torch.zeros((B, n_steps, draft_to_target.numel()), device=dev)
    n_pre = cache.get_seq_length()
    anc = anchors.to(dev).long().repeat_interleave(n_steps)  # [n] anchor of each branch token
    step = torch.arange(1, n_steps + 1, device=dev).repeat(B)  # [n] j of each branch token
    q_pos = anc + 1 + step
    pre = torch.arange(n_pre, device=dev)
    own = (anc[:, None] == anc[None, :]) & (step[None, :] <= step[:, None])  # [n, n]
    allowed = torch.cat([pre[None, :] <= anc[:, None] + 1, own], dim=1)  # [n, n_pre + n]
    mask = attention_masks(
        model.config, allowed, q_pos, torch.cat([pre, q_pos]), model_dtype(model)
    )
    out = model(
        input_ids=branch_ids.to(dev).reshape(1, -1),
        attention_mask=mask,
        position_ids=q_pos[None],
        past_key_values=cache,
        use_cache=True,
    )
    cache.crop(-q_pos.numel())
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # [n, V]: full-vocab normaliser
    return logp.index_select(-1, draft_to_target.to(dev)).view(B, n_steps, -1)


def response_anchors(seq: dict, seed: int, max_anchors: int | None = None) -> torch.Tensor:
    """Anchors [A] of a cached sequence: ``x_{s+1}`` and ``x_{s+2}`` are response tokens.

    (Unlike teacher-forced expected τ, ``s = prompt_len − 2`` is left out: no live round
    starts there.) ``max_anchors``: a random subset, sorted, drawn from the
    ``(seed, prompt_index)`` stream only — the same anchors for every draft.
    """
    mask, m = seq["loss_mask"].bool(), int(seq["prompt_len"])
    s = torch.arange(max(m - 1, 0), mask.numel() - 1)
    s = s[mask[s + 1]]
    if max_anchors is not None and s.numel() > max_anchors:
        state = splitmix64(splitmix64(seed & _MASK64, int(seq["prompt_index"])), _SUBSAMPLE)
        g = torch.Generator().manual_seed(state >> 1)
        s = s[torch.randperm(s.numel(), generator=g)[:max_anchors]].sort().values
    return s


@torch.no_grad()
def sequence_unbiased_tau(
    draft: Draft,
    seq: dict,
    draft_to_target: torch.Tensor,
    runner: TargetRunner,
    k: int,
    seed: int,
    max_anchors: int | None = None,
    batch_size: int = 64,
    anchors: torch.Tensor | None = None,
    greedy_draft: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(anchors [A], τ̂ [A] float64, target tokens) of one cached sequence (see module doc).

    ``anchors``: increasing positions to evaluate instead of :func:`response_anchors`.
    ``greedy_draft``: the draft proposes its argmax and ``q`` is one-hot there (vLLM's
    default draft sampling).
    """
    ids, mask = seq["input_ids"].long(), seq["loss_mask"].bool()
    if anchors is None:
        anchors = response_anchors(seq, seed, max_anchors)
    taus = [torch.zeros(0, dtype=torch.float64)]
    if anchors.numel() == 0:
        return anchors, taus[0], 0
    ddev, tdev = draft.device, runner.device
    base = splitmix64(seed & _MASK64, int(seq["prompt_index"]))
    d2t = draft_to_target.long()
    feats, nxt = seq["features"].to(ddev).float(), ids.to(ddev)
    # step k of anchor s is valid iff x_{s+1+k} is a response token, i.e. loss_mask[s + k]
    pos = anchors[:, None] + torch.arange(1, k + 1)  # [A, K]
    valid = (pos < ids.numel()) & mask[pos.clamp(max=ids.numel() - 1)]
    cache, tokens = prefix_cache(runner, seq, int(anchors[-1]) + 2) if k > 1 else (None, 0)
    session, done = draft.start_session(), 0
    session.begin(int(nxt[0]))
    for a in range(0, anchors.numel(), batch_size):
        chunk = anchors[a : a + batch_size]
        d_ids, z = [], []
        for s in chunk.tolist():
            session.extend(feats[done : s + 1], nxt[done + 1 : s + 2])  # positions done..s
            done = s + 1
            sample = _argmax if greedy_draft else _crn_sampler(splitmix64(base, s))
            d, logits = _propose_checked(session, k, sample)
            d_ids.append(d.to(tdev).long().view(k))
            z.append(logits.to(tdev).float().view(k, -1))
        d_ids, z = torch.stack(d_ids), torch.stack(z)  # [B, K], [B, K, Vd]
        logp1 = seq["logprobs"][chunk + 1].to(tdev).float()[:, None]  # p_1: cached at s + 1
        if cache is not None:
            tokens += d_ids[:, :-1].numel()
        valid_chunk = valid[a : a + batch_size].to(tdev)
        tau = verify_chunk(runner, cache, chunk, d_ids, z, logp1, d2t, valid_chunk, greedy_draft)
        taus.append(tau.cpu())
    return anchors, torch.cat(taus), tokens


def verify_chunk(
    runner: TargetRunner, cache: DynamicCache | None, chunk: torch.Tensor, d_ids: torch.Tensor,
    z: torch.Tensor, logp1: torch.Tensor, d2t: torch.Tensor, valid: torch.Tensor,
    greedy_draft: bool = False,
) -> torch.Tensor:  # fmt: skip
    """τ̂ [B] of one chunk of anchors from their drafted chains ``d_ids`` [B, K] and draft
    logits ``z`` [B, K, Vd]: the target scores the branches (steps 2..K; ``logp1`` [B, 1, Vd]
    is step 1's cached log-probs). The tensor work of :func:`sequence_unbiased_tau`, which
    the planner traces."""
    q = torch.softmax(z, dim=-1)
    if greedy_draft:
        q = torch.nn.functional.one_hot(d_ids, q.shape[-1]).to(q.dtype)
    branches = d2t.to(logp1.device)[d_ids[:, :-1]]  # [B, K-1] target ids d_1..d_{K-1}
    logp = torch.cat([logp1, score_branches(runner, cache, chunk, branches, d2t)], dim=1)
    p = logp.exp()  # [B, K, Vd], not renormalised: mass off the draft vocab is never accepted
    alpha = torch.minimum(p, q).sum(-1)
    at = d_ids[..., None]  # [B, K, 1]: the sampled tokens
    p_tok, q_tok = p.gather(-1, at)[..., 0], q.gather(-1, at)[..., 0]
    r = (p_tok / q_tok.clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)
    return unbiased_tau(r, alpha, valid)


@torch.no_grad()
def unbiased_tau_by_prompt(
    draft: Draft,
    cache,  # specbench.features.cache.FeatureCache of held-out T=1 responses
    runner: TargetRunner,
    k: int,
    seed: int,
    n_prompts: int | None = None,
    max_anchors_per_prompt: int | None = None,
    batch_size: int = 64,
    shard: tuple[int, int] = (0, 1),
    greedy_draft: bool = False,
) -> dict[int, UnbiasedStats]:
    """Branch-verified unbiased T=1 τ summed per prompt over the response anchors.

    ``n_prompts``: the first cached sequences only (all by default). ``max_anchors_per_prompt``
    sub-samples anchors deterministically from ``(seed, prompt_index)`` — the same subset for
    every draft, so comparisons stay paired. ``batch_size``: anchors per branch forward.
    ``shard=(rank, world)``: every ``world``-th sequence; each has its own random streams, so
    the union over ranks equals one process's result. ``greedy_draft``: vLLM's default
    draft sampling (:func:`sequence_unbiased_tau`).
    """
    if hasattr(draft, "check_k"):
        draft.check_k(k)
    out: dict[int, UnbiasedStats] = {}
    rank, world = shard
    n = len(cache) if n_prompts is None else min(n_prompts, len(cache))
    for i in range(rank, n, world):
        t0 = time.perf_counter()
        seq = cache.sequence(i)
        _, tau, tokens = sequence_unbiased_tau(
            draft,
            seq,
            cache.draft_to_target,
            runner,
            k,
            seed,
            max_anchors_per_prompt,
            batch_size,
            greedy_draft=greedy_draft,
        )
        pid = int(seq["prompt_index"])
        st = out.setdefault(pid, UnbiasedStats(pid))
        st.anchors += tau.numel()
        st.tau_unbiased_sum += float(tau.sum())
        st.target_tokens += tokens
        st.seconds += time.perf_counter() - t0
    return out
