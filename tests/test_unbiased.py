"""Branch-verified unbiased T=1 τ: exact on toy tables, batched = unbatched, agrees with live."""

from __future__ import annotations

import math
import time

import pytest
import torch

from specbench.decoding.expected import expected_tau
from specbench.decoding.speculative import speculative_decode, target_decode
from specbench.decoding.unbiased import (
    prefill,
    response_anchors,
    score_branches,
    sequence_unbiased_tau,
    unbiased_tau,
    unbiased_tau_by_prompt,
)
from specbench.drafts import build_draft
from specbench.drafts.base import DraftSession
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.targets.featurize import compute_features
from specbench.targets.info import target_info_from_model
from specbench.targets.runner import TargetRunner

try:  # the tiny-model helpers are moving from the package to tests/ (pytest puts it on the path)
    from tiny import tiny_llama
except ImportError:
    from specbench.targets.tiny import tiny_llama

V, K, R, N_PROMPTS = 32, 3, 24, 64  # target vocab, draft steps, response tokens, prompts


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def test_unbiased_tau_by_hand():
    r = torch.tensor([[0.5, 0.2, 0.9], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    alpha = torch.tensor([[0.6, 0.4, 0.3], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    want = [1 + 0.6 + 0.5 * 0.4 + 0.5 * 0.2 * 0.3, 4.0, 1.5]  # r_K unused; invalid stops
    torch.testing.assert_close(unbiased_tau(r, alpha, valid), torch.tensor(want).double())
    with pytest.raises(ValueError):
        unbiased_tau(r, alpha, valid[:, :2])


# ------------------------------------------------------------------ exact enumeration (toy)
def toy_tables(vf: int, vd: int, k: int, seed: int):
    """p_k(·|x_<k) [vf]*(k-1)+[vf] over the full vocab, q_k [vf]*(k-1)+[vd] (draft ids = the
    first vd target ids): arbitrary functions of the whole prefix, q a noisy copy of p."""
    g = torch.Generator().manual_seed(seed)
    P, Q = [], []
    for j in range(k):
        z = 2.5 * torch.randn([vf] * (j + 1), generator=g).double()
        P.append(torch.softmax(z, -1))
        Q.append(torch.softmax(z[..., :vd] + torch.randn(z[..., :vd].shape, generator=g), -1))
    return P, Q


def biased_tables():
    """q_1 favours token 0, after which q_2 and p_2 disagree completely: the target rarely
    takes that path, so teacher forcing overrates step 2 (E τ: 1.59 live, 1.77 forced)."""
    P1, Q1 = torch.tensor([0.4, 0.25, 0.25, 0.1]), torch.tensor([0.9, 0.05, 0.05])
    P2, Q2 = torch.tensor([[0.3, 0.3, 0.3, 0.1]]).repeat(4, 1), torch.full((4, 3), 1 / 3)
    P2[0], Q2[0] = torch.tensor([0.9, 0.0, 0.0, 0.1]), torch.tensor([0.0, 1.0, 0.0])
    return [P1.double(), P2.double()], [Q1.double(), Q2.double()]


def exact_tau(P, Q, vd: int, steps: int) -> float:
    """1 + Σ_k Σ_{d_1..d_k} Π_j min(p_j(d_j|d_<j), q_j(d_j|d_<j)) by enumeration."""
    tau, w = 1.0, torch.ones(())
    for j in range(steps):
        w = w[..., None] * torch.minimum(P[j][(slice(0, vd),) * (j + 1)], Q[j][(slice(0, vd),) * j])
        tau += float(w.sum())
    return tau


def simulate(P, Q, vd: int, n: int, seed: int, teacher_forced: bool = False, steps=None):
    """Per sample: (τ̂ of a draft chain d ~ q, τ of a live round), or teacher-forced E τ;
    only the first ``steps`` are valid (the rest lie past the end of the response)."""
    g = torch.Generator().manual_seed(seed)
    k, path = len(P), []
    r, alpha, coins = (torch.zeros(n, k, dtype=torch.float64) for _ in range(3))
    for j in range(k):
        p = P[j][tuple(path)] if path else P[j].expand(n, -1)  # [n, vf]
        q = Q[j][tuple(path)] if path else Q[j].expand(n, -1)  # [n, vd]
        alpha[:, j] = torch.minimum(p[:, :vd], q).sum(-1)
        d = torch.multinomial(p if teacher_forced else q, 1, generator=g)[:, 0]
        if not teacher_forced:
            r[:, j] = (p[:, :vd].gather(1, d[:, None]) / q.gather(1, d[:, None]))[:, 0].clamp(max=1)
            coins[:, j] = (torch.rand(n, generator=g, dtype=torch.float64) < r[:, j]).double()
        path.append(d)
    valid = (torch.arange(k) < (steps or k)).expand(n, k)
    if teacher_forced:
        return expected_tau(alpha, valid)
    return unbiased_tau(r, alpha, valid), 1.0 + (coins * valid).cumprod(1).sum(1)


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


@pytest.mark.parametrize("case", ["random", "random_k2", "biased"])
def test_estimator_matches_exact_enumeration(case):
    if case == "biased":
        (P, Q), vd = biased_tables(), 3
    else:
        (P, Q), vd = toy_tables(vf=5, vd=4, k=3, seed=7), 4
        if case == "random_k2":
            P, Q = P[:2], Q[:2]
    exact = exact_tau(P, Q, vd, len(P))
    est, live = simulate(P, Q, vd, n=200_000, seed=1)
    (m, se), (ml, sel) = mean_se(est), mean_se(live)
    print(f"\n{case}: exact {exact:.4f}  estimator {m:.4f}±{se:.4f}  live {ml:.4f}±{sel:.4f}")
    assert abs(m - exact) < 4 * se and abs(ml - exact) < 4 * sel
    assert se < 0.8 * sel  # coins and the last draw integrated out: less noise than live
    mt, set_ = mean_se(simulate(P, Q, vd, n=200_000, seed=2, teacher_forced=True))
    print(f"teacher-forced expected τ (α along target samples) {mt:.4f}±{set_:.4f}")
    if case == "biased":
        assert exact == pytest.approx(1.59) and mt - exact > 20 * math.hypot(se, set_)


def test_invalid_steps_stop_the_chain_like_enumeration_of_fewer_steps():
    (P, Q), vd = toy_tables(vf=5, vd=4, k=3, seed=3), 4
    est, live = simulate(P, Q, vd, n=100_000, seed=4, steps=2)  # step 3 past the response
    (m, se), (ml, sel) = mean_se(est), mean_se(live)
    exact = exact_tau(P, Q, vd, 2)
    assert abs(m - exact) < 4 * se and abs(ml - exact) < 4 * sel
    assert abs(exact_tau(P, Q, vd, 3) - exact) > 10 * se


# ------------------------------------------------------------------ tiny real target
class NoisyTargetSession(DraftSession):
    """Test draft: logits ``scale · target logits + bias`` on its own drafted prefix."""

    def __init__(self, draft: NoisyTargetDraft) -> None:
        self.d, self.history = draft, [0]  # every prompt starts with token 0 (x_0)

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        assert features.shape[0] == next_tokens.numel() >= 1
        self.history += next_tokens.tolist()

    def propose(self, k: int, sample_fn) -> tuple[torch.Tensor, torch.Tensor]:
        seq, ids, zs = list(self.history), [], []
        for _ in range(k):
            logits = self.d.runner.forward(torch.tensor([seq]), use_cache=False).logits[0, -1]
            zs.append(self.d.scale * logits[self.d.d2t] + self.d.bias)
            ids.append(sample_fn(zs[-1]))
            seq.append(int(self.d.d2t[ids[-1]]))
        return torch.tensor(ids), torch.stack(zs)


class NoisyTargetDraft:
    """A cheap good draft (α ≈ 0.6) whose q_k depends on its own d_<k; scale 1, no noise and
    the full vocabulary give q = p exactly."""

    device = torch.device("cpu")

    def __init__(self, runner, d2t, scale: float = 0.7, noise: float = 1.0, seed: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.runner, self.d2t, self.scale = runner, d2t, scale
        self.bias = noise * torch.randn(d2t.numel(), generator=g)

    def start_session(self) -> NoisyTargetSession:
        return NoisyTargetSession(self)


def build_cache(runner, prompts, responses, d2t, path) -> FeatureCache:
    seqs = [
        Sequence(p.tolist(), r, i) for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
    ]
    save_cache(compute_features(runner, seqs, d2t), path)
    return FeatureCache(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model = tiny_llama(vocab_size=V, hidden_size=32, layers=2, seed=0)
    runner = TargetRunner(model)
    g = torch.Generator().manual_seed(1)
    d2t = torch.randperm(V, generator=g)[:26].sort().values  # 6 target tokens off the draft
    prompts = [torch.tensor([0, *torch.randint(1, V, (2 + i % 4,), generator=g).tolist()])
               for i in range(N_PROMPTS)]  # fmt: skip
    responses = [
        target_decode(runner, p, R, 1.0, torch.Generator().manual_seed(100 + i)).tokens
        for i, p in enumerate(prompts)
    ]
    cache = build_cache(runner, prompts, responses, d2t, tmp_path_factory.mktemp("c") / "c.st")
    return model, runner, d2t, prompts, cache


def test_batched_branches_equal_plain_forwards(world):
    model, runner, d2t, _, cache = world
    seq = cache.sequence(3)
    ids, k = seq["input_ids"], 4
    anchors = response_anchors(seq, seed=0)
    g = torch.Generator().manual_seed(0)
    branches = torch.randint(0, V, (anchors.numel(), k - 1), generator=g)
    kv = prefill(runner, ids[: int(anchors[-1]) + 2])
    got = torch.cat([score_branches(runner, kv, anchors[a : a + 5], branches[a : a + 5], d2t)
                     for a in range(0, anchors.numel(), 5)])  # fmt: skip
    for i, s in enumerate(anchors.tolist()):
        full = torch.cat([ids[: s + 2], branches[i]])[None]
        want = torch.log_softmax(runner.forward(full, use_cache=False).logits[0], -1)[:, d2t]
        torch.testing.assert_close(got[i], want[s + 2 :], atol=1e-4, rtol=0)  # p_2..p_K
        torch.testing.assert_close(seq["logprobs"][s + 1], want[s + 1], atol=1e-4, rtol=0)  # p_1


def test_sliding_window_target_gpt_oss():
    """gpt-oss alternates sliding-window layers: a custom mask must carry the window itself."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    cfg = GptOssConfig(vocab_size=V, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                       max_position_embeddings=64, attn_implementation="eager")  # fmt: skip
    runner = TargetRunner(GptOssForCausalLM(cfg).eval(), feature_layers=(1, 1, 2, 2))
    g = torch.Generator().manual_seed(0)
    ids, anchors = torch.randint(0, V, (20,), generator=g), torch.tensor([2, 5, 6, 10, 17])
    branches, d2t = torch.randint(0, V, (5, 4), generator=g), torch.arange(V)
    got = score_branches(runner, prefill(runner, ids[:19]), anchors, branches, d2t)
    for i, s in enumerate(anchors.tolist()):
        full = torch.cat([ids[: s + 2], branches[i]])[None]
        want = torch.log_softmax(runner.forward(full, use_cache=False).logits[0], -1)
        torch.testing.assert_close(got[i], want[s + 2 :], atol=1e-4, rtol=0)


def test_oracle_draft_gives_one_plus_valid_steps(world, tmp_path):
    """q = p (full vocab): α = r = 1, so τ̂ = 1 + number of steps left in the response —
    exactly, which pins p_k to the right positions and branches."""
    _, runner, _, prompts, cache = world
    full = torch.arange(V)
    seqs = [cache.sequence(i) for i in range(4)]
    resp = [s["input_ids"][len(p) :].tolist() for s, p in zip(seqs, prompts[:4], strict=True)]
    oracle_cache = build_cache(runner, prompts[:4], resp, full, tmp_path / "o.st")
    oracle = NoisyTargetDraft(runner, full, scale=1.0, noise=0.0)
    for i in range(4):
        seq = oracle_cache.sequence(i)
        anchors, tau, _ = sequence_unbiased_tau(oracle, seq, full, runner, K, seed=0)
        left = seq["input_ids"].numel() - 2 - anchors  # response tokens after x_{s+1}
        torch.testing.assert_close(tau, 1.0 + left.clamp(max=K).double(), atol=1e-4, rtol=0)


def test_deterministic_paired_and_shard_invariant(world):
    model, runner, d2t, _, cache = world
    torch.manual_seed(0)
    eagle = build_draft("eagle3", target_info_from_model(model, d2t)).eval()
    run = lambda **kw: unbiased_tau_by_prompt(eagle, cache, runner, K, n_prompts=6, **kw)  # noqa: E731
    sums = lambda st: {p: (s.anchors, s.tau_unbiased_sum) for p, s in st.items()}  # noqa: E731
    a = sums(run(seed=5))
    assert a == sums(run(seed=5))  # same seed: identical
    assert a != sums(run(seed=6))
    shards = {**sums(run(seed=5, shard=(0, 2))), **sums(run(seed=5, shard=(1, 2)))}
    small = sums(run(seed=5, batch_size=3))
    for p in a:  # anchors are independent of how they are batched or sharded
        assert shards[p] == a[p] and small[p][0] == a[p][0]
        assert small[p][1] == pytest.approx(a[p][1], abs=1e-5)
    sub = run(seed=5, max_anchors_per_prompt=5)
    assert all(s.anchors == 5 for s in sub.values())
    # common random numbers: a slightly different draft, same seed → nearly the same chains
    d1, d2 = NoisyTargetDraft(runner, d2t), NoisyTargetDraft(runner, d2t, scale=0.75)
    seq = cache.sequence(0)
    t1 = sequence_unbiased_tau(d1, seq, d2t, runner, K, seed=5)[1]
    t2, t3 = (sequence_unbiased_tau(d2, seq, d2t, runner, K, seed=s)[1] for s in (5, 9))
    paired, unpaired = (t1 - t2).std(), (t1 - t3).std()
    print(f"\nsd of per-anchor τ̂ difference: paired {paired:.3f}, unpaired {unpaired:.3f}")
    assert paired < 0.5 * unpaired


def clustered(num: list[float], den: list[float]) -> tuple[float, float]:
    """Ratio mean Σnum/Σden and its standard error clustered by prompt (delta method)."""
    n, d = torch.tensor(num, dtype=torch.float64), torch.tensor(den, dtype=torch.float64)
    m = n.sum() / d.sum()
    return float(m), float(((n - m * d).pow(2).sum() * len(num) / (len(num) - 1)).sqrt() / d.sum())


def test_agrees_with_live_decoding(world, tmp_path):
    model, runner, d2t, prompts, cache = world
    draft = NoisyTargetDraft(runner, d2t)
    t0 = time.perf_counter()
    st = unbiased_tau_by_prompt(draft, cache, runner, K, seed=0)
    t_est = time.perf_counter() - t0
    pids = sorted(st)
    est = clustered([st[p].tau_unbiased_sum for p in pids], [st[p].anchors for p in pids])
    live_runs = []
    for rep in range(2):
        for i, p in enumerate(prompts):
            g = torch.Generator().manual_seed(1000 * rep + i)
            live_runs.append(
                (i, speculative_decode(runner, draft.start_session(), d2t, p, R, K, 1.0, g))
            )
    num, den = [0.0] * len(prompts), [0.0] * len(prompts)
    for i, res in live_runs:
        num[i] += sum(res.accepted) + res.num_rounds
        den[i] += res.num_rounds
    live = clustered(num, den)
    z = (est[0] - live[0]) / math.hypot(est[1], live[1])
    anchors = sum(s.anchors for s in st.values())
    tokens = sum(s.target_tokens for s in st.values())
    print(f"\nestimator τ {est[0]:.4f}±{est[1]:.4f} ({anchors} anchors, "
          f"{tokens / anchors:.2f} target tokens/anchor, {t_est / len(pids):.3f} s/prompt); "
          f"live τ {live[0]:.4f}±{live[1]:.4f} ({sum(den):.0f} rounds); z = {z:.2f}")  # fmt: skip
    assert abs(z) < 3

    # paired and exact: τ̂ at the live rounds' own start positions (same prefixes) has the
    # live round's τ as its expectation; rounds whose K steps fit in the sequence only
    seqs = [res.tokens for _, res in live_runs]
    lc = build_cache(runner, [prompts[i] for i, _ in live_runs], seqs, d2t, tmp_path / "l.st")
    diffs, rounds = [], []
    for j, (i, res) in enumerate(live_runs):
        m, end = len(prompts[i]), len(prompts[i]) + len(res.tokens)
        # round r starts at anchor m − 1 + Σ_{i<r} (accepted_i + 1); x_m comes from prefill
        starts = m - 1 + torch.tensor([0] + [a + 1 for a in res.accepted[:-1]]).cumsum(0)
        keep = starts + K + 2 <= end  # step K verifies x_{s+1+K}, the last response token
        seq = lc.sequence(j)
        _, tau, _ = sequence_unbiased_tau(draft, seq, d2t, runner, K, 0, anchors=starts[keep])
        live_tau = torch.tensor(res.accepted, dtype=torch.float64)[keep] + 1
        diffs.append(float((live_tau - tau).sum()))
        rounds.append(float(keep.sum()))
    d, se = clustered(diffs, rounds)
    print(f"at live round starts: mean(live τ − τ̂) {d:.4f}±{se:.4f} over {sum(rounds):.0f} rounds")
    assert abs(d) < 3 * se
