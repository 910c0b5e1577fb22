"""The real T=1 estimator path against exact enumeration over every draft chain (issue 20).

``tests/test_unbiased.py`` enumerates chains itself and checks only the final formula. Here
``unbiased_tau_by_prompt`` runs as ``evaluate_draft``'s ``tau_unbiased`` estimator runs it
(feature cache, anchors, prefix KV, batched branch scoring, the draft vocabulary map) with a
table-driven draft over
a tiny real target; the exact expectation of every anchor is enumerated over all chains
with plain forwards of the target, and the estimator's mean over many seeds must match it.
With ``greedy_draft=True`` (vLLM's default rule) there is nothing random: it must equal the
enumeration of the argmax chain to rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_llama

from specbench.decoding.speculative import target_decode
from specbench.decoding.unbiased import response_anchors, unbiased_tau_by_prompt
from specbench.drafts.base import DraftSession
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.targets.featurize import compute_features
from specbench.targets.runner import TargetRunner

V, K, SEEDS = 8, 3, 400
D2T = torch.tensor([0, 1, 2, 4, 5, 7])  # two target tokens the draft cannot propose

pytestmark = pytest.mark.usefixtures("one_thread")


class TableSession(DraftSession):
    """Draft logits from a fixed random table keyed by (last committed token, drafted ids)."""

    def __init__(self, draft: TableDraft) -> None:
        self.draft, self.last = draft, None

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.last = int(next_tokens[-1])

    def propose(self, k: int, sample_fn) -> tuple[torch.Tensor, torch.Tensor]:
        ids, zs = [], []
        for _ in range(k):
            zs.append(self.draft.logits(self.last, tuple(ids)))
            ids.append(sample_fn(zs[-1]))
        return torch.tensor(ids), torch.stack(zs)


class TableDraft:
    device = torch.device("cpu")

    def __init__(self, seed: int = 5) -> None:
        self.seed, self.table = seed, {}

    def logits(self, last: int, drafted: tuple[int, ...]) -> torch.Tensor:
        key = (last, *drafted)
        if key not in self.table:
            code = sum(t * (V + 1) ** i for i, t in enumerate(key))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + code)
            self.table[key] = 2.0 * torch.randn(D2T.numel(), generator=g)
        return self.table[key]

    def start_session(self) -> TableSession:
        return TableSession(self)


def target_probs(model, prefix: list[int]) -> torch.Tensor:
    """p(· | prefix) over the draft vocabulary (normalised over the full one), float64."""
    logits = model(torch.tensor([prefix])).logits[0, -1].double()
    return torch.softmax(logits, -1)[D2T]


def exact_anchor(model, draft, ids, valid, s, greedy) -> float:
    """1 + Σ_k Σ_{d<k} Π_{j<k} min(p_j, q_j)(d_j) · α_k, every chain enumerated (greedy: the
    argmax chain only, q one-hot on it), stopping at the first step past the response."""

    def rec(prefix, drafted, k):
        if k > K or not valid[k - 1]:
            return 0.0
        p = target_probs(model, prefix)
        q = torch.softmax(draft.logits(prefix[s + 1], drafted).double(), -1)
        if greedy:
            d = int(q.argmax())
            return float(p[d]) * (1.0 + rec(prefix + [int(D2T[d])], (*drafted, d), k + 1))
        m = torch.minimum(p, q)
        total = float(m.sum())  # α_k, times the weight of the chain so far (the caller's)
        for d in range(D2T.numel()):
            if m[d] > 0:
                total += float(m[d]) * rec(prefix + [int(D2T[d])], (*drafted, d), k + 1)
        return total

    return 1.0 + rec(ids[: s + 2], (), 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model = tiny_llama(vocab_size=V, hidden_size=32, layers=2, seed=4)
    runner = TargetRunner(model)
    g = torch.Generator().manual_seed(2)
    seqs = []
    for i in range(3):
        prompt = torch.randint(0, V, (3 + i,), generator=g)
        seqs.append(Sequence(prompt.tolist(), target_decode(runner, prompt, 6, 1.0, g).tokens, i))
    path = tmp_path_factory.mktemp("enum") / "t1.safetensors"
    save_cache(compute_features(runner, seqs, D2T), path)
    cache, draft = FeatureCache(path), TableDraft()
    exact = {True: {}, False: {}}
    with torch.no_grad():
        for i in range(len(cache)):
            seq = cache.sequence(i)
            ids, mask = seq["input_ids"].tolist(), seq["loss_mask"].bool()
            for greedy in (True, False):
                total = 0.0
                for s in response_anchors(seq, seed=0).tolist():
                    pos = [s + k for k in range(1, K + 1)]
                    valid = [p < len(ids) and bool(mask[p]) for p in pos]
                    total += exact_anchor(model, draft, ids, valid, s, greedy)
                exact[greedy][int(seq["prompt_index"])] = total
    return runner, cache, draft, exact


def test_greedy_draft_path_equals_enumeration_of_the_argmax_chain(world):
    runner, cache, draft, exact = world
    found = unbiased_tau_by_prompt(draft, cache, runner, K, 0, greedy_draft=True)
    assert set(found) == set(exact[True])
    for pid, want in exact[True].items():
        print(f"\nprompt {pid}: exact Σ τ {want:.6f}, path {found[pid].tau_unbiased_sum:.6f}")
        assert found[pid].tau_unbiased_sum == pytest.approx(want, abs=1e-5), pid


def test_sampled_path_matches_enumeration_over_every_chain(world):
    """Mean over seeds of the per-prompt τ̂ sums against the enumerated expectation."""
    runner, cache, draft, exact = world
    runs = [unbiased_tau_by_prompt(draft, cache, runner, K, seed) for seed in range(SEEDS)]
    for pid, want in exact[False].items():
        x = torch.tensor([r[pid].tau_unbiased_sum for r in runs], dtype=torch.float64)
        mean, se = float(x.mean()), float(x.std()) / math.sqrt(SEEDS)
        anchors = runs[0][pid].anchors
        print(
            f"\nprompt {pid}: {anchors} anchors, exact Σ τ {want:.4f}, path {mean:.4f} ± {se:.4f}"
        )
        assert se > 0 and abs(mean - want) < 4 * se
        assert se < 0.02 * want  # precise enough to mean something


class TemperedSession(TableSession):
    """A draft that samples at temperature 0.5 but returns its T=1 logits."""

    def propose(self, k: int, sample_fn) -> tuple[torch.Tensor, torch.Tensor]:
        return super().propose(k, lambda z: sample_fn(2.0 * z))


class TemperedDraft(TableDraft):
    def start_session(self) -> TableSession:
        return TemperedSession(self)


def test_a_draft_that_samples_from_other_logits_is_refused(world):
    runner, cache, _, _ = world
    with pytest.raises(ValueError, match="other logits than it sampled"):
        unbiased_tau_by_prompt(TemperedDraft(), cache, runner, K, 0)
