"""Served τ bookkeeping without vLLM: counters per position, continuations, tau.csv columns."""

from __future__ import annotations

import pandas as pd
import pytest

from specbench.aggregation.served import served_cells, with_served
from specbench.serving import client
from specbench.serving.client import position_counts, servable, served_prompts
from specbench.serving.served import first_difference


def test_position_counts_follow_each_step():
    # steps: 2 of 3 accepted, none of 3, all 3, 1 of a trimmed 1-token draft
    reached, acc = position_counts([2, 0, 3, 1], [3, 3, 3, 1], k=3)
    assert reached == [4, 2, 2] and acc == [3, 2, 1]


def test_served_prompts_sum_samples_and_count_steps_with_drafts():
    run = {
        "prompts": [
            [
                {"tokens": [5, 6], "step_accepted": [1, 0], "step_drafted": [2, 2]},
                {"tokens": [7], "step_accepted": [2, 0], "step_drafted": [2, 0]},
            ]
        ]
    }
    (s,) = served_prompts(run, [11], k=2)
    assert (s.prompt_index, s.drafts, s.accepted, s.drafted) == (11, 3, 3, 6)
    assert s.tau == pytest.approx(2.0) and s.tokens == [[5, 6], [7]]


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3, 9, 9]) == -1  # cached runs on past EOS
    assert first_difference([1, 2, 4], [1, 2, 3]) == 2
    assert first_difference([1, 2, 3, 4], [1, 2, 3]) == 3


def test_served_cells_join_tau_by_cell(tmp_path):
    rows = pd.DataFrame(
        {
            "domain": ["code"] * 4,
            "temperature": [0, 0, 1, 1],
            "prompt_index": [0, 1, 0, 1],
            "served_drafts": [10, 10, 8, 12],
            "served_accepted": [5, 3, 2, 2],
            "continuation_identical": [True, False, None, None],
            "target": "t",
            "draft_arch": "eagle3",
            "loss": "kl",
            "seed": 0,
        }
    )
    rows.to_csv(tmp_path / "served.csv", index=False)
    cells = served_cells([tmp_path / "served.csv"])
    tau = pd.DataFrame(
        {"target": "t", "draft_arch": ["eagle3", "eagle3", "medusa"], "loss": "kl"}
        | {"domain": "code", "temperature": [0, 1, 0], "seed": 0, "tau_live": [1.3, 1.1, 1.2]}
    )
    out = with_served(tau, cells)
    assert out["tau_served"].iloc[:2].tolist() == pytest.approx([1.4, 1.2])
    assert out["served_identical"].iloc[0] == 1 and pd.isna(out["tau_served"].iloc[2])
    assert with_served(tau, served_cells([])) is tau


def test_servable_and_a_missing_venv(monkeypatch, tmp_path):
    assert servable("eagle3", "truncated") and servable("medusa", "full")
    assert not servable("medusa", "truncated") and not servable("mtp", "full")
    assert not servable("mlp_speculator", "full")  # vLLM 0.32 registers no model class
    monkeypatch.setenv(client.VENV_VARIABLE, str(tmp_path / "nowhere"))
    assert client.serve_python() is None
    with pytest.raises(FileNotFoundError, match="make serve-env"):
        client.run_vllm({})


def test_served_plot_writes_a_png(tmp_path):
    from specbench.aggregation.served_plot import plot_served

    tau = pd.DataFrame(
        {
            "draft_arch": ["eagle3", "eagle3", "medusa"],
            "temperature": [0, 1, 0],
            "tau_live": [1.26, 1.1, 1.3],
            "tau_live_se": [0.02, 0.05, 0.02],
            "tau_unbiased": [None, 1.18, None],
            "tau_unbiased_se": [None, 0.015, None],
            "tau_served": [1.26, 1.2, None],
            "tau_served_se": [0.02, 0.017, None],
        }
    )
    plot_served(tau, str(tmp_path / "served.png"))
    assert (tmp_path / "served.png").read_bytes()[:4] == b"\x89PNG"


def test_full_vocabulary_eagle3_exports_no_vocabulary_maps(tmp_path):
    """vLLM 0.32 has no ``draft_id_to_target_id`` for a full-vocabulary EAGLE-3 and refuses a
    checkpoint that holds one; the export leaves ``d2t``/``t2d`` out and still reads back."""
    import torch
    from safetensors.torch import load_file
    from tiny import tiny_llama

    from specbench.drafts import build_draft
    from specbench.formats import export_draft, load_external
    from specbench.targets.info import target_info_from_model

    model = tiny_llama(vocab_size=40, hidden_size=32, layers=8)
    model.save_pretrained(tmp_path / "target")
    info = target_info_from_model(model)
    torch.manual_seed(0)
    draft = build_draft("eagle3", info).eval()
    out = export_draft(draft, info, tmp_path / "e3", "speculators", str(tmp_path / "target"), 3)
    names = set(load_file(str(out / "model.safetensors")))
    assert "d2t" not in names and "t2d" not in names and "lm_head.weight" in names
    back = load_external("speculators", out, info)
    for name, value in draft.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


def test_a_vllm_generation_request_without_vllm(monkeypatch, tmp_path):
    """What the responses stage asks vLLM for: tensor parallel over the job's GPUs, expert
    parallel for a MoE on several, CUDA graphs only on GPUs, one seed per prompt, EOS as the
    stop (none through EOS); and the missing venv's error before anything loads."""
    from tiny import tiny_deepseek_v3_config, tiny_llama

    from specbench.serving import generate as gen

    tiny_llama().save_pretrained(tmp_path / "dense")
    tiny_deepseek_v3_config().save_pretrained(tmp_path / "moe")
    assert not gen.is_moe(tmp_path / "dense") and gen.is_moe(tmp_path / "moe")
    assert not gen.is_moe(tmp_path / "nowhere")
    moe = gen.generation_request(tmp_path / "moe", [[1, 2], [3]], 8, 1.0, 5, eos=2, gpus=8)
    assert (moe["tensor_parallel_size"], moe["enable_expert_parallel"]) == (8, True)
    assert moe["seeds"] == [5 * 1_000_003, 5 * 1_000_003 + 1] and not moe["enforce_eager"]
    assert moe["stop_token_ids"] == [2] and moe["ignore_eos"] is False
    one = gen.generation_request(tmp_path / "moe", [[1]], 8, 0.0, 5, eos=2, gpus=1)
    assert (one["tensor_parallel_size"], one["enable_expert_parallel"]) == (1, False)
    cpu = gen.generation_request(tmp_path / "dense", [[1]], 8, 0.0, 5, eos=2, through_eos=True)
    assert (cpu["tensor_parallel_size"], cpu["enforce_eager"], cpu["ignore_eos"]) == (1, True, True)
    monkeypatch.setenv(client.VENV_VARIABLE, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="engine_generate: vllm.*make serve-env"):
        gen.vllm_generate(tmp_path / "dense", [[1]], 8, 1.0, 0, eos=2)
