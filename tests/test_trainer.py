"""The training loop: gradient accumulation over micro-batches, the LR schedule, the config."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_llama

from specbench.config import TrainConfig
from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.features.vocab import target_to_draft_map
from specbench.losses import build as build_loss
from specbench.targets.featurize import compute_features
from specbench.targets.info import target_info_from_model
from specbench.targets.runner import TargetRunner
from specbench.training.trainer import accumulate_gradients, cosine_lr, train_draft

D2T = torch.arange(0, 64, 2)  # every other target token is in the draft vocabulary
QUIET = lambda *args: None  # noqa: E731 (no training log)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A cache of 6 sequences from a tiny Llama, and a MEDUSA draft over it (deterministic:
    no sampled anchors, so micro-batching changes nothing but the grouping)."""
    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    seqs = []
    for i in range(6):
        ids = torch.randint(0, 64, (4 + 2 * i + 8,), generator=g).tolist()
        seqs.append(Sequence(ids[:4], ids[4:], i))
    path = tmp_path_factory.mktemp("trainer") / "cache.safetensors"
    save_cache(compute_features(TargetRunner(model), seqs, D2T, batch_size=3), path)
    info = target_info_from_model(model, D2T)
    torch.manual_seed(0)
    return FeatureCache(path), build_draft("medusa", info, num_heads=3)


def settings(**kw) -> TrainConfig:
    base = dict(steps=3, batch_size=4, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    base.update(warmup_steps=1, grad_clip=1e9, k=3)
    return TrainConfig(**{**base, **kw})


def grads(draft) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None}


def test_micro_batches_accumulate_the_mean_of_their_gradients(setup):
    cache, draft = setup
    draft = copy.deepcopy(draft).train()
    loss_fn = build_loss("kl")
    t2d = target_to_draft_map(cache.draft_to_target, draft.info.vocab_size)
    gen, cpu = torch.Generator(), torch.device("cpu")
    idx = [5, 0, 3, 1]
    draft.zero_grad()
    loss, alpha = accumulate_gradients(draft, loss_fn, cache, idx, 3, 2, t2d, gen, cpu)
    together = grads(draft)
    halves, losses = [], []
    for part in (idx[:2], idx[2:]):  # each half as a whole batch of its own
        draft.zero_grad()
        losses.append(accumulate_gradients(draft, loss_fn, cache, part, 3, None, t2d, gen, cpu)[0])
        halves.append(grads(draft))
    assert together.keys() == halves[0].keys() and together
    for name, g in together.items():
        torch.testing.assert_close(g, (halves[0][name] + halves[1][name]) / 2)
    assert loss == pytest.approx(sum(losses) / 2)
    assert alpha.shape == (3,) and ((alpha > 0) & (alpha < 1)).all()


def test_micro_batch_equal_to_batch_changes_nothing(setup):
    cache, draft = setup
    runs = []
    for micro in (None, 4):
        d = copy.deepcopy(draft)
        s = settings(micro_batch_size=micro)
        records = train_draft(d, build_loss("kl"), cache, s, 0, log=QUIET)
        runs.append((records, d.state_dict()))
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(runs[0][0]) == strip(runs[1][0])
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_training_lowers_the_loss(setup):
    cache, draft = setup
    records = train_draft(
        copy.deepcopy(draft),
        build_loss("kl"),
        cache,
        settings(steps=30, batch_size=6),
        0,
        log=QUIET,
    )
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lrs = [cosine_lr(step, 10, 2, 1.0) for step in range(11)]
    assert lrs[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert lrs[10] == pytest.approx(0.0)


def test_micro_batch_must_divide_the_batch():
    base = dict(k=3, steps=1, batch_size=6, lr=1e-3, warmup_steps=0, grad_clip=1.0)
    assert TrainConfig(**base, micro_batch_size=3).micro_batch_size == 3
    with pytest.raises(ValueError, match="micro_batch_size 4 must divide train.batch_size 6"):
        TrainConfig(**base, micro_batch_size=4)


def test_out_of_vocab_rows_can_be_dropped_from_the_loss(setup):
    """``train.out_of_vocab: drop`` masks the rows whose target argmax has no draft id."""
    cache, draft = setup
    t2d = target_to_draft_map(cache.draft_to_target, draft.info.vocab_size)
    gen, cpu, idx = torch.Generator(), torch.device("cpu"), [0, 1, 2, 3]
    seen = {}

    def spy(**kw):  # records the mask the loss sees; a constant-gradient loss
        seen["mask"] = kw["mask"].clone()
        return (kw["draft_logits"].float() * kw["mask"][..., None]).mean()

    accumulate_gradients(copy.deepcopy(draft), spy, cache, idx, 3, None, t2d, gen, cpu)
    keep = seen["mask"]
    accumulate_gradients(
        copy.deepcopy(draft), spy, cache, idx, 3, None, t2d, gen, cpu, drop_out_of_vocab=True
    )
    drop = seen["mask"]
    batch = cache.batch(idx, cpu)
    from specbench.drafts.align import align

    st = align(copy.deepcopy(draft), batch, 3, t2d, torch.Generator())
    outside = t2d[st.target_argmax] < 0
    assert (outside & keep).any(), "the fixture needs rows whose argmax is off the vocabulary"
    assert torch.equal(drop, keep & ~outside)


def test_k_per_architecture():
    base = dict(steps=1, batch_size=6, lr=1e-3, warmup_steps=0, grad_clip=1.0)
    cfg = TrainConfig(**base, k={"default": 6, "block_diffusion": 15})
    assert cfg.k_for("block_diffusion") == 15 and cfg.k_for("eagle3") == 6
    assert TrainConfig(**base, k=4).k_for("medusa") == 4
    with pytest.raises(ValueError, match="needs a 'default' entry"):
        TrainConfig(**base, k={"medusa": 3})


def test_training_on_a_subset_counts_the_response_tokens_it_saw(setup):
    """``sequences`` restricts the batches; ``tokens`` counts their response positions."""
    cache, draft = setup
    records = train_draft(
        copy.deepcopy(draft), build_loss("kl"), cache, settings(steps=2), 0, log=QUIET,
        sequences=[2],
    )  # fmt: skip
    per_seq = int(cache.sequence(2)["loss_mask"].sum())
    assert per_seq > 0 and all(r["tokens"] == 4 * per_seq for r in records)  # batch of 4
    with pytest.raises(ValueError, match="no training sequences"):
        train_draft(copy.deepcopy(draft), build_loss("kl"), cache, settings(), 0, sequences=[])


def test_bf16_autocast_trains_close_to_fp32(setup):
    """``train.autocast: bfloat16``: the same run, the loss within bf16 rounding of fp32."""
    cache, draft = setup
    runs = {}
    for mode in ("none", "bfloat16"):
        runs[mode] = train_draft(
            copy.deepcopy(draft), build_loss("kl"), cache, settings(steps=5, autocast=mode), 0,
            log=QUIET,
        )  # fmt: skip
    fp32, bf16 = (torch.tensor([r["loss"] for r in runs[m]]) for m in ("none", "bfloat16"))
    assert not torch.equal(fp32, bf16)  # autocast did change the arithmetic
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.02)
    assert bf16[-1] < bf16[0]
