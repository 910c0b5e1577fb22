"""Live speculative decoding: lossless at T=1 (statistically), exact at T=0, τ bookkeeping."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_llama

from specbench.decoding import speculative as spec
from specbench.decoding.speculative import speculative_decode, target_decode
from specbench.drafts.base import DraftSession, SampleFn
from specbench.features import LAST
from specbench.targets.runner import TargetRunner, TargetStep

V = 16  # target vocabulary: small enough to enumerate two-token continuations exactly
PROMPT = torch.tensor([3, 7, 1, 12])


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


class MemoPrefillRunner(TargetRunner):
    """Test double: memoises the (deterministic) prompt prefill, hands out a fresh cache copy.

    The lossless test decodes the same prompt thousands of times; this only saves time, the
    decoder still rolls back and extends the copied cache exactly as it would a new one.
    """

    def __init__(self, model) -> None:
        super().__init__(model)
        self.memo: dict[tuple[int, ...], TargetStep] = {}

    def forward(self, input_ids, past_key_values=None, attention_mask=None, use_cache=True):
        key = tuple(input_ids.flatten().tolist())
        if past_key_values is not None or not use_cache or input_ids.shape[0] != 1:
            return super().forward(input_ids, past_key_values, attention_mask, use_cache)
        if key not in self.memo:
            self.memo[key] = super().forward(input_ids)
        step = self.memo[key]
        return TargetStep(step.logits, step.features, copy.deepcopy(step.past_key_values))


@pytest.fixture(scope="module")
def runner() -> TargetRunner:
    return MemoPrefillRunner(tiny_llama(vocab_size=V, hidden_size=32, layers=1, seed=0))


class FixedDraft(DraftSession):
    """Proposes from one fixed random distribution over a subset draft vocabulary."""

    def __init__(self, draft_vocab: int = 10, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.draft_to_target = torch.randperm(V, generator=g)[:draft_vocab]
        self.logits = 1.5 * torch.randn(draft_vocab, generator=g)

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        assert features.shape[0] == next_tokens.shape[0] >= 1

    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits.expand(k, -1).clone()
        return torch.tensor([sample_fn(z) for z in logits]), logits


class ContextDraft(DraftSession):
    """Logits depend on the previous token and the anchor's last feature; records its inputs."""

    def __init__(self, hidden: int, draft_vocab: int = 12, seed: int = 2) -> None:
        g = torch.Generator().manual_seed(seed)
        self.draft_to_target = torch.randperm(V, generator=g)[:draft_vocab]
        self.by_token = 2.0 * torch.randn(V, draft_vocab, generator=g)
        self.by_feature = torch.randn(hidden, draft_vocab, generator=g)
        self.features: list[torch.Tensor] = []
        self.next_tokens: list[int] = []

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.features += list(features.float())
        self.next_tokens += next_tokens.tolist()

    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        prev, h = self.next_tokens[-1], self.features[-1][LAST]
        ids, logits = [], []
        for _ in range(k):
            z = self.by_token[prev] + h @ self.by_feature
            ids.append(sample_fn(z))
            logits.append(z)
            prev = int(self.draft_to_target[ids[-1]])
        return torch.tensor(ids), torch.stack(logits)


class OracleDraft(DraftSession):
    """Test-only cheat at T=0: runs the target to propose its greedy token (or a wrong one)."""

    def __init__(self, runner: TargetRunner, prompt: torch.Tensor, wrong: bool = False) -> None:
        self.runner, self.wrong = runner, wrong
        self.history = prompt[:1].tolist()  # x_0 is never passed to extend
        self.draft_to_target = torch.arange(V)

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.history += next_tokens.tolist()

    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        seq, ids, logits = list(self.history), [], []
        for _ in range(k):
            out = self.runner.forward(torch.tensor([seq]), use_cache=False)
            best = int(out.logits[0, -1].argmax())
            tok = (best + 1) % V if self.wrong else best
            logits.append(torch.nn.functional.one_hot(torch.tensor(tok), V).float() * 10)
            ids.append(sample_fn(logits[-1]))
            seq.append(ids[-1])
        return torch.tensor(ids), torch.stack(logits)


# ----------------------------------------------------------------------------- helpers
def exact_distributions(runner: TargetRunner, prompt: torch.Tensor):
    """Exact P(x1, x2) [V, V] and P(x3) [V] of target sampling at T=1, by enumeration."""
    n = prompt.numel()
    seqs = torch.cartesian_prod(torch.arange(V), torch.arange(V))  # [V², 2] = (x1, x2)
    ids = torch.cat([prompt.expand(V * V, n), seqs], dim=1)
    probs = torch.softmax(runner.forward(ids, use_cache=False).logits.double(), dim=-1)
    p1 = probs[0, n - 1]  # law of x1 given the prompt
    p2 = probs[::V, n]  # [V, V]: law of x2 given x1
    p3 = probs[:, n + 1]  # [V², V]: law of x3 given (x1, x2)
    joint12 = p1[:, None] * p2
    return joint12, (joint12.reshape(-1, 1) * p3).sum(0)


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson χ² goodness of fit; cells expected below ``min_expected`` are pooled into one."""
    counts, probs = counts.double().flatten(), probs.double().flatten()
    expected = probs * counts.sum()
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    if exp[-1] < min_expected:  # pooled cell still too small: fold it into the largest cell
        big = int(exp[:-1].argmax())
        obs[big], exp[big] = obs[big] + obs[-1], exp[big] + exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = torch.tensor(float(obs.numel() - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))


def sample_counts(runner, make_draft, k: int, runs: int, seed: int):
    """Counts of (x1, x2) and of x3 over ``runs`` speculative decodes of 3 tokens at T=1."""
    g = torch.Generator().manual_seed(seed)
    c12, c3 = torch.zeros(V, V), torch.zeros(V)
    for _ in range(runs):
        d = make_draft()
        out = speculative_decode(runner, d, d.draft_to_target, PROMPT, 3, k, 1.0, g)
        c12[out.tokens[0], out.tokens[1]] += 1
        c3[out.tokens[2]] += 1
    return c12, c3


# Threshold: seeds are fixed, so each p-value is a deterministic number. 1e-4 per check keeps
# the chance that a *correct* sampler fails after a harmless change (another seed, a torch
# upgrade reordering random draws) below ~1e-3 over the 4 checks here, while the broken
# rules below reach p < 1e-6 already with a third of the runs.
P_MIN = 1e-4
RUNS = 2500


# ----------------------------------------------------------------------------- T = 1
@pytest.mark.parametrize("which,k", [("fixed", 2), ("context", 1)])
def test_lossless_at_t1(runner, which, k):
    joint12, p3 = exact_distributions(runner, PROMPT)
    hidden = runner.model.config.hidden_size
    make = (lambda: FixedDraft()) if which == "fixed" else (lambda: ContextDraft(hidden))
    c12, c3 = sample_counts(runner, make, k, runs=RUNS, seed=11)
    assert chi2_pvalue(c12, joint12) > P_MIN
    assert chi2_pvalue(c3, p3) > P_MIN


@pytest.mark.parametrize(
    "name,patch",
    [
        ("accept always", ("_accept", lambda p, q, u: True)),
        ("resample from p", ("_residual", lambda p, q: p)),
    ],
)
def test_broken_accept_rule_is_detected(runner, monkeypatch, name, patch):
    monkeypatch.setattr(spec, *patch)
    joint12, p3 = exact_distributions(runner, PROMPT)
    c12, c3 = sample_counts(runner, FixedDraft, 2, runs=RUNS // 3, seed=11)
    assert min(chi2_pvalue(c12, joint12), chi2_pvalue(c3, p3)) < 1e-6, name


# ----------------------------------------------------------------------------- T = 0
PROMPTS = [torch.tensor([3, 7, 1, 12]), torch.tensor([0, 5]), torch.tensor([9, 9, 2, 14, 6, 1])]


def greedy_reference(runner: TargetRunner, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy continuation by full forwards (no KV cache): independent of the decoders."""
    seq = prompt.tolist()
    for _ in range(n):
        seq.append(int(runner.forward(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
    return seq[prompt.numel() :]


def make_drafts(runner: TargetRunner, prompt: torch.Tensor) -> dict[str, DraftSession]:
    hidden = runner.model.config.hidden_size
    return {
        "oracle": OracleDraft(runner, prompt),
        "wrong": OracleDraft(runner, prompt, wrong=True),
        "fixed": FixedDraft(),
        "context": ContextDraft(hidden),
    }


@pytest.mark.parametrize("p", range(len(PROMPTS)))
def test_greedy_is_exact(runner, p):
    prompt = PROMPTS[p]
    ref = greedy_reference(runner, prompt, 10)
    assert target_decode(runner, prompt, 10, 0.0).tokens == ref
    for k in (1, 3, 5):
        for name, d in make_drafts(runner, prompt).items():
            out = speculative_decode(runner, d, d.draft_to_target, prompt, 10, k, 0.0)
            assert out.tokens == ref, (name, k)
            assert len(out.tokens) == 1 + sum(out.emitted)
            assert out.wall_seconds >= out.target_seconds + out.draft_seconds > 0


def test_eos_stops_both_decoders(runner):
    prompt = PROMPTS[0]
    ref = greedy_reference(runner, prompt, 10)
    eos = ref[4]
    want = ref[: ref.index(eos) + 1]
    assert target_decode(runner, prompt, 10, 0.0, eos_token_id=eos).tokens == want
    for k in (1, 4):
        d = OracleDraft(runner, prompt)
        out = speculative_decode(runner, d, d.draft_to_target, prompt, 10, k, 0.0, eos_token_id=eos)
        assert out.tokens == want and out.stopped_by_eos


# ----------------------------------------------------------------------------- bookkeeping
def test_tau_perfect_draft(runner):
    prompt = PROMPTS[1]
    d = OracleDraft(runner, prompt)
    out = speculative_decode(runner, d, d.draft_to_target, prompt, 10, 3, 0.0)
    # 1 prefill token + rounds of 4; the third round is cut to 1 token by max_new_tokens but
    # its verification accepted all 3 drafts, and that is what τ counts
    assert out.accepted == [3, 3, 3] and out.emitted == [4, 4, 1]
    assert out.tau == 4.0 and out.drafted == 9 and out.target_forwards == 4
    assert out.reached == out.accepted_at == [3, 3, 3]
    assert out.acceptance_rates == [1.0, 1.0, 1.0] and out.mean_alpha == 1.0


def test_tau_hopeless_draft(runner):
    prompt = PROMPTS[1]
    d = OracleDraft(runner, prompt, wrong=True)
    out = speculative_decode(runner, d, d.draft_to_target, prompt, 10, 3, 0.0)
    assert out.accepted == [0] * 9 and out.tau == 1.0 and out.mean_alpha == 0.0
    assert out.reached == [9, 0, 0] and out.accepted_at == [0, 0, 0]
    assert out.acceptance_rates[0] == 0.0 and all(r != r for r in out.acceptance_rates[1:])


def test_session_sees_committed_positions(runner):
    """extend() gets the target features of exactly the committed positions (cache rollback)."""
    prompt, g = PROMPTS[2], torch.Generator().manual_seed(5)
    d = ContextDraft(runner.model.config.hidden_size)
    out = speculative_decode(runner, d, d.draft_to_target, prompt, 14, 3, 1.0, g)
    seq = prompt.tolist() + out.tokens
    m = len(d.next_tokens)
    assert d.next_tokens == seq[1 : m + 1] and m >= len(seq) - 1 - out.emitted[-1]
    full = runner.forward(torch.tensor([seq]), use_cache=False).features[0, :m].float()
    torch.testing.assert_close(torch.stack(d.features), full, atol=1e-4, rtol=1e-4)


def test_pairing_and_determinism(runner):
    prompt = PROMPTS[0]
    runs = []
    for make in (FixedDraft, FixedDraft, lambda: ContextDraft(32)):
        d = make()
        g = torch.Generator().manual_seed(42)
        runs.append(speculative_decode(runner, d, d.draft_to_target, prompt, 12, 2, 1.0, g))
    assert runs[0].tokens == runs[1].tokens and runs[0].accepted == runs[1].accepted
    # the first token comes from the shared position-0 stream, whatever the draft
    plain = target_decode(runner, prompt, 12, 1.0, torch.Generator().manual_seed(42))
    assert runs[0].tokens[0] == runs[2].tokens[0] == plain.tokens[0]
    u = [spec.position_uniforms(7, t) for t in range(1000)]
    assert u == [spec.position_uniforms(7, t) for t in range(1000)]
    assert all(0.0 <= x < 1.0 for pair in u for x in pair)
    assert abs(sum(x for pair in u for x in pair) / 2000 - 0.5) < 0.03
