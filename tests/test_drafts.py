"""Draft architectures: shapes, training ↔ decoding consistency, a training step, save/load.

Parametrized over the registry (``DRAFTS``): a newly registered architecture gets every
generic test here without editing this file (``HPARAMS`` only shrinks known ones for speed;
``VARIANTS`` adds second configurations of an architecture).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny import tiny_deepseek_v3_config, tiny_llama

from specbench.decoding.speculative import speculative_decode, target_decode
from specbench.drafts import DRAFTS, build_draft, load_draft
from specbench.drafts.align import align
from specbench.drafts.anchors import sample_anchors, with_first_target
from specbench.drafts.base import tied_names
from specbench.drafts.recurrent import RecurrentDraft
from specbench.features.vocab import target_to_draft_map
from specbench.targets.info import TargetInfo, target_info_from_model
from specbench.targets.runner import TargetRunner

V, VD, D, L, K = 80, 40, 32, 14, 4  # target vocab, draft vocab, hidden, length, draft steps
# smaller than the defaults where that is faster; an unlisted architecture runs its defaults
HPARAMS = {
    "medusa": {"num_heads": K},
    "mlp_speculator": {"num_stages": K},
    "block_diffusion": {"block_size": K + 1, "train_anchors": 6},
}
# further cases: (architecture, target, hparams)
VARIANTS = {
    "mtp_deepseek": ("mtp", "deepseek", {}),
    "draft_lm_scratch": ("draft_lm", "llama", {"init": "scratch", "layers": 2, "width": 0.5}),
    "mlp_speculator_tied": (
        "mlp_speculator",
        "llama",
        {"num_stages": K, "tie_weights": True, "scale_input": True},
    ),
}


def spec(case: str) -> tuple[str, str, dict]:
    """(architecture, target, hparams) of a test case."""
    return VARIANTS.get(case) or (case, "llama", HPARAMS.get(case, {}))


CASES = sorted(DRAFTS) + sorted(VARIANTS)
RECURRENT = [c for c in CASES if issubclass(DRAFTS[spec(c)[0]], RecurrentDraft)]
# architectures that may subsample anchors in training (hparam ``train_anchors``) ...
ANCHORED = [c for c in CASES if "train_anchors" in DRAFTS[spec(c)[0]].hparam_defaults]
# ... and, of those, the ones whose default (None) is the all-position objective
SUBSAMPLED = [c for c in ANCHORED if DRAFTS[spec(c)[0]].hparam_defaults["train_anchors"] is None]


def tiny_deepseek_v3():
    """A random DeepSeek-V3 (MLA + MoE) with one MTP layer, small enough for CPU tests."""
    from transformers import DeepseekV3ForCausalLM

    cfg = tiny_deepseek_v3_config(V, D)
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(cfg).eval()


def draft_vocab() -> torch.Tensor:
    return torch.randperm(V, generator=torch.Generator().manual_seed(0))[:VD]


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {"llama": tiny_llama(vocab_size=V, hidden_size=D), "deepseek": tiny_deepseek_v3()}


@pytest.fixture(scope="module")
def infos(models) -> dict[str, TargetInfo]:
    return {name: target_info_from_model(m, draft_vocab()) for name, m in models.items()}


def make(case: str, infos: dict[str, TargetInfo], **extra):
    """(draft, info) for a test case; drafts are seeded so every test sees the same weights.
    ``extra`` hparams must not change the weights (e.g. ``train_anchors``)."""
    torch.manual_seed(1)
    arch, target, hparams = spec(case)
    draft = build_draft(arch, infos[target], **{**hparams, **extra})
    if case == "mtp_deepseek":
        with torch.no_grad():  # std 0.02 leaves attention ~uniform: too weak a test at d=32
            for p in draft.block.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.25)
    if isinstance(draft.hparams.get("tie_weights"), bool):  # norms start at w = 1, b = 0:
        with torch.no_grad():  # perturb them so that their weights and biases are tested
            for name, p in draft.named_parameters():
                if name.startswith("ln."):
                    p.add_(0.3 * torch.randn(p.shape))
    return draft, infos[target]


def make_batch(info: TargetInfo):
    """Two rows; row 1 is right-padded after 9 tokens. Tokens lie in the draft vocabulary."""
    g = torch.Generator().manual_seed(2)
    ids = info.draft_to_target[torch.randint(0, VD, (2, L), generator=g)]
    feats = torch.randn(2, L, 4, D, generator=g)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, 9:] = False
    return feats, ids, mask


def train(draft, batch, steps: int = K, seed: int = 3):
    return draft.forward_train(*batch, steps, generator=torch.Generator().manual_seed(seed))


def teacher(info: TargetInfo, row: torch.Tensor, anchor: int):
    """sample_fn that returns the true next tokens x_{i+2}, x_{i+3}, ... (draft ids)."""
    t2d = torch.full((V,), -1, dtype=torch.long)
    t2d[info.draft_to_target] = torch.arange(VD)
    calls = []

    def sample(logits: torch.Tensor) -> int:
        calls.append(1)
        return int(t2d[row[anchor + 1 + len(calls)]])

    return sample


@pytest.mark.parametrize("case", CASES)
def test_shapes(case, infos):
    draft, info = make(case, infos)
    out = train(draft, make_batch(info))
    A = out.anchors.shape[1]
    assert out.logits.shape == (2, A, K, VD) and out.anchors.shape == (2, A)
    assert torch.isfinite(out.logits).all()  # padded rows must not produce NaN either
    if draft.hparams.get("train_anchors") is not None:  # a random subset in training mode
        assert A == min(draft.hparams["train_anchors"], L)
        _, _, mask = make_batch(info)
        a = out.anchors[1]
        real = a[a != L - 1]  # L−1 only fills rows with too few valid anchors
        assert mask[1, real + 1].all()
    else:
        assert torch.equal(out.anchors, torch.arange(L).expand(2, L))
    assert draft.num_trainable_parameters() > 0 and draft.flops_per_step() > 0


@pytest.mark.parametrize("case", CASES)
def test_decoding_equals_training(case, infos):
    """A teacher-forced session reproduces forward_train's logits, on both rows (one padded)."""
    check_decoding_equals_training(*make(case, infos))


def check_decoding_equals_training(draft, info, training: bool = False):
    """``training=True`` keeps training-mode anchor subsampling on (nothing random else)."""
    feats, ids, mask = batch = make_batch(info)
    with torch.no_grad():
        out = train(draft.train(training), batch)
    draft.eval()
    checked = 0
    for b in range(2):
        n_real = int(mask[b].sum())
        usable = [(j, a) for j, a in enumerate(out.anchors[b].tolist()) if a + 1 + K < n_real]
        for a_idx, a in usable[:: max(1, len(usable) // 3)]:  # teacher tokens must be real
            session = draft.start_session()
            session.begin(int(ids[b, 0]))
            session.extend(feats[b, : a + 1], ids[b, 1 : a + 2])
            tokens, logits = session.propose(K, teacher(info, ids[b], a))
            assert tokens.shape == (K,) and logits.shape == (K, VD)
            torch.testing.assert_close(logits, out.logits[b, a_idx], atol=1e-5, rtol=1e-5)
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("case", CASES)
def test_session_chunks_and_no_mutation(case, infos):
    draft, info = make(case, infos)
    feats, ids, _ = make_batch(info)
    a = 8

    def session(cuts):
        s = draft.start_session()
        s.begin(int(ids[0, 0]))
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            s.extend(feats[0, lo:hi], ids[0, lo + 1 : hi + 1])
        return s

    whole, chunked = session([0, a + 1]), session([0, 2, 3, 7, a + 1])
    sample = teacher(info, ids[0], a)
    first = whole.propose(K, sample)
    again = whole.propose(K, teacher(info, ids[0], a))  # propose left no trace
    other = chunked.propose(K, teacher(info, ids[0], a))
    for x, y in [(first, again), (first, other)]:
        assert torch.equal(x[0], y[0])
        torch.testing.assert_close(x[1], y[1], atol=1e-5, rtol=1e-5)
    # after a proposal, extending further equals a fresh session over the longer prefix
    whole.extend(feats[0, a + 1 : a + 3], ids[0, a + 2 : a + 4])
    fresh = session([0, a + 3])
    torch.testing.assert_close(
        whole.propose(2, lambda z: 0)[1], fresh.propose(2, lambda z: 0)[1], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("case", CASES)
def test_decoding_is_lossless(case, infos, models):
    """Through the real decoder: T = 0 emits exactly the target's greedy tokens; at T = 1 the
    logits a session returns are the ones its tokens were sampled from (the decoder's q, so
    the accept/residual rule keeps the output distributed as the target's)."""
    draft, info = make(case, infos)
    runner = TargetRunner(models[spec(case)[1]])
    prompt, n = torch.tensor([3, 17, 5, 60, 2, 33]), 10
    k = min(K, draft.max_k or K)
    greedy = target_decode(runner, prompt, n, temperature=0)
    res = speculative_decode(
        runner, draft.eval().start_session(), info.draft_to_target, prompt, n, k, temperature=0
    )
    assert res.tokens == greedy.tokens and res.num_rounds >= 1

    class Recording:  # wraps a session: checks every proposal against the logits it sampled
        def __init__(self, session):
            self.session, self.checked = session, 0

        def begin(self, first_token):
            self.session.begin(first_token)

        def extend(self, features, next_tokens):
            self.session.extend(features, next_tokens)

        def propose(self, k, sample_fn):
            seen = []
            ids, logits = self.session.propose(k, lambda z: seen.append(z) or sample_fn(z))
            torch.testing.assert_close(torch.stack(seen), logits, atol=0, rtol=0)
            self.checked += 1
            return ids, logits

    session = Recording(draft.start_session())
    g = torch.Generator().manual_seed(5)
    res = speculative_decode(runner, session, info.draft_to_target, prompt, n, k, 1.0, g)
    assert len(res.tokens) == n and session.checked == res.num_rounds >= 1


def masked_kl(out, batch, p: torch.Tensor) -> torch.Tensor:
    """Forward KL(p‖q) averaged over (anchor, step) pairs whose target position is real."""
    _, _, mask = batch
    steps = torch.arange(1, K + 1)
    pos = out.anchors[..., None] + 1 + steps  # position of the predicted token
    ok = (pos < L) & mask.gather(1, pos.clamp(max=L - 1).flatten(1)).view(pos.shape)
    kl = (p * (p.log() - F.log_softmax(out.logits, dim=-1))).sum(-1)
    return (kl * ok).sum() / ok.sum()


@pytest.mark.parametrize("case", CASES)
def test_one_step_lowers_kl(case, infos):
    draft, info = make(case, infos)
    batch = make_batch(info)
    out = train(draft, batch)
    g = torch.Generator().manual_seed(4)
    p = F.softmax(3 * torch.randn(out.logits.shape, generator=g), dim=-1)
    opt = torch.optim.Adam([q for q in draft.parameters() if q.requires_grad], lr=1e-3)
    before = masked_kl(out, batch, p)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = masked_kl(train(draft, batch), batch, p)
    assert after < before


@pytest.mark.parametrize("case", CASES)
def test_save_load_roundtrip(case, infos, tmp_path):
    draft, info = make(case, infos)
    draft.save(tmp_path / "d")
    loaded = load_draft(tmp_path / "d", info)
    batch = make_batch(info)
    with torch.no_grad():
        assert torch.equal(train(draft, batch).logits, train(loaded, batch).logits)
    saved = load_file(str(tmp_path / "d" / "model.safetensors"))
    assert set(saved) == set(draft.state_dict()) - set(tied_names(draft))
    # a target-vocabulary tensor is saved only as a draft's own weight (draft_lm's embedding),
    # never as the target's tensors the feature drafts share (non-persistent buffers)
    own = {n for n, _ in draft.named_parameters()}
    shared = [n for n, t in saved.items() if V in t.shape and n not in own]
    assert not shared, f"the target's tensors were saved: {shared}"
    n_params = sum(p.numel() for p in draft.parameters())
    assert sum(t.numel() for t in saved.values()) <= n_params + 16  # + DeepSeek router bias
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["arch"] == draft.arch
    # every hparam, defaults included, so loading never depends on today's defaults
    assert set(cfg["hparams"]) == set(DRAFTS[draft.arch].hparam_defaults)
    assert cfg["hparams"] == draft.hparams == loaded.hparams


# -- anchor subsampling of the recurrent drafts' steps 2..K ----------------------------------
# make_batch: row 0 has 12 valid anchors (i + 2 < 14), row 1 has 7 (i + 2 < 9); 10 anchors
# per row leaves row 1 three short, so the padding anchor L − 1 is exercised too.
SUB = 10


@pytest.mark.parametrize("case", ANCHORED)
def test_train_anchors_exact(case, infos):
    """Subsampled TTT gives exactly the full TTT's logits at the chosen anchors (all steps)."""
    full_draft, info = make(case, infos)
    sub_draft, _ = make(case, infos, train_anchors=SUB)
    batch = make_batch(info)
    with torch.no_grad():
        full = train(full_draft.eval(), batch)
        sub = train(sub_draft.train(), batch)  # subsampling is training-only
    assert sub.logits.shape == (2, SUB, K, VD) and sub.anchors.shape == (2, SUB)
    expected = full.logits[torch.arange(2)[:, None], sub.anchors]
    torch.testing.assert_close(sub.logits, expected, atol=1e-5, rtol=1e-5)
    assert sub_draft.hparams["train_anchors"] == SUB


@pytest.mark.parametrize("case", SUBSAMPLED)
def test_train_anchors_distinct_and_padding_masked(case, infos):
    """Real anchors are distinct valid positions; padding anchors get no loss in ``align``."""
    draft, info = make(case, infos, train_anchors=SUB)
    feats, ids, mask = make_batch(info)
    batch = {
        "features": feats,
        "input_ids": ids,
        "attention_mask": mask,
        "loss_mask": mask,
        "logprobs": torch.zeros(2, L, VD),
        "target_argmax": torch.zeros(2, L, dtype=torch.long),
    }
    t2d = target_to_draft_map(info.draft_to_target, V)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        out = draft.forward_train(feats, ids, mask, K, torch.Generator().manual_seed(5))
        st = align(draft, batch, K, t2d, gen)
    n_valid = [L - 2, 9 - 2]
    for b in range(2):
        a = out.anchors[b]
        real, pad = a[a != L - 1], a[a == L - 1]
        assert len(set(real.tolist())) == len(real) == min(SUB, n_valid[b])
        assert (real < n_valid[b]).all() and mask[b, real + 2].all()
        assert len(pad) == SUB - len(real)
    step_mask = st.mask.view(2, SUB, K)
    padding = out.anchors == L - 1
    assert not step_mask[padding].any()  # padding contributes nothing
    assert step_mask[~padding][:, 0].all()  # every real anchor has its step-1 target
    # uniform without replacement: over many draws every valid position turns up
    seen = torch.zeros(2, L, dtype=torch.bool)
    for seed in range(50):
        chosen = sample_anchors(with_first_target(mask), 3, torch.Generator().manual_seed(seed))
        seen[torch.arange(2)[:, None], chosen] = True
    assert seen[0, : L - 2].all() and not seen[0, L - 2 :].any()
    assert seen[1, :7].all() and not seen[1, 7:].any()


@pytest.mark.parametrize("case", ANCHORED)
def test_train_anchors_decoding_equals_training(case, infos):
    """The subsampled steps 2..K also match teacher-forced decoding sessions directly."""
    check_decoding_equals_training(*make(case, infos, train_anchors=SUB), training=True)


@pytest.mark.parametrize("case", ANCHORED)
def test_train_anchors_rejects_nonpositive(case, infos):
    with pytest.raises(ValueError):
        make(case, infos, train_anchors=0)


def test_unknown_arch_lists_valid(infos):
    with pytest.raises(ValueError) as err:
        build_draft("nope", infos["llama"])
    for name in ["eagle3", "medusa", "mlp_speculator", "mtp", "block_diffusion"]:
        assert name in str(err.value) and name in DRAFTS


@pytest.mark.parametrize("case", CASES)
def test_too_many_steps(case, infos):
    """Heads, stages or a block bound K (``max_k``); recurrent drafts take any K."""
    draft, info = make(case, infos)
    if draft.max_k is None:
        assert train(draft, make_batch(info), steps=K + 1).logits.shape[2] == K + 1
        return
    with pytest.raises(ValueError):
        train(draft, make_batch(info), steps=draft.max_k + 1)


@pytest.mark.parametrize("case", ANCHORED)
def test_eval_mode_scores_every_anchor(case, infos):
    """Expected τ is paired across losses: in eval mode no anchor is subsampled."""
    draft, info = make(case, infos, train_anchors=3)
    batch = make_batch(info)
    assert train(draft, batch).anchors.shape[1] < L  # training mode: a random subset
    out = train(draft.eval(), batch)
    assert torch.equal(out.anchors, torch.arange(L).expand(2, L))


def test_medusa_train_anchors_are_a_subset_of_the_full_forward(infos):
    draft, info = make("medusa", infos, train_anchors=5)
    batch = make_batch(info)
    with torch.no_grad():
        sub = train(draft.train(), batch)
        full = train(draft.eval(), batch)
    assert sub.anchors.shape == (2, 5)
    expected = full.logits[torch.arange(2)[:, None], sub.anchors]
    torch.testing.assert_close(sub.logits, expected)


# -- hparams are recorded in full ----------------------------------------------------------
def test_load_ignores_changed_defaults(infos, tmp_path, monkeypatch):
    """A draft saved today loads with its own hparams after a default changes."""
    cls = DRAFTS["block_diffusion"]
    draft = build_draft("block_diffusion", infos["llama"])  # every hparam at its default
    draft.save(tmp_path / "d")
    init = cls.__init__.__wrapped__  # the architecture's own __init__
    names = list(cls.hparam_defaults)
    changed = dict(cls.hparam_defaults, block_size=7, train_anchors=3)
    monkeypatch.setattr(init, "__defaults__", tuple(changed[n] for n in names))
    assert build_draft("block_diffusion", infos["llama"]).hparams["block_size"] == 7
    loaded = load_draft(tmp_path / "d", infos["llama"])
    assert loaded.hparams == draft.hparams and loaded.block_size == 16
    batch = make_batch(infos["llama"])
    with torch.no_grad():
        assert torch.equal(train(draft.eval(), batch).logits, train(loaded.eval(), batch).logits)


def test_registration_records_given_hparams_and_needs_defaults(infos, monkeypatch):
    from specbench.drafts import base

    monkeypatch.setattr(base, "DRAFTS", {})

    @base.register_draft("forgetful")
    class Forgetful(base.Draft):  # passes nothing up: the registration still records all
        def __init__(self, info, width: int = 3, depth: int | None = None) -> None:
            super().__init__(info)

    draft = base.build_draft("forgetful", infos["llama"], width=5)
    assert draft.hparams == {"width": 5, "depth": None}
    with pytest.raises(ValueError, match="valid: \\['depth', 'width'\\]"):
        base.build_draft("forgetful", infos["llama"], height=1)
    with pytest.raises(TypeError, match="needs a default"):

        @base.register_draft("no_default")
        class NoDefault(base.Draft):
            def __init__(self, info, width: int) -> None:
                super().__init__(info)


# -- anchors -------------------------------------------------------------------------------
def test_block_anchors_come_from_response_positions(infos):
    """Block drafter (SpecForge's DFlash trainer): anchors ``i`` with ``x_{i+1}`` and
    ``x_{i+2}`` response tokens, i.e. ``loss_mask[i] ∧ loss_mask[i+1]``, none in the prompt."""
    draft, info = make("block_diffusion", infos, train_anchors=3)
    feats, ids, mask = make_batch(info)
    loss_mask = mask.clone()
    loss_mask[:, :5] = False  # a 6-token prompt: x_1..x_5 are prompt tokens
    seen = torch.zeros(2, L, dtype=torch.bool)
    for seed in range(60):
        out = draft.forward_train(
            feats, ids, mask, K, torch.Generator().manual_seed(seed), loss_mask=loss_mask
        )
        seen[torch.arange(2)[:, None], out.anchors] = True
    eligible = loss_mask.clone()
    eligible[:, :-1] &= loss_mask[:, 1:]
    eligible[:, -1] = False
    assert torch.equal(seen, eligible)  # row 0: anchors 5..12, row 1: 5..7


def test_sample_anchors_all_eligible_when_num_is_none():
    eligible = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    got = sample_anchors(eligible, None, torch.Generator().manual_seed(0))
    assert got.tolist() == [[1, 2, 4], [0, 4, 4]]  # row 1 padded with L − 1


@pytest.mark.parametrize("case", RECURRENT)
@pytest.mark.parametrize("train_anchors", [None, SUB])
def test_recomputed_ttt_steps_give_the_same_logits_and_gradients(case, infos, train_anchors):
    """Activation checkpointing per TTT step (``recompute_steps``, on where memory binds)
    changes what backward keeps, never a value: logits and every gradient bitwise equal."""
    results = []
    for recompute in (False, True):
        draft, info = make(case, infos, train_anchors=train_anchors)
        draft.train().recompute_steps = recompute
        out = train(draft, make_batch(info))
        (out.logits.square().mean() + out.logits.logsumexp(-1).mean()).backward()
        grads = {n: p.grad for n, p in draft.named_parameters() if p.grad is not None}
        results.append((out.logits.detach(), grads))
    (logits, grads), (logits_r, grads_r) = results
    assert torch.equal(logits, logits_r) and grads.keys() == grads_r.keys() and grads
    for name, g in grads.items():
        assert torch.equal(g, grads_r[name]), name
