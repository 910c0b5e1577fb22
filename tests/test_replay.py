"""T=0 replay against a cached greedy continuation equals live speculative decoding."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama

from specbench.decoding.replay import replay_greedy
from specbench.decoding.speculative import speculative_decode, target_decode
from specbench.drafts import DRAFTS, build_draft
from specbench.drafts.base import DraftSession
from specbench.features.cache import Sequence
from specbench.targets.featurize import compute_features
from specbench.targets.info import target_info_from_model
from specbench.targets.runner import TargetRunner

MAX_NEW, K = 14, 3


class _OracleSession(DraftSession):
    """Proposes the true greedy continuation except at a few fixed positions (wrong there)."""

    def __init__(self, greedy: list[int], wrong: set[int], vocab: int) -> None:
        self.greedy, self.wrong, self.vocab, self.n = greedy, wrong, vocab, 0

    def extend(self, features, next_tokens):
        self.n += int(next_tokens.numel())

    def propose(self, k, sample_fn):
        # n positions are committed and token n is known: drafting starts at token n + 1
        ids = []
        for j in range(k):
            pos = self.n + 1 + j
            t = self.greedy[pos]
            ids.append((t + 1) % self.vocab if pos in self.wrong else t)
        logits = torch.full((k, self.vocab), -1e9)
        logits[torch.arange(k), torch.tensor(ids)] = 0.0
        return torch.tensor(ids), logits


class _OracleDraft:
    def __init__(self, greedy, wrong, vocab):
        self.args = (greedy, wrong, vocab)

    def start_session(self):
        return _OracleSession(*self.args)


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(vocab_size=32, seed=3)
    runner = TargetRunner(model)
    prompts = [torch.tensor(p) for p in ([1, 5, 9, 3], [7, 7, 2], [4, 11, 30, 8, 6])]
    cached = []
    for p in prompts:
        cont = target_decode(runner, p, MAX_NEW + K + 1, temperature=0).tokens
        seq = Sequence(p.tolist(), cont, 0)
        t = compute_features(runner, [seq], torch.arange(32))
        cached.append((p, cont, t["features"], t["input_ids"]))
    return model, runner, cached


def _same(live, rep):
    assert rep.tokens == live.tokens
    assert rep.accepted == live.accepted
    assert rep.reached == live.reached and rep.accepted_at == live.accepted_at


@pytest.mark.parametrize("arch", sorted(DRAFTS))
def test_replay_equals_live_for_every_architecture(setup, arch):
    model, runner, cached = setup
    info = target_info_from_model(model, torch.arange(32))
    torch.manual_seed(0)
    draft = build_draft(arch, info).eval()
    for p, _, feats, ids in cached:
        live = speculative_decode(
            runner, draft.start_session(), info.draft_to_target, p, MAX_NEW, K, temperature=0
        )
        rep = replay_greedy(draft, feats, ids, len(p), info.draft_to_target, MAX_NEW, K)
        _same(live, rep)


@pytest.mark.parametrize("eos_at", [None, 5, 0])
def test_replay_equals_live_with_oracle_draft_and_eos(setup, eos_at):
    _, runner, cached = setup
    d2t = torch.arange(32)
    for p, cont, feats, ids in cached:
        greedy = p.tolist() + cont
        wrong = {len(p) + 3, len(p) + 4, len(p) + 10}
        eos = None if eos_at is None else cont[eos_at]
        draft = _OracleDraft(greedy, wrong, 32)
        live = speculative_decode(
            runner, draft.start_session(), d2t, p, MAX_NEW, K, temperature=0, eos_token_id=eos
        )
        rep = replay_greedy(draft, feats, ids, len(p), d2t, MAX_NEW, K, eos_token_id=eos)
        _same(live, rep)
        if eos is None:  # the oracle makes whole rounds accepted: the bonus-token path runs
            assert max(live.accepted) == K and min(live.accepted) < K
        assert live.tokens == cont[: len(live.tokens)]


def test_replay_refuses_a_continuation_without_lookahead(setup):
    model, _, cached = setup
    p, cont, feats, ids = cached[0]
    info = target_info_from_model(model, torch.arange(32))
    draft = _OracleDraft(p.tolist() + cont, set(), 32)
    short = len(p) + 6
    with pytest.raises(ValueError, match="look-ahead|too short"):
        replay_greedy(draft, feats[:short], ids[:short], len(p), info.draft_to_target, 14, K)
