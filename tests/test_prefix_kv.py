"""The target's prefix KV stored in the T=1 evaluation cache (``eval.prefix_kv``).

The features job stores, per position, the target's KV cache over the whole sequence; the
unbiased estimator crops it to its prefix instead of prefilling. Checked here: the estimate
is bitwise the prefilled one, the cache file round-trips the rows, only a T=1 evaluation
cache under the flag gets them, and ZeRO-3 ranks stay in step computing them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from ranks import ROOT, ZERO3_MARKS, run_group
from safetensors.torch import load_file
from tiny import tiny_llama

from specbench.config import load_config
from specbench.decoding import unbiased
from specbench.decoding.unbiased import (
    response_anchors,
    score_branches,
    sequence_unbiased_tau,
    unbiased_tau_by_prompt,
)
from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache, Sequence, concat_caches, save_cache
from specbench.jobs import Job, launch, launcher_command
from specbench.targets.featurize import compute_features, compute_prefix_kv
from specbench.targets.info import target_info_from_model
from specbench.targets.kv import cache_from_kv, sequence_kv
from specbench.targets.loading import load_target
from specbench.targets.runner import TargetRunner

V, K = 32, 4  # target vocabulary, draft steps
LAYERS, HIDDEN, HEADS, KV_HEADS = 2, 32, 4, 2  # tiny_llama's attention: head_dim 8


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def random_sequences(n: int, seed: int) -> list[Sequence]:
    """Prompts of 3..6 tokens (x_0 = 0) and responses of 10..21 random tokens."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for i in range(n):
        prompt = [0, *torch.randint(1, V, (2 + i % 4,), generator=g).tolist()]
        response = torch.randint(1, V, (10 + 3 * i % 12,), generator=g).tolist()
        seqs.append(Sequence(prompt, response, i))
    return seqs


@pytest.fixture(scope="module")
def world():
    model = tiny_llama(vocab_size=V, hidden_size=HIDDEN, layers=LAYERS, seed=0)
    runner = TargetRunner(model)
    d2t = torch.randperm(V, generator=torch.Generator().manual_seed(1))[:26].sort().values
    return model, runner, d2t, random_sequences(6, seed=2)


def test_stored_kv_gives_the_prefilled_estimate_bitwise(world, monkeypatch):
    """τ̂ from the stored rows equals τ̂ from the estimator's own prefill, bit for bit, with
    no prefill run; and within 1e-6 of a prefill of the prefix alone (the code before)."""
    model, runner, d2t, seqs = world
    plain = FeatureCache(tensors=compute_features(runner, seqs, d2t))
    stored = FeatureCache(tensors={**plain.t, "kv": compute_prefix_kv(runner, seqs)})
    assert stored.has_kv and not plain.has_kv
    torch.manual_seed(0)
    draft = build_draft("eagle3", target_info_from_model(model, d2t)).eval()
    prefilled = [
        sequence_unbiased_tau(draft, plain.sequence(i), d2t, runner, K, seed=3, max_anchors=5)
        for i in range(len(seqs))
    ]
    want = unbiased_tau_by_prompt(draft, plain, runner, K, seed=3, max_anchors_per_prompt=5)

    def no_prefill(*args, **kwargs):
        raise AssertionError("the stored KV path ran a prefill")

    monkeypatch.setattr(unbiased, "prefill", no_prefill)
    cropped = 0
    for i, (anchors, tau, tokens) in enumerate(prefilled):
        seq = stored.sequence(i)
        got = sequence_unbiased_tau(draft, seq, d2t, runner, K, seed=3, max_anchors=5)
        assert torch.equal(got[0], anchors) and anchors.numel() == 5
        assert torch.equal(got[1], tau), (i, (got[1] - tau).abs().max())
        assert tokens - got[2] == seq["input_ids"].numel()  # no prefix through the target
        cropped += int(anchors[-1]) + 2 < seq["input_ids"].numel()
        # the code before prefilled the prefix alone: the same up to the kernels' last bits
        n = int(anchors[-1]) + 2
        monkeypatch.undo()
        alone = {**seq, "kv": sequence_kv(runner, seq["input_ids"][:n])}
        before = sequence_unbiased_tau(draft, alone, d2t, runner, K, seed=3, max_anchors=5)[1]
        monkeypatch.setattr(unbiased, "prefill", no_prefill)
        assert (before - tau).abs().max() <= 1e-6
    assert cropped >= 3, "the sub-sampled anchors should end before most sequences do"
    got = unbiased_tau_by_prompt(draft, stored, runner, K, seed=3, max_anchors_per_prompt=5)
    assert sorted(got) == sorted(want) == list(range(len(seqs)))
    for p in want:
        assert got[p].anchors == want[p].anchors == 5
        assert got[p].tau_unbiased_sum == want[p].tau_unbiased_sum
        assert got[p].target_tokens == want[p].target_tokens - len(seqs[p].ids)


def test_cache_file_round_trips_the_kv_rows(world, tmp_path):
    """``kv`` [T, L, 2, H, D] per sequence through concat, file and ``sequence(i)``: the keys
    after RoPE and the values of the model's own cache; a cache rebuilt from them scores
    branches and crops back like a prefilled one."""
    model, runner, d2t, seqs = world
    parts = [
        {**compute_features(runner, part, d2t), "kv": compute_prefix_kv(runner, part)}
        for part in (seqs[:2], seqs[2:])
    ]
    save_cache(concat_caches(parts), tmp_path / "c.safetensors")
    cache = FeatureCache(tmp_path / "c.safetensors")
    assert cache.has_kv and "kv" not in cache.batch([0, 1])  # training batches skip it
    head_dim = HIDDEN // HEADS
    for i, s in enumerate(seqs):
        kv = cache.sequence(i)["kv"]
        assert kv.shape == (len(s.ids), LAYERS, 2, KV_HEADS, head_dim)
        assert kv.dtype == torch.float32
        assert torch.equal(kv, sequence_kv(runner, torch.tensor(s.ids)))
        with torch.no_grad():  # a plain forward (no custom mask): the model's own cache
            past = model(torch.tensor([s.ids]), use_cache=True).past_key_values
        for layer in range(LAYERS):
            keys, values = past.layers[layer].keys[0], past.layers[layer].values[0]  # [H, T, D]
            torch.testing.assert_close(kv[:, layer, 0], keys.transpose(0, 1), atol=1e-5, rtol=0)
            torch.testing.assert_close(kv[:, layer, 1], values.transpose(0, 1), atol=1e-5, rtol=0)
    seq = cache.sequence(4)
    kv, n = seq["kv"], int(response_anchors(seq, seed=0)[-1]) + 2
    prefix = cache_from_kv(kv, n, runner.device)
    assert prefix.get_seq_length() == n
    anchors = torch.tensor([len(seqs[4].prompt_ids), n - 2])
    branches = torch.randint(0, V, (2, K - 1), generator=torch.Generator().manual_seed(0))
    got = score_branches(runner, prefix, anchors, branches, d2t)  # crops its branches off
    want = score_branches(runner, unbiased.prefill(runner, seq["input_ids"][:n]), anchors,
                          branches, d2t)  # fmt: skip
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert prefix.get_seq_length() == n
    for layer in range(LAYERS):
        assert torch.equal(prefix.layers[layer].keys[0].transpose(0, 1), kv[:n, layer, 0])
    with pytest.raises(ValueError, match="with and without"):
        concat_caches([parts[0], compute_features(runner, seqs[2:], d2t)])


def test_sliding_window_target_gpt_oss_keeps_every_layer_past():
    """gpt-oss alternates sliding-window layers: the rows hold every layer's full past, as
    :func:`prefill`'s config-less cache does, so branches score the same against either."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    cfg = GptOssConfig(vocab_size=V, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                       max_position_embeddings=64, attn_implementation="eager")  # fmt: skip
    runner = TargetRunner(GptOssForCausalLM(cfg).eval(), feature_layers=(1, 1, 2, 2))
    assert cfg.layer_types == ["sliding_attention", "full_attention"]
    g = torch.Generator().manual_seed(0)
    ids, anchors, n = torch.randint(0, V, (20,), generator=g), torch.tensor([2, 5, 6, 10, 15]), 17
    branches, d2t = torch.randint(0, V, (5, K - 1), generator=g), torch.arange(V)
    kv = sequence_kv(runner, ids)
    assert kv.shape == (20, 2, 2, 2, 8)
    stored, run_stored = unbiased.prefix_cache(runner, {"input_ids": ids, "kv": kv}, n)
    prefilled, run_prefilled = unbiased.prefix_cache(runner, {"input_ids": ids}, n)
    assert (run_stored, run_prefilled) == (0, 20)
    assert [layer.get_seq_length() for layer in stored.layers] == [n, n]  # not cut to the window
    got = score_branches(runner, stored, anchors, branches, d2t)
    assert torch.equal(got, score_branches(runner, prefilled, anchors, branches, d2t))
    for i, s in enumerate(anchors.tolist()):
        full = torch.cat([ids[: s + 2], branches[i]])[None]
        want = torch.log_softmax(runner.forward(full, use_cache=False).logits[0], -1)
        torch.testing.assert_close(got[i], want[s + 2 :], atol=1e-4, rtol=0)


# ------------------------------------------------------------------ the features job
def job_config(target: Path, engine: str, prefix_kv: bool, ranks: int = 1) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["targets"] = {
        "tiny": {"model": str(target), "engine": engine, "dtype": "float32", "gpus": ranks}
    }
    if engine == "zero3":  # partition every parameter: each forward all-gathers (lockstep)
        cfg["targets"]["tiny"]["zero3"] = {"stage3_param_persistence_threshold": 0}
    cfg.update(draft_archs=["eagle3"], losses=["kl"], domains=["general"], seeds=[0])
    cfg["data"]["feature_batch_size"] = 3  # 4 sequences: batches of 3 and 1
    cfg["eval"]["prefix_kv"] = prefix_kv
    return cfg


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny target, 4 responses and a draft vocabulary: a features job's inputs."""
    root = tmp_path_factory.mktemp("prefix_kv_job")
    tiny_llama(vocab_size=V, hidden_size=HIDDEN, layers=LAYERS, seed=0).save_pretrained(
        root / "target"
    )
    rows = [
        {"prompt_index": s.prompt_index, "prompt_ids": s.prompt_ids,
         "response_ids": s.response_ids}
        for s in random_sequences(4, seed=5)
    ]  # fmt: skip
    (root / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "vocab.json").write_text(json.dumps({"draft_to_target": list(range(0, V, 2))}))
    return {"root": root, "target": root / "target"}


def features_job(inputs: dict, stage: str, split: str, cfg: dict, out: Path, ranks=1) -> Job:
    wc = {"target": "tiny", "vocab": "truncated", "domain": "general"}
    wc |= {"split": split} if stage == "features_eval" else {}
    return Job(stage, cfg, wc, output={"cache": str(out)}, ranks=ranks,
               input={"responses": [str(inputs["root"] / "responses.jsonl")],
                      "vocab": str(inputs["root"] / "vocab.json")},
               params={"model": str(inputs["target"])})  # fmt: skip


def test_only_t1_eval_caches_under_the_flag_get_kv(job_inputs, tmp_path, capsys):
    """The flag off writes no KV; on, the T=1 evaluation cache gets the rows the estimator
    would prefill (and the log says how big), the T=0 and training caches none."""
    target = job_inputs["target"]
    cases = [  # flag, stage, split, stores KV
        (False, "features_eval", "eval_t1", False),
        (True, "features_eval", "eval_t1", True),
        (True, "features_eval", "eval_t0", False),
        (True, "features_train", "train", False),
    ]
    runner = TargetRunner(load_target(str(target)))
    seqs = random_sequences(4, seed=5)
    for flag, stage, split, stores in cases:
        cfg = job_config(target, "hf", flag)
        assert load_config(cfg).eval.prefix_kv_for(split) == stores
        out = tmp_path / f"{flag}_{split}.safetensors"
        launch(features_job(job_inputs, stage, split, cfg, out))
        logged = capsys.readouterr().out
        tensors = load_file(out)
        assert ("kv" in tensors) == stores == ("prefix KV:" in logged), (flag, split)
        if stores:
            want = compute_prefix_kv(runner, seqs)  # [P, L, 2, H, D]
            assert want.shape == (sum(len(s.ids) for s in seqs), LAYERS, 2, KV_HEADS, 8)
            assert torch.equal(tensors["kv"], want)
            assert f"prefix KV: {want.numel() * 4 / 1e6:.1f} MB" in logged


@ZERO3_MARKS[0]  # the zero3 marker
@ZERO3_MARKS[1]  # skipped without DeepSpeed
def test_zero3_ranks_store_the_one_process_kv(job_inputs, tmp_path):
    """Two ZeRO-3 ranks (gloo, CPU): rank 0 caches a batch of 3 sequences, rank 1 one of 1,
    so rank 1 must run 2 filler KV forwards to stay in step (else the job hangs); the
    cache equals one process's, bit for bit."""
    target = job_inputs["target"]
    one = tmp_path / "one.safetensors"
    cfg = job_config(target, "hf", True)
    launch(features_job(job_inputs, "features_eval", "eval_t1", cfg, one))
    two = tmp_path / "two.safetensors"
    job = features_job(
        job_inputs, "features_eval", "eval_t1", job_config(target, "zero3", True, 2), two, 2
    )
    job.save(tmp_path / "job.json")
    log = run_group(launcher_command([tmp_path / "job.json"], 2), ROOT, 300, "ZeRO-3 ranks")
    assert "2 ranks" in log and "prefix KV:" in log, log[-2000:]
    a, b = load_file(one), load_file(two)
    assert a.keys() == b.keys() and "kv" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
