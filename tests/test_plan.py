"""The planner's memory model against measurement: traced (FakeTensorMode, nothing
allocated) vs measured (the CPU allocator's events in ``torch.profiler``, a real run), for
a draft's training micro-step at 3 shapes per architecture (hidden size, sequence length,
vocabulary, K), for the online target forward at 3 shapes, for an evaluation's phases at 3
shapes per architecture and for HF generation's forwards at 3 shapes. Each within 15%."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig

from specbench.plan import memory
from specbench.plan.memory import draft_memory, forward_memory
from specbench.plan.trace import profiled_peak

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.plan,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.xdist_group("plan"),  # the table its tests fill: one xdist worker
]

HPARAMS = {"eagle3": {"intermediate_size": 512}, "medusa": {"num_heads": 3},
           "mlp_speculator": {"num_stages": 3}, "draft_lm": {"layers": 2}}  # fmt: skip
# (architecture, TTT steps recomputed in backward, as on a GPU): "eagle3+recompute"
CASES = {**{arch: (arch, False) for arch in HPARAMS}, "eagle3+recompute": ("eagle3", True)}
SHAPES = [  # hidden, vocab, draft vocab, batch, length, K
    (256, 4096, 1024, 2, 64, 3),
    (384, 8192, 2048, 2, 128, 3),
    (512, 6144, 6144, 1, 96, 2),
]
ROWS: list[str] = []


def config(hidden: int, vocab: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=4,
        num_attention_heads=hidden // 64, num_key_value_heads=2, vocab_size=vocab,
        max_position_embeddings=1024, tie_word_embeddings=False,
    )  # fmt: skip


def measured(fn) -> int:
    """Peak bytes the CPU allocator held during ``fn()`` above what was held before."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return profiled_peak(prof)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", SHAPES)
def test_a_traced_training_step_is_within_15_percent_of_the_measured_one(monkeypatch, case, shape):
    hidden, vocab, vd, b, length, k = shape
    arch, recompute = CASES[case]
    cfg = config(hidden, vocab)
    args = (cfg, arch, HPARAMS[arch], vd, b, length, k)
    kw = dict(cuda=False, recompute=recompute)  # the CPU's attention kernels, as measured
    traced = draft_memory(*args, fake=True, **kw)
    steps = measuring(memory, monkeypatch)  # the real run's step, measured by the allocator
    real = draft_memory(*args, fake=False, **kw)
    ratio = traced.step / steps[-1]
    mib = f"measured {steps[-1] / 2**20:7.2f} MiB, traced {traced.step / 2**20:7.2f} MiB"
    ROWS.append(
        f"step {case:16s} d={hidden} V={vocab} Vd={vd} L={length} K={k}: {mib}, {ratio:.3f}"
    )
    assert traced.resident == real.resident and traced.batch == real.batch
    assert abs(ratio - 1) <= 0.15, ROWS[-1]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_traced_target_forward_is_within_15_percent_of_the_measured_one(shape):
    hidden, vocab, vd, b, length, _ = shape
    cfg = config(hidden, vocab)
    traced = forward_memory(cfg, vd, b, length, torch.float32, fake=True, cuda=False)
    torch.manual_seed(0)
    real = measured(lambda: forward_memory(cfg, vd, b, length, torch.float32, fake=False))
    # the real call also builds the model inside the measurement: take it out
    from transformers import AutoModelForCausalLM

    weights = measured(lambda: AutoModelForCausalLM.from_config(cfg, dtype=torch.float32))
    ratio = traced / (real - weights)
    mib = f"measured {(real - weights) / 2**20:7.2f} MiB, traced {traced / 2**20:7.2f} MiB"
    ROWS.append(f"forward d={hidden} V={vocab} Vd={vd} b={b} L={length}: {mib}, {ratio:.3f}")
    assert abs(ratio - 1) <= 0.15, ROWS[-1]


def measuring(module, monkeypatch) -> list[int]:
    """Replace ``module.PeakMemory`` by one whose ``with`` blocks the CPU allocator measures
    too (the real run's phases); returns the list their measured peaks go to."""
    peaks: list[int] = []

    class Measure(memory.PeakMemory):
        def __enter__(self):
            self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profile.__enter__()
            return super().__enter__()

        def __exit__(self, *exc):
            super().__exit__(*exc)
            self._profile.__exit__(*exc)
            peaks.append(profiled_peak(self._profile))

    monkeypatch.setattr(module, "PeakMemory", Measure)
    return peaks


@pytest.mark.parametrize("arch", list(HPARAMS))
@pytest.mark.parametrize("shape", SHAPES)
def test_a_traced_evaluation_is_within_15_percent_of_the_measured_one(monkeypatch, arch, shape):
    """``evaluate_draft``'s phases (``specbench.plan.jobs``): an expected-τ batch of the
    draft, and the unbiased estimator's prefill + branch verification on the target."""
    from specbench.plan import jobs

    hidden, vocab, vd, b, length, k = shape
    cfg = config(hidden, vocab)
    args = (cfg, arch, HPARAMS[arch], vd, length, k + 1)  # evaluation K: one above training's
    kw = dict(batch=b, dtype=torch.float32, cuda=False)
    traced = jobs.eval_memory(*args, fake=True, **kw)
    peaks = measuring(jobs, monkeypatch)
    torch.manual_seed(0)
    real = jobs.eval_memory(*args, fake=False, **kw)
    expected, unbiased = peaks  # the two phases, in the order they run
    assert traced.draft == real.draft and traced.k == real.k
    r_exp, r_unb = traced.expected / expected, traced.unbiased / unbiased
    ROWS.append(
        f"eval {arch:16s} d={hidden} V={vocab} Vd={vd} L={length} K={traced.k}: expected τ "
        f"measured {expected / 2**20:6.2f} MiB, traced {traced.expected / 2**20:6.2f} MiB, "
        f"{r_exp:.3f}; unbiased measured {unbiased / 2**20:6.2f} MiB, traced "
        f"{traced.unbiased / 2**20:6.2f} MiB, {r_unb:.3f}"
    )
    assert abs(r_exp - 1) <= 0.15 and abs(r_unb - 1) <= 0.15, ROWS[-1]


@pytest.mark.parametrize("shape", SHAPES)
def test_traced_generation_is_within_15_percent_of_the_measured_one(monkeypatch, shape):
    """HF generate's forwards (``specbench.plan.jobs.generation_memory``): the prefill of a
    batch of prompts with its KV cache, then one decode step against it."""
    from specbench.plan import jobs

    hidden, vocab, _, b, length, _ = shape
    cfg = config(hidden, vocab)
    args = (cfg, 2 * b, length, length)
    traced = jobs.generation_memory(*args, dtype=torch.float32, fake=True, cuda=False)
    peaks = measuring(jobs, monkeypatch)
    jobs.generation_memory(*args, dtype=torch.float32, fake=False, cuda=False)
    prefill, step = peaks
    # the decode block starts with the prompts' cache alive: the allocator sees only above it
    kv = traced.kv * length // (2 * length)
    t_step = traced.step + kv // length
    r_pre, r_step = traced.prefill / prefill, t_step / step
    ROWS.append(
        f"generate d={hidden} V={vocab} b={2 * b} L={length}: prefill measured "
        f"{prefill / 2**20:6.2f} MiB, traced {traced.prefill / 2**20:6.2f} MiB, {r_pre:.3f}; "
        f"decode step measured {step / 2**20:6.2f} MiB, traced {t_step / 2**20:6.2f} MiB, "
        f"{r_step:.3f}"
    )
    assert abs(r_pre - 1) <= 0.15 and abs(r_step - 1) <= 0.15, ROWS[-1]


def test_print_the_table():
    print("\n" + "\n".join(ROWS))
    assert len(ROWS) == 3 * len(CASES) + 3 + 3 * len(HPARAMS) + 3


def test_the_planner_refuses_a_job_that_does_not_fit_in_one_line(tmp_path, capsys):
    """``python -m specbench.plan``: a tiny target's EAGLE-3 group fits 1 GiB, not 1 MiB;
    the refusal names the job, the estimate, the limit and the knobs."""
    from groups import group_data

    from specbench.plan.__main__ import plan

    data = group_data(tmp_path, ["kl", "lk_lambda"])
    cfg = data["cfg"]
    cfg["targets"]["tiny"].update(gpus=1, group_size=2)
    assert plan(cfg, gpu_gib=1.0) == []
    refusals = plan(cfg, gpu_gib=2**-10)
    # one line per job type: training, evaluation, responses, the evaluation caches
    assert [r.split(":")[0] for r in refusals] == [
        "train_group tiny/eagle3", "evaluate_draft tiny/eagle3", "responses tiny",
        "features_eval tiny",
    ]  # fmt: skip
    refusal = refusals[0]
    assert "GiB per GPU > 0 GiB" in refusal
    assert "targets.tiny.group_size (2)" in refusal
    assert "targets.tiny.micro_batch_size (2)" in refusal
    assert "targets.tiny.gpus (1)" in refusals[1]
    assert "data.generation_batch_size (8)" in refusals[2]
    assert "data.feature_batch_size (8)" in refusals[3]
    out = capsys.readouterr().out
    assert "tiny/eagle3 eval" in out and "tiny responses" in out


def test_the_shipped_profile_is_what_the_planner_writes():
    """``workflow/profiles/slurm/config.yaml``'s generated ``mem_mb`` and ``runtime`` equal
    what ``python -m specbench.plan --configfile configs/paper.yaml --write-profile`` writes
    (no tracing: parameter counts and the cost formulas)."""
    import yaml

    from specbench.config import load_config
    from specbench.plan.cost import GPU_GIB
    from specbench.plan.profile import COMMAND, profile_values, write_profile

    path = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
    text = path.read_text()
    cfg = load_config(yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text()))
    values = profile_values(cfg, GPU_GIB["h100"])
    assert write_profile(text, values) == text, f"stale: rerun {COMMAND}"
    assert COMMAND in text  # the profile says how its values are made
    # the headroom as the module states it, on one value
    from specbench.plan.cost import target_params
    from specbench.plan.profile import HEADROOM_MEM, target_figures
    from specbench.plan.shapes import target_config

    shape = target_config(cfg.targets["llama31-8b"].model)
    fig = target_figures(cfg, "llama31-8b", shape, target_params(shape), GPU_GIB["h100"])
    host = fig["evaluate_draft"]["host"]
    assert values["evaluate_draft"][0]["llama31-8b"] == -(-HEADROOM_MEM * host // 1e9) * 1000


def test_the_planners_shapes_are_the_real_configs_the_twins_mirror():
    """:data:`specbench.plan.shapes.SHAPES` (what the planner sizes) against the real
    configs' values ``tests/tiny.py`` quotes for the twins."""
    from tiny import REAL

    from specbench.plan.shapes import SHAPES, target_config

    assert set(SHAPES) == set(REAL)
    for model, real in REAL.items():
        cfg = target_config(model)
        assert cfg.model_type == real["model_type"], model
        for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                    "tie_word_embeddings"):  # fmt: skip
            assert getattr(cfg, key) == real[key], (model, key)
        experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
        experts = experts or getattr(cfg, "n_routed_experts", None) or 0
        assert (experts, getattr(cfg, "num_experts_per_tok", 0) or 0) == (
            real["experts"],
            real["top_k"],
        ), model


def test_the_cost_formulas_by_hand():
    """``group_cost`` and ``gather_seconds`` against the module doc's formulas, by hand."""
    from specbench.plan import cost

    fu = cost.FLOPS * cost.UTIL
    # 4 GPUs, 70.6e9 bf16 params over NVLink, nothing offloaded; then offloaded over PCIe
    assert cost.gather_seconds(70.6e9, 4, {}) == pytest.approx(0.75 * 141.2e9 / 300e9)
    offload = cost.gather_seconds(70.6e9, 4, {"offload_param": "cpu"})
    assert offload == pytest.approx(0.75 * 141.2e9 / 300e9 + 141.2e9 / 4 / 40e9)
    assert cost.gather_seconds(8e9, 1, None) == 0.0
    c = cost.group_cost(active=8e9, t_gather=0.0, flops_per_step=1e9, k=6, recompute=True,
                        steps=10, batch=64, micro=2, ranks=1, per_rank=6, jobs=4,
                        tokens=650)  # fmt: skip
    t_f = 2 * 8e9 * 2 * 650 / fu  # 0.0525 s > FLOOR
    t_d = 4 * 6 * 1e9 * 2 * 650 / fu  # forward, backward (2), recomputed TTT forward
    assert (c.t_f, c.t_d) == (pytest.approx(t_f), pytest.approx(t_d))
    wall = 10 * (32 * t_f + 32 * 6 * t_d) / 3600
    assert c.wall_h == pytest.approx(wall) and c.gpu_h == pytest.approx(4 * wall)
    assert c.target_gpu_h == pytest.approx(4 * 10 * 32 * t_f / 3600)
    forwards, hours = cost.regeneration_gpu_hours(21e9, 3.6e9, 0.0, 1, 660_000, 64, 1024)
    assert forwards == 10_313 * 1025 and hours == pytest.approx(forwards * cost.FLOOR / 3600)
    # one evaluation of an 8B target on 1 GPU: 3 domains × 80 prompts, 60 live, 512 live
    # tokens, 64 anchors, K = 7, sequences of 648 tokens, T = 0 and 1
    h = cost.eval_hours(8e9, 8e9, 0.0, 1, 7, 648, 240, 60, 512, 64, [0, 1])
    t_tok = max(2 * 8e9 / 3.35e12, cost.FLOOR)  # 0.03 s: the floor
    t_seq = 2 * 8e9 * 648 / fu  # 0.026 s < the floor
    rounds = 512 / cost.TAU
    live = 60 * rounds * (t_tok + 7 * cost.DRAFT_STEP)
    unbiased = 240 * (max(t_seq, cost.FLOOR) + 1 * t_tok + 64 * 7 * cost.DRAFT_STEP)
    replay = 240 * rounds * 7 * cost.DRAFT_STEP
    load = 2 * 8e9 / cost.DISK
    assert h == pytest.approx((live + unbiased + replay + load) / 3600)
    f = cost.features_hours(8e9, 8e9, 0.0, 1, 80, 8, 648)
    assert f == pytest.approx((10 * (2 * 8e9 * 8 * 648 / fu) + load) / 3600)


def test_the_vllm_generation_formulas_by_hand():
    """``vllm_generation_gpu_hours`` and ``kv_bytes_per_token`` against the module doc, by
    hand, for Llama-3.3-70B's shape on 4 H100s (78 GiB each)."""
    from transformers import LlamaConfig

    from specbench.plan import cost

    shape = LlamaConfig(num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                        head_dim=128, hidden_size=8192)  # fmt: skip
    kv = 2 * 80 * 8 * 128 * 2  # K and V, 80 layers, 8 KV heads of 128, bf16: 327,680 B
    assert cost.kv_bytes_per_token(shape, 4) == kv
    assert cost.kv_bytes_per_token(shape, 16) == 2 * kv  # 8 KV heads on 16 ranks: twice
    gpu = 78 * 2**30
    c = cost.vllm_generation_gpu_hours(70.6e9, 70.6e9, 4, 660_000, 1024, 128, kv, 80, gpu, 162)
    room = 4 * 0.9 * gpu - 2 * 70.6e9  # 160.3 GB of KV cache: 424 sequences of 1,152 tokens
    assert room // (kv * 1152) == 424 and c.concurrency == 256  # capped at MAX_SEQS
    read = (2 * 70.6e9 + 256 * kv * (128 + 512)) / (4 * 3.35e12 * 0.7)  # 0.0208 s
    compute = 2 * 70.6e9 * 256 / (4 * 989e12 * 0.4)  # 0.0228 s: compute-bound at C = 256
    assert read < compute
    assert c.t_step == pytest.approx(compute + 2 * 80 * 15e-6)
    assert c.steps == 2579 * 1024  # ⌈660000 / 256⌉ waves of 1,024 steps
    prefill = 2 * 70.6e9 * 660_000 * 128 / (4 * 989e12 * 0.4)
    assert c.prefill_s == pytest.approx(prefill)
    hours = 4 * (c.steps * c.t_step + prefill + 162 * 300) / 3600
    assert c.gpu_h == pytest.approx(hours) and 130 < hours < 140  # HF's formula: 1,036
    # a target whose weights leave no room for one sequence's KV cache is not planned
    assert cost.vllm_generation_gpu_hours(1.37e12, 37e9, 8, 1, 1024, 128, kv, 61, gpu) is None


def test_the_workflow_refuses_a_matrix_that_does_not_fit_before_any_job(tmp_path):
    """``onstart``: the planner's check runs before Snakemake submits anything; a group
    job over its GPU's memory stops the run with the planner's one line, no job started."""
    import os
    import pathlib
    import subprocess
    import sys

    import yaml
    from groups import group_data
    from repo_copy import copy_repo

    repo = copy_repo(tmp_path / "repo")
    cfg = group_data(tmp_path, ["kl", "lk_lambda"])["cfg"]
    cfg["targets"]["tiny"].update(gpus=1, group_size=2)
    (repo / "gpu.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "SPECBENCH_GPU_GIB": str(2**-10)}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "gpu.yaml"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train_group tiny/eagle3: " in out and "GiB per GPU > 0 GiB" in out, out[-3000:]
    made = sorted(p.relative_to(repo) for p in (repo / "results").rglob("*"))
    assert made == [pathlib.Path("results/README.md")]  # the tracked README only: no job ran


def test_a_passed_check_is_not_traced_again_for_the_same_config_and_code(tmp_path, monkeypatch):
    """``onstart`` calls ``check_once``: a pass is recorded by a digest of the config (and
    the code); the same config skips the tracing, another config or a refusal does not."""
    import specbench.plan.__main__ as planner

    calls, answers = [], {"fits": [], "does not": ["train_group t/eagle3: 90 GiB per GPU > 78"]}
    monkeypatch.setattr(planner, "check", lambda cfg, log: calls.append(cfg) or answers[cfg["x"]])
    folder = tmp_path / "plan"
    assert planner.check_once({"x": "fits"}, folder, log=lambda _: None) == []
    assert planner.check_once({"x": "fits"}, folder, log=lambda _: None) == []
    assert len(calls) == 1 and len(list(folder.glob("*.ok"))) == 1
    for _ in range(2):  # a refusal is not recorded: checked every time
        assert planner.check_once({"x": "does not"}, folder, log=lambda _: None)
    assert len(calls) == 3 and len(list(folder.glob("*.ok"))) == 1
