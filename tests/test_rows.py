"""Target log-probs as rows by index (``IndexedRows``) equal the gathered ``[N, K, V]`` copy.

``align`` no longer copies the batch's target log-probs out per (anchor, draft step); every
reader gathers them a chunk at a time. These tests hold each reader to the copy it replaced,
bitwise (``torch.equal``): every registered loss (value and the draft's gradients) on every
registered architecture's ``align`` output, the trainer's micro-step and acceptance
diagnostic, and evaluation's expected τ per prompt. Parametrised over the registries, so a
new loss or architecture is checked without editing this file.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import tiny_llama

from specbench.acceptance import alpha
from specbench.decoding import evaluate
from specbench.decoding.expected import acceptance_probs
from specbench.drafts import DRAFTS, build_draft
from specbench.drafts.align import align
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.features.vocab import target_to_draft_map
from specbench.losses import LOSSES, IndexedRows, build
from specbench.losses.rows import materialize, row_chunk
from specbench.targets.featurize import compute_features
from specbench.targets.info import target_info_from_model
from specbench.targets.runner import TargetRunner
from specbench.training import trainer

V, K = 64, 3  # target vocabulary, draft steps
D2T = torch.arange(0, V, 2)  # every other target token is in the draft vocabulary
# smaller than the defaults where that is faster; an unlisted architecture runs its defaults
HPARAMS = {
    "medusa": {"num_heads": K},
    "mlp_speculator": {"num_stages": K},
    "block_diffusion": {"block_size": K + 1, "train_anchors": 6},
}
ARCHS = sorted(DRAFTS)
FIRST_BASE = next(n for n, ld in LOSSES.items() if ld.kind == "base")
# each base loss alone, each weighting or extra term on the first base loss
SPECS = [n if ld.kind == "base" else f"{FIRST_BASE}+{n}" for n, ld in LOSSES.items()]
CHUNKS = [None, 5]  # the default (one chunk here) and several chunks, the last one ragged


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama's feature cache of 5 sequences of different lengths (so batches are
    padded), and its target info."""
    model = tiny_llama(vocab_size=V)
    g = torch.Generator().manual_seed(0)
    seqs = []
    for i in range(5):
        ids = torch.randint(0, V, (4 + 3 * i + 8,), generator=g).tolist()
        seqs.append(Sequence(ids[:4], ids[4:], i))
    path = tmp_path_factory.mktemp("rows") / "cache.safetensors"
    save_cache(compute_features(TargetRunner(model), seqs, D2T, batch_size=5), path)
    return FeatureCache(path), target_info_from_model(model, D2T)


def make_draft(arch: str, info):
    torch.manual_seed(1)
    return build_draft(arch, info, **HPARAMS.get(arch, {}))


def gathered(st):
    """``st`` with its target log-probs gathered whole, as ``align`` used to return them."""
    return dataclasses.replace(st, target_logprobs=st.target_logprobs.materialize())


def step_targets(arch: str, setup):
    cache, info = setup
    draft = make_draft(arch, info).train()
    t2d = target_to_draft_map(D2T, V)
    st = align(draft, cache.batch([0, 1, 2, 3]), K, t2d, torch.Generator().manual_seed(3))
    return draft, st


# -- the type itself ---------------------------------------------------------------------------


def test_indexed_rows_read_as_the_gathered_tensor():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(7, 5, generator=g)  # [S, V]
    index = torch.randint(0, 7, (4, 3), generator=g)  # [N, K]
    rows = IndexedRows(source, index)
    want = source[index]  # [N, K, V]
    assert rows.shape == want.shape and rows.dtype == want.dtype and rows.device == want.device
    assert torch.equal(rows.materialize(), want)
    flat = want.reshape(-1, 5)
    for lo, hi in [(0, 12), (2, 7), (10, 12), (5, 5)]:
        assert torch.equal(rows.rows(lo, hi), flat[lo:hi])
        assert torch.equal(row_chunk(rows, lo, hi), flat[lo:hi])
        assert torch.equal(row_chunk(want, lo, hi), flat[lo:hi])  # a plain tensor: a view
    out = torch.empty(3, 5)
    assert rows.rows(1, 4, out=out).data_ptr() == out.data_ptr()
    assert torch.equal(out, flat[1:4])
    assert torch.equal(rows.reshape(-1, 5).materialize(), flat)
    assert rows.reshape(2, 6, 5).shape == (2, 6, 5)
    assert torch.equal(materialize(rows), want) and materialize(want) is want


def test_indexed_rows_reject_what_is_not_rows():
    with pytest.raises(ValueError, match="source"):
        IndexedRows(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="long"):
        IndexedRows(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="V must stay last"):
        IndexedRows(torch.zeros(2, 3), torch.zeros(4, dtype=torch.long)).reshape(2, 6)


def test_align_indexes_the_batch_rows(setup):
    """The rows ``align`` points at are the batch's own storage, not a copy."""
    cache, info = setup
    batch = cache.batch([0, 1])
    st = align(make_draft("medusa", info), batch, K, target_to_draft_map(D2T, V))
    assert st.target_logprobs.source.data_ptr() == batch["logprobs"].data_ptr()
    assert st.target_logprobs.shape == (*st.mask.shape, len(D2T))


# -- bitwise equal to the gathered copy ------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_every_loss_equals_the_gathered_targets(arch, chunk, setup):
    """Loss value and the draft's gradients, rows by index vs gathered, for every loss."""
    draft, st = step_targets(arch, setup)
    params = [p for p in draft.parameters() if p.requires_grad]
    full = gathered(st)
    assert st.mask.any()
    for spec in SPECS:
        fn = build(spec, chunk_rows=chunk)
        got = []
        for targets in (st, full):
            loss = fn(
                draft_logits=targets.logits,
                target_logits=targets.target_logprobs,
                mask=targets.mask,
                labels=targets.labels,
            )
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            got.append((loss, grads))
        (lazy, lazy_g), (copy, copy_g) = got
        assert torch.isfinite(lazy) and torch.equal(lazy, copy), spec
        assert any(g is not None and g.abs().sum() > 0 for g in lazy_g), spec
        for a, b in zip(lazy_g, copy_g, strict=True):
            assert (a is None and b is None) or torch.equal(a, b), spec


@pytest.mark.parametrize("arch", ARCHS)
def test_micro_step_equals_the_gathered_targets(arch, setup, monkeypatch):
    """The trainer's micro-step (loss, α by position, accumulated gradients), with the
    diagnostic in several chunks of rows."""
    cache, info = setup
    monkeypatch.setenv("SPECBENCH_LOSS_CHUNK_ROWS", "7")  # 7 // K = 2 anchors per chunk
    batch, t2d = cache.batch([0, 1, 2, 3]), target_to_draft_map(D2T, V)
    runs = []
    for wrap in (lambda st: st, gathered):
        monkeypatch.setattr(trainer, "align", lambda *a, wrap=wrap, **kw: wrap(align(*a, **kw)))
        draft = make_draft(arch, info).train()
        gen = torch.Generator().manual_seed(3)
        loss, acc = trainer.micro_step(draft, build("kl"), batch, K, t2d, gen, 0.5)
        runs.append((loss, acc, [p.grad for p in draft.parameters() if p.requires_grad]))
    (loss, acc, grads), (loss2, acc2, grads2) = runs
    assert torch.equal(loss, loss2) and torch.equal(acc, acc2)
    assert (acc > 0).any()
    for a, b in zip(grads, grads2, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk", ["1", "7", None])
def test_acceptance_diagnostic_equals_the_gathered_targets(arch, chunk, setup, monkeypatch):
    """``acceptance_by_position``, rows by index vs gathered, in chunks of 1 anchor, 2
    anchors and the default (all at once here). Chunk sizes do not agree with each other
    bitwise: the per-position sums add the chunks up in float32."""
    _, st = step_targets(arch, setup)
    if chunk is None:
        monkeypatch.delenv("SPECBENCH_LOSS_CHUNK_ROWS", raising=False)
    else:
        monkeypatch.setenv("SPECBENCH_LOSS_CHUNK_ROWS", chunk)
    lazy = trainer.acceptance_by_position(st)
    assert torch.equal(lazy, trainer.acceptance_by_position(gathered(st)))
    assert (lazy > 0).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_expected_tau_equals_the_gathered_targets(arch, temperature, setup, monkeypatch):
    """Evaluation's per-prompt expected τ sums, rows by index vs gathered (α in chunks of 5
    rows)."""
    cache, info = setup
    monkeypatch.setenv("SPECBENCH_LOSS_CHUNK_ROWS", "5")
    draft = make_draft(arch, info).eval()
    lazy = evaluate.expected_tau_by_prompt(draft, cache, K, temperature, batch_size=2)
    monkeypatch.setattr(evaluate, "align", lambda *a, **kw: gathered(align(*a, **kw)))
    copy = evaluate.expected_tau_by_prompt(draft, cache, K, temperature, batch_size=2)
    assert lazy == copy and len(lazy) == len(cache)
    assert sum(s.anchors for s in lazy.values()) > 0


def test_acceptance_probs_in_chunks_equal_the_whole():
    """α at T=1 in chunks of rows equals ``Σ min(p, q)`` of the whole tensors (as before)."""
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(6, 3, 50, generator=g)
    t = (3 * torch.randn(6, 3, 60, generator=g)).log_softmax(-1)[..., :50]
    whole = alpha(t.float().exp(), torch.softmax(z.float(), dim=-1))
    argmax = torch.zeros(6, 3, dtype=torch.long)
    rows = IndexedRows(t.reshape(-1, 50), torch.arange(18).view(6, 3))
    for chunk in (None, 1, 4):
        assert torch.equal(acceptance_probs(z, t, argmax, 1, chunk_rows=chunk), whole)
        assert torch.equal(acceptance_probs(z, rows, argmax, 1, chunk_rows=chunk), whole)
