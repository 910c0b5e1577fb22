"""Teacher-forced expected τ: the chain formula and per-step acceptance probabilities."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_llama

from specbench.decoding.expected import acceptance_probs, expected_tau
from specbench.decoding.speculative import speculative_decode
from specbench.drafts.base import DraftSession, SampleFn
from specbench.targets.runner import TargetRunner


def test_expected_tau_by_hand():
    alpha = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0], [0.0, 0.9, 0.9], [0.8, 0.5, 0.25]])
    valid = torch.ones(4, 3, dtype=torch.bool)
    want = [1 + 0.5 + 0.25 + 0.125, 4.0, 1.0, 1 + 0.8 + 0.4 + 0.1]
    torch.testing.assert_close(expected_tau(alpha, valid), torch.tensor(want, dtype=torch.float64))


def test_invalid_step_stops_the_chain():
    alpha = torch.full((3, 3), 0.5)
    valid = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(
        expected_tau(alpha, valid), torch.tensor([1.75, 1.5, 1.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError):
        expected_tau(alpha, valid[:, :2])


def test_acceptance_probs_t1_by_hand():
    q = torch.tensor([0.5, 0.3, 0.2])
    p = torch.tensor([0.2, 0.3, 0.4])  # sliced to the draft vocab: 0.1 lies outside it
    alpha = acceptance_probs(q.log().view(1, 1, 3), p.log().view(1, 1, 3), torch.tensor([[2]]), 1)
    assert alpha.shape == (1, 1) and float(alpha) == pytest.approx(0.2 + 0.3 + 0.2)


def test_acceptance_probs_t0_and_other_t():
    logits = torch.tensor([[[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]]])  # draft argmax 1, then 0
    logp = torch.zeros(1, 2, 3)
    alpha = acceptance_probs(logits, logp, torch.tensor([[1, -1]]), 0.0)
    assert alpha.tolist() == [[1.0, 0.0]]  # −1: target argmax outside the draft vocab
    with pytest.raises(ValueError):
        acceptance_probs(logits, logp, torch.tensor([[1, -1]]), 0.7)


class ConstantDraft(DraftSession):
    def __init__(self, logits: torch.Tensor, draft_to_target: torch.Tensor) -> None:
        self.logits, self.draft_to_target = logits, draft_to_target

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        pass

    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits.expand(k, -1).clone()
        return torch.tensor([sample_fn(z) for z in logits]), logits


def test_live_alpha_matches_teacher_forced_alpha():
    """Live decoding's Σ min(p, q) at the first draft position = acceptance_probs there."""
    runner = TargetRunner(tiny_llama(vocab_size=24, hidden_size=32, layers=1, seed=3))
    g = torch.Generator().manual_seed(0)
    d2t = torch.tensor([0, 2, 3, 5, 8, 13, 21, 22])
    draft = ConstantDraft(torch.randn(d2t.numel(), generator=g), d2t)
    prompt = torch.tensor([4, 1, 7])
    for temperature in (0.0, 1.0):
        out = speculative_decode(runner, draft, d2t, prompt, 2, 1, temperature, g)
        seq = torch.tensor([prompt.tolist() + out.tokens[:1]])
        logits = runner.forward(seq, use_cache=False).logits[0, -1]
        logp = torch.log_softmax(logits, -1)[d2t].view(1, 1, -1)
        t2d = torch.full((24,), -1)
        t2d[d2t] = torch.arange(d2t.numel())
        argmax = t2d[logits.argmax()].view(1, 1)
        alpha = acceptance_probs(draft.logits.view(1, 1, -1), logp, argmax, temperature)
        assert out.reached[0] == 1
        assert out.alpha_sum[0] == pytest.approx(float(alpha), abs=1e-5), temperature
        assert math.isfinite(float(expected_tau(alpha, torch.ones(1, 1, dtype=torch.bool))))
