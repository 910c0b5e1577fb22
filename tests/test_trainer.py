"""The training loop: micro-batches, the batch and LR schedules, groups, NaN stops, resume."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from tiny import tiny_llama

from specbench.artifacts import TrainStatus
from specbench.config import TrainConfig
from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.features.vocab import target_to_draft_map
from specbench.losses import build as build_loss
from specbench.targets.featurize import compute_features
from specbench.targets.info import target_info_from_model
from specbench.targets.runner import TargetRunner
from specbench.training.schedule import BatchSchedule, cosine_lr, micro_generator
from specbench.training.trainer import (
    make_member,
    micro_step,
    move_sharing,
    train_draft,
    train_group,
)

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
    base.update(warmup_steps=1, grad_clip=1e9, k=3, autocast="none")  # fp32 on any CPU
    return TrainConfig(**{**base, **kw})


def grads(draft) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None}


def test_micro_batches_accumulate_the_mean_of_their_gradients(setup):
    cache, draft = setup
    draft = copy.deepcopy(draft).train()
    loss_fn = build_loss("kl")
    t2d = target_to_draft_map(cache.draft_to_target, draft.info.vocab_size)
    halves = ([5, 0], [3, 1])
    draft.zero_grad()
    loss, alpha = 0.0, 0.0
    for part in halves:  # one batch of 4 in two micro-batches, each half of it
        l, a = micro_step(draft, loss_fn, cache.batch(part), 3, t2d, torch.Generator(), 0.5)
        loss, alpha = loss + float(l) * 0.5, alpha + a
    together = grads(draft)
    alone, losses = [], []
    for part in halves:  # each half as a whole batch of its own
        draft.zero_grad()
        losses.append(
            float(micro_step(draft, loss_fn, cache.batch(part), 3, t2d, torch.Generator(), 1)[0])
        )
        alone.append(grads(draft))
    assert together.keys() == alone[0].keys() and together
    for name, g in together.items():
        torch.testing.assert_close(g, (alone[0][name] + alone[1][name]) / 2)
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

    batch = cache.batch(idx, cpu)
    micro_step(copy.deepcopy(draft), spy, batch, 3, t2d, gen, 1.0)
    keep = seen["mask"]
    micro_step(copy.deepcopy(draft), spy, batch, 3, t2d, gen, 1.0, drop_out_of_vocab=True)
    drop = seen["mask"]
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


def test_lr_and_steps_per_architecture(setup):
    cache, draft = setup  # a MEDUSA draft
    s = settings(lr={"default": 1e-3, "medusa": 3e-3}, steps={"default": 5, "medusa": 2})
    assert (s.lr_for("eagle3"), s.lr_for("medusa")) == (1e-3, 3e-3)
    assert (s.steps_for("eagle3", 6), s.steps_for("medusa", 6)) == (5, 2)
    d = copy.deepcopy(draft)
    records = train_draft(d, build_loss("kl"), cache, s, seed=0, log=QUIET)
    # MEDUSA's own budget and peak: warm-up step 0 at peak/1, then cosine to 0 at step 2
    assert [r["step"] for r in records] == [0, 1]
    assert records[0]["lr"] == pytest.approx(cosine_lr(0, 2, 1, 3e-3)) and records[0]["lr"] > 0
    assert make_member("m", d, build_loss("kl"), 0, s, "cpu").opt.param_groups[0]["lr"] == 3e-3
    for bad in ({"lr": {"medusa": 1e-3}}, {"steps": {"medusa": 3}}):
        with pytest.raises(ValueError, match="needs a 'default' entry"):
            settings(**bad)
    with pytest.raises(ValueError, match="train.lr must be > 0"):
        settings(lr={"default": 1e-3, "medusa": 0.0})


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


def test_batches_are_epochs_of_permutations():
    """Every sequence once per epoch, epochs reshuffled, batches may straddle two epochs."""
    pool = [10, 11, 12, 13, 14]
    sched = BatchSchedule(pool, 2, data_seed=0)
    stream = [i for step in range(10) for i in sched[step]]  # 20 draws = 4 epochs
    epochs = [stream[e * 5 : (e + 1) * 5] for e in range(4)]
    assert all(sorted(e) == pool for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1, "each epoch is reshuffled"
    assert BatchSchedule(pool, 2, 0)[7] == sched[7], "a pure function of the step"
    assert [BatchSchedule(pool, 2, 1)[s] for s in range(3)] != [sched[s] for s in range(3)]
    with pytest.raises(ValueError, match="no training sequences"):
        BatchSchedule([], 2, 0)


def test_micro_batch_draws_depend_on_seed_step_and_micro_batch_only():
    draw = lambda *key: torch.rand(3, generator=micro_generator(*key))  # noqa: E731
    assert torch.equal(draw(0, 5, 1), draw(0, 5, 1))
    assert (
        len({tuple(draw(*key).tolist()) for key in [(0, 5, 1), (1, 5, 1), (0, 6, 1), (0, 5, 0)]})
        == 4
    )


def members(draft, specs, train):
    """A group: a copy of ``draft`` per (loss, seed), each with its own AdamW. A loss is a
    registered name, or a (name, function) pair standing in for that loss."""
    out = []
    for loss, seed in specs:
        name, fn = (loss, build_loss(loss)) if isinstance(loss, str) else loss
        out.append(make_member(f"{name}/seed{seed}", copy.deepcopy(draft), fn, seed, train, "cpu"))
    return out


def strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_a_group_trains_each_draft_as_it_trains_alone(setup):
    """Same batches, same draws: a draft's weights and log do not depend on its group."""
    cache, draft = setup
    s = settings(steps=4, micro_batch_size=2)
    group = members(draft, [("kl", 0), ("tv", 1), ("lk_alpha", 0)], s)
    train_group(group, cache, s, s.steps, QUIET)
    for m, (loss, seed) in zip(group, [("kl", 0), ("tv", 1), ("lk_alpha", 0)], strict=True):
        alone = copy.deepcopy(draft)
        records = train_draft(alone, build_loss(loss), cache, s, seed, log=QUIET)
        assert strip(m.records) == strip(records), m.name
        state = m.draft.state_dict()
        assert all(torch.equal(state[k], v) for k, v in alone.state_dict().items()), m.name
        assert m.status == TrainStatus("complete", 4)


def test_a_non_finite_loss_stops_that_draft_only(setup, tmp_path):
    """The draft keeps its last finite weights and says why; the group goes on without it."""
    cache, draft = setup
    s = settings(steps=4)
    kl, calls, before = build_loss("kl"), [], {}

    def breaks_at_step_2(**kw):
        calls.append(1)
        if len(calls) == 3:  # one micro-batch per step: step 2, before its update
            before.update({k: v.clone() for k, v in group[0].draft.state_dict().items()})
            return kl(**kw) * float("nan")
        return kl(**kw)

    group = members(draft, [(("kl", breaks_at_step_2), 0), ("kl", 1)], s)
    log = []
    train_group(group, cache, s, s.steps, log.append)
    bad, good = group
    assert bad.status == TrainStatus("stopped", 2, "non-finite loss at step 2")
    bad.status.write(tmp_path)  # what evaluation reads back into metrics.json
    assert json.loads((tmp_path / "train_status.json").read_text())["reason"] == bad.stopped
    assert TrainStatus.label_of(tmp_path) == "stopped: non-finite loss at step 2"
    assert TrainStatus.label_of(tmp_path / "elsewhere") == "external"
    assert any("non-finite loss at step 2" in line for line in log)
    after = bad.draft.state_dict()  # its weights after steps 0 and 1, untouched since
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(torch.isfinite(v).all() for v in after.values())
    alone = copy.deepcopy(draft)
    assert strip(good.records) == strip(train_draft(alone, kl, cache, s, 1, log=QUIET))


def test_a_group_resumes_from_its_checkpoint_to_the_same_drafts(setup, tmp_path):
    cache, draft = setup
    s = settings(steps=5, checkpoint_every=2)
    specs = [("kl", 0), ("tv", 1)]
    whole = members(draft, specs, s)
    train_group(whole, cache, s, s.steps, QUIET, checkpoint=tmp_path / "whole")

    class Killed(Exception):
        pass

    calls = []

    def dies_in_step_3(**kw):
        calls.append(1)
        if len(calls) == 4:
            raise Killed
        return build_loss("kl")(**kw)

    ckpt = tmp_path / "group"
    first = members(draft, [(("kl", dies_in_step_3), 0), ("tv", 1)], s)
    with pytest.raises(Killed):
        train_group(first, cache, s, s.steps, QUIET, checkpoint=ckpt)
    assert json.loads((ckpt / "step").read_text())["step"] == 2  # the last save before the kill
    assert sorted(f.name for f in ckpt.glob("*.pt")) == ["kl__seed0.step2.pt", "tv__seed1.step2.pt"]
    log = []
    again = members(draft, specs, s)  # a fresh process: new drafts, the same checkpoint
    train_group(again, cache, s, s.steps, log.append, checkpoint=ckpt)
    assert any("resumed" in line and "step 2" in line for line in log)
    for a, b in zip(whole, again, strict=True):
        assert strip(a.records) == strip(b.records)
        sa, sb = a.draft.state_dict(), b.draft.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_micro_batches_must_share_evenly_over_the_ranks(setup, monkeypatch):
    """2 micro-batches per step cannot keep 3 ranks in lockstep: a clear error, no hang."""
    cache, draft = setup
    monkeypatch.setattr("specbench.training.trainer.rank_and_world", lambda: (0, 3))
    s = settings(micro_batch_size=2)
    with pytest.raises(ValueError, match="2 micro-batches per step .* by 3 ranks"):
        train_group(members(draft, [("kl", 0)], s), cache, s, s.steps, QUIET)


@pytest.mark.parametrize("change", ["steps", "lr", "hparams"])
def test_a_checkpoint_of_another_run_is_ignored(setup, tmp_path, change):
    """A rerun after the schedule, the learning rate or the draft's hparams changed (the
    checkpoint folder outlives Snakemake's rerun) starts afresh; the same run resumes."""
    cache, draft = setup
    s = settings(steps=3, checkpoint_every=1)
    train_group(members(draft, [("kl", 0)], s), cache, s, s.steps, QUIET, checkpoint=tmp_path)
    log = []
    same = members(draft, [("kl", 0)], s)
    train_group(same, cache, s, s.steps, log.append, checkpoint=tmp_path)
    assert any("resumed" in line for line in log), log
    other, other_draft = s, draft
    if change == "steps":
        other = settings(steps=4, checkpoint_every=1)
    elif change == "lr":
        other = settings(steps=3, checkpoint_every=1, lr=2e-2)
    else:
        other_draft = build_draft("medusa", draft.info, num_heads=2)
    log = []
    again = members(other_draft, [("kl", 0)], other)
    train_group(again, cache, other, other.steps, log.append, checkpoint=tmp_path)
    assert any("from another run" in line for line in log), log
    steps = [r["step"] for r in again[0].records]
    assert steps == list(range(other.steps)), steps  # trained from the start


def test_steps_or_epochs_one_of_the_two():
    base = dict(k=3, batch_size=64, lr=1e-3, warmup_steps=0, grad_clip=1.0)
    assert TrainConfig(**base, epochs={"default": 10, "mtp": 1}).steps_for("mtp", 640) == 10
    for bad in ({}, {"steps": 5, "epochs": 1}):
        with pytest.raises(ValueError, match="set one of train.steps and train.epochs"):
            TrainConfig(**base, **bad)
    with pytest.raises(ValueError, match="needs a 'default' entry"):
        TrainConfig(**base, epochs={"mtp": 1})


def test_drafts_of_a_group_share_one_device_copy_of_the_target_embedding(setup):
    """``move_sharing`` copies the host embedding once per device (meta here: a device
    move without memory), keeps it in the checkpoint's dtype, and shares only what the drafts
    alias on the host."""
    cache, medusa = setup
    info = dataclasses.replace(medusa.info, embed_tokens=medusa.info.embed_tokens.bfloat16())
    shared: dict = {}
    a, b = (build_draft("eagle3", info) for _ in range(2))
    move_sharing(a, "meta", shared)
    move_sharing(b, "meta", shared)
    assert a.target_embed is b.target_embed and a.target_embed.device.type == "meta"
    assert a.target_embed.dtype == torch.bfloat16  # not widened to the draft's float32
    assert a.d2t is b.d2t  # the info's own d2t tensor, aliased by every draft: shared too
    assert a.t2d is not b.t2d and a.fc.weight is not b.fc.weight  # built per draft: own
    alone = build_draft("eagle3", info)
    move_sharing(alone, "meta", {})
    assert alone.target_embed is not a.target_embed
