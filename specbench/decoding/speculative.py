"""Exact chain speculative sampling (Leviathan et al. 2023; Chen et al. 2023), batch size 1.

Conventions shared by :func:`speculative_decode` and :func:`target_decode`
-------------------------------------------------------------------------
* ``p = softmax(target_logits / T)`` and ``q = softmax(draft_logits / T)``; at ``T = 0`` both
  are one-hot (argmax), so the same accept rule gives "accept iff the draft token is the
  target argmax" and the correction/bonus token is the target argmax.
* The draft works in its own truncated vocabulary; ``q`` is lifted to the target vocabulary
  with ``draft_to_target`` (``q(v) = 0`` off the draft vocabulary).
* Randomness and pairing: the first draw from ``generator`` is a base seed; every *output
  position* ``t`` then has its own stream ``(base, t)`` giving the accept uniform and the
  uniform for inverse-CDF sampling of the correction / bonus / plain token at ``t``. The rest
  of ``generator`` drives only the draft's own sampling. Callers seed one generator per
  (seed, prompt index); every draft (and target-only decoding) then sees the same uniforms
  at the same output position, which makes live comparisons between losses paired.
* τ = mean over verification rounds of (accepted + 1): the bonus/correction token is always
  counted. Acceptance statistics record the *full* verification outcome of every round, also
  of a last round whose tokens were cut by ``max_new_tokens`` or EOS: the target did verify
  those draft tokens with the right prefix, and dropping them would make the last round look
  like an early rejection and bias τ down. ``tokens`` holds only what was emitted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from specbench.acceptance import alpha
from specbench.drafts.base import DraftSession
from specbench.targets.runner import TargetRunner


@dataclass
class DecodeResult:
    """Tokens and acceptance bookkeeping of one decoded sequence (prompt excluded)."""

    tokens: list[int]  # emitted target ids, at most max_new_tokens, ending at EOS if hit
    k: int  # draft length per round (0 for target-only decoding)
    accepted: list[int] = field(default_factory=list)  # per round: accepted drafts, 0..k
    emitted: list[int] = field(default_factory=list)  # per round: tokens kept after truncation
    reached: list[int] = field(default_factory=list)  # [k]: rounds that verified position j
    accepted_at: list[int] = field(default_factory=list)  # [k]: rounds that accepted at j
    alpha_sum: list[float] = field(default_factory=list)  # [k]: Σ_v min(p,q) over reached
    target_forwards: int = 0  # prefill included
    target_seconds: float = 0.0  # target forwards + KV-cache crops
    draft_seconds: float = 0.0  # session.extend + session.propose (incl. its sampling)
    wall_seconds: float = 0.0  # whole call; the rest is accept/reject bookkeeping
    stopped_by_eos: bool = False

    @classmethod
    def for_rounds(cls, k: int) -> DecodeResult:
        """An empty result with per-position counters for a ``k``-token draft chain."""
        return cls(tokens=[], k=k, reached=[0] * k, accepted_at=[0] * k, alpha_sum=[0.0] * k)

    def cut(self, max_new_tokens: int, eos_token_id: int | None) -> int:
        """Cut ``tokens`` after the first EOS and at the budget; return how many were dropped."""
        n = len(self.tokens)
        if eos_token_id is not None and eos_token_id in self.tokens:
            self.tokens = self.tokens[: self.tokens.index(eos_token_id) + 1]
            self.stopped_by_eos = True
        self.tokens = self.tokens[:max_new_tokens]
        return n - len(self.tokens)

    @property
    def num_rounds(self) -> int:
        return len(self.accepted)

    @property
    def drafted(self) -> int:
        return self.k * self.num_rounds

    @property
    def tau(self) -> float:
        """Mean accepted length per round, bonus token included: ``K·accepted/drafted + 1``."""
        return 1.0 + sum(self.accepted) / self.num_rounds if self.accepted else float("nan")

    @property
    def acceptance_rates(self) -> list[float]:
        """Conditional acceptance ``a_j = accepted_at[j] / reached[j]`` (nan if never reached)."""
        pairs = zip(self.accepted_at, self.reached, strict=True)
        return [a / r if r else float("nan") for a, r in pairs]

    @property
    def mean_alpha(self) -> float:
        """Mean of ``Σ_v min(p, q)`` over all verified draft positions on the accepted path."""
        n = sum(self.reached)
        return sum(self.alpha_sum) / n if n else float("nan")


_MASK64, _GOLDEN = (1 << 64) - 1, 0x9E3779B97F4A7C15


def splitmix64(state: int, index: int) -> int:
    """Output ``index`` of the SplitMix64 generator seeded with ``state`` (random access)."""
    z = (state + (index + 1) * _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def position_uniforms(base_seed: int, position: int) -> tuple[float, float]:
    """(accept uniform, sampling uniform) in [0, 1) of output ``position``; order-independent.

    Outputs ``2·position`` and ``2·position + 1`` of a SplitMix64 stream: counter-based, so
    any draft reads the same numbers at the same output position whatever it did before.
    """
    a, b = splitmix64(base_seed, 2 * position), splitmix64(base_seed, 2 * position + 1)
    return (a >> 11) * 2.0**-53, (b >> 11) * 2.0**-53


def _base_seed(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) in float32, one-hot argmax at T = 0."""
    if temperature == 0:
        idx = logits.argmax(-1, keepdim=True)
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, idx, 1.0)
    return torch.softmax(logits.float() / temperature, dim=-1)


def _sample(probs: torch.Tensor, u: float) -> int:
    """Inverse-CDF draw from an unnormalised ``probs`` [V]; never picks a zero-mass token."""
    cdf = probs.double().cumsum(0)
    idx = torch.searchsorted(cdf, cdf[-1:] * u, right=True)
    return int(idx.clamp_max(probs.numel() - 1))


def _accept(p_tok: float, q_tok: float, u: float) -> bool:
    """Accept a draft token with probability ``min(1, p/q)``; written without dividing."""
    return u * q_tok < p_tok


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(p − q)₊``; if it vanishes numerically (p ≈ q), fall back to ``p``."""
    r = (p - q).clamp_min(0.0)
    return r if float(r.sum()) > 0 else p


def _draft_sampler(temperature: float, generator: torch.Generator | None):
    def sample_fn(z: torch.Tensor) -> int:
        if temperature == 0:
            return int(z.argmax())
        probs = torch.softmax(z.float() / temperature, dim=-1)
        if generator is not None and probs.device != generator.device:
            probs = probs.to(generator.device)
        return int(torch.multinomial(probs, 1, generator=generator))

    return sample_fn


def _sync(device: torch.device) -> float:
    """Wall clock after pending device work has finished, so timings are honest on GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _prefill(runner: TargetRunner, prompt_ids: torch.Tensor):
    step = runner.forward(prompt_ids.view(1, -1))
    cache = step.past_key_values
    # sliding-window / linear-attention layers only keep what they need unless asked to
    # record the past; speculative rollback needs it (no-op for plain full-attention caches)
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()
    return step, cache


def speculative_decode(
    runner: TargetRunner,
    session: DraftSession,
    draft_to_target: torch.Tensor,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    k: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
) -> DecodeResult:
    """Decode up to ``max_new_tokens`` after ``prompt_ids`` [n] with a ``k``-token draft chain.

    The output is distributed exactly as target-only sampling at ``temperature`` (T = 0:
    identical to greedy decoding). See the module docstring for τ, truncation and pairing.
    """
    assert k >= 1 and prompt_ids.dim() == 1 and prompt_ids.numel() >= 1
    dev = runner.device
    res = DecodeResult.for_rounds(k)
    if max_new_tokens <= 0:
        return res
    t_start = _sync(dev)
    base = _base_seed(generator)
    sample_fn = _draft_sampler(temperature, generator)
    d2t = draft_to_target.to(dev).long()
    prompt = prompt_ids.to(dev).long()

    step, cache = _prefill(runner, prompt)
    res.target_forwards, committed = 1, prompt.numel()  # positions held in the KV cache
    res.tokens.append(
        _sample(_probs(step.logits[0, -1], temperature), position_uniforms(base, 0)[1])
    )
    t0 = _sync(dev)
    res.target_seconds += t0 - t_start
    first = torch.tensor(res.tokens, device=dev)
    # drafts were trained on the cache's fp32 features, whatever the target's dtype
    session.begin(int(prompt[0]))
    session.extend(step.features[0].float(), torch.cat([prompt[1:], first]))
    res.draft_seconds += _sync(dev) - t0

    while len(res.tokens) < max_new_tokens and res.tokens[-1] != eos_token_id:
        t0 = _sync(dev)
        draft_ids, draft_logits = session.propose(k, sample_fn)
        drafts = d2t[draft_ids.to(dev).long()]  # [k] target ids
        t1 = _sync(dev)
        last = torch.tensor([[res.tokens[-1]]], device=dev)
        step = runner.forward(torch.cat([last, drafts.view(1, -1)], 1), past_key_values=cache)
        cache = step.past_key_values
        t2 = _sync(dev)
        res.draft_seconds += t1 - t0
        res.target_seconds += t2 - t1
        res.target_forwards += 1

        p = _probs(step.logits[0], temperature)  # [k+1, V]: p[j] is the law of draft j+1
        q = torch.zeros_like(p[:k])
        if temperature == 0:  # the draft sampled its argmax: q is one-hot on that token
            q[torch.arange(k, device=dev), drafts] = 1.0
        else:
            q[:, d2t] = _probs(draft_logits.to(dev), temperature)
        rows = torch.arange(k, device=dev)
        p_tok, q_tok = p[rows, drafts].tolist(), q[rows, drafts].tolist()
        alphas = alpha(p[:k], q).tolist()

        n_acc, pos0 = 0, len(res.tokens)
        for j in range(k):
            u_acc, u_smp = position_uniforms(base, pos0 + j)
            res.reached[j] += 1
            res.alpha_sum[j] += alphas[j]
            if _accept(p_tok[j], q_tok[j], u_acc):
                # accepted: keep the draft token and go on verifying the next one
                res.accepted_at[j] += 1
                n_acc += 1
                continue
            # rejected: the correction comes from normalize((p − q)₊), which makes the
            # emitted token exactly p-distributed; the rest of the chain is discarded
            new_token = _sample(_residual(p[j], q[j]), u_smp)
            break
        else:
            # all k accepted: the target's distribution after the last draft gives a bonus token
            new_token = _sample(p[k], position_uniforms(base, pos0 + k)[1])
        res.accepted.append(n_acc)
        res.tokens += drafts[:n_acc].tolist() + [new_token]
        res.emitted.append(n_acc + 1 - res.cut(max_new_tokens, eos_token_id))
        if res.stopped_by_eos or len(res.tokens) >= max_new_tokens:
            break

        t0 = _sync(dev)
        cache.crop(-(k - n_acc))  # drop the rejected drafts' KV entries: keep x, d_1..d_n
        committed += n_acc + 1
        assert cache.get_seq_length() == committed, "KV cache out of step with the tokens"
        t1 = _sync(dev)
        nxt = torch.tensor(res.tokens[-(n_acc + 1) :], device=dev)
        session.extend(step.features[0, : n_acc + 1].float(), nxt)
        res.target_seconds += t1 - t0
        res.draft_seconds += _sync(dev) - t1

    res.cut(max_new_tokens, eos_token_id)
    res.wall_seconds = _sync(dev) - t_start
    return res


def target_decode(
    runner: TargetRunner,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
) -> DecodeResult:
    """Plain autoregressive sampling with the same conventions (and uniforms per position)."""
    dev = runner.device
    res = DecodeResult(tokens=[], k=0)
    if max_new_tokens <= 0:
        return res
    t_start = _sync(dev)
    base = _base_seed(generator)
    step, cache = _prefill(runner, prompt_ids.to(dev).long())
    res.target_forwards = 1
    while True:
        u = position_uniforms(base, len(res.tokens))[1]
        res.tokens.append(_sample(_probs(step.logits[0, -1], temperature), u))
        if len(res.tokens) >= max_new_tokens or res.tokens[-1] == eos_token_id:
            break
        last = torch.tensor([[res.tokens[-1]]], device=dev)
        step = runner.forward(last, past_key_values=cache)
        cache = step.past_key_values
        res.target_forwards += 1
    res.stopped_by_eos = res.tokens[-1] == eos_token_id
    res.wall_seconds = res.target_seconds = _sync(dev) - t_start
    return res
