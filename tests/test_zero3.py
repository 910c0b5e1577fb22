"""DeepSpeed ZeRO-3 inference path: equal to plain transformers on the four target classes.

Tiny random Llama, GptOss, Qwen3Moe and DeepseekV3 models are saved to disk, then loaded by
``tests/zero3_worker.py`` twice, plainly and under ZeRO-3, in one single-process subprocess
and in one two-rank ``torch.distributed.run`` job (gloo on DeepSpeed's CPU accelerator).
Subprocesses keep process groups and DeepSpeed's global state out of the pytest process,
and one job serves all model classes (interpreter and DeepSpeed start-up dominate here).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch
from ranks import ROOT, ZERO3_MARKS, run_group

pytestmark = ZERO3_MARKS

WORKER = ROOT / "tests" / "zero3_worker.py"
ARCHS = ("llama", "gpt_oss", "qwen3_moe", "deepseek_v3")
ATOL = 1e-5  # float32
FP8_BLOCK = 16


def tiny_config(arch: str):
    """A couple of layers, hidden 32, 4 experts (top-2) for the MoE classes."""
    from transformers import DeepseekV3Config, GptOssConfig, LlamaConfig, Qwen3MoeConfig

    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    moe = dict(num_experts_per_tok=2, moe_intermediate_size=16)
    if arch == "llama":
        return LlamaConfig(**common, intermediate_size=64, num_key_value_heads=2)
    if arch == "gpt_oss":  # alternating sliding-window (4 tokens) and full attention
        return GptOssConfig(
            **common, intermediate_size=32, num_key_value_heads=2, head_dim=8,
            num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
        )  # fmt: skip
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(
            **common, **moe, intermediate_size=64, num_key_value_heads=2, head_dim=8,
            num_experts=4, decoder_sparse_step=1,
        )  # fmt: skip
    # MLA dims are multiples of FP8_BLOCK so that transformers' FP8 dequantizer (which needs
    # divisible shapes) can serve as the reference; layer 0 dense, layer 1 MoE
    return DeepseekV3Config(
        **common, **moe, intermediate_size=64, num_key_value_heads=4, n_routed_experts=4,
        n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=16,
        kv_lora_rank=16, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16,
    )  # fmt: skip


def save_tiny(arch: str, path: Path) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch)).eval()
    with torch.no_grad():  # peaked next-token distributions, as in specbench.targets.tiny
        model.lm_head.weight.normal_(0.0, 2.0 / model.config.hidden_size**0.5)
    model.save_pretrained(path)
    return path


def save_fake_fp8(src: Path, dst: Path) -> Path:
    """DeepSeek-V3-style FP8 copy of ``src``: projection weights e4m3 + per-block scales."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    state, out = load_file(src / "model.safetensors"), {}
    for key, w in state.items():
        if not (key.endswith("proj.weight") and ".layers." in key):  # norms, router, embed
            out[key] = w if key.endswith("correction_bias") else w.bfloat16()  # as released
            continue
        rows, cols = w.shape
        blocks = w.view(rows // FP8_BLOCK, FP8_BLOCK, cols // FP8_BLOCK, FP8_BLOCK)
        scale = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12) / 448.0  # e4m3 max
        expanded = scale.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)
        out[key] = (w / expanded).to(torch.float8_e4m3fn)
        out[key + "_scale_inv"] = scale.float()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
        "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
    }  # fmt: skip
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zero3_models")
    paths = {arch: save_tiny(arch, root / arch) for arch in ARCHS}
    paths["fp8"] = save_fake_fp8(paths["deepseek_v3"], root / "deepseek_v3_fp8")
    return paths


def run_worker(spec: dict, tmp: Path, nproc: int) -> list[dict]:
    """Run the worker on ``nproc`` ranks; return each rank's results."""
    spec = {**spec, "out": str(tmp / "out")}
    (tmp / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, str(WORKER), str(tmp / "spec.json")]
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1"]
        launcher += ["--master_addr=127.0.0.1", f"--master_port={port}"]
        cmd = [sys.executable, *launcher, *cmd[1:]]
    run_group(cmd, tmp, timeout=420, what="ZeRO-3 worker")
    return [json.loads((tmp / "out" / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.fixture(scope="module")
def single(models, tmp_path_factory) -> list[dict]:
    spec = {
        "models": {arch: str(models[arch]) for arch in ARCHS},
        "offload": ["llama"],  # offload_param: cpu on one class
        "speculative": list(ARCHS),
        "fp8": {"src": str(models["fp8"]), "dequantized_dir": str(models["fp8"]) + "-bf16"},
    }
    return report(run_worker(spec, tmp_path_factory.mktemp("zero3_single"), nproc=1))


@pytest.fixture(scope="module")
def dual(models, tmp_path_factory) -> list[dict]:
    spec = {"models": {arch: str(models[arch]) for arch in ARCHS}, "speculative": ["llama"]}
    return report(run_worker(spec, tmp_path_factory.mktemp("zero3_dual"), nproc=2))


def report(ranks: list[dict]) -> list[dict]:
    """Print the measured differences (``pytest -m zero3 -s`` shows them); return ``ranks``."""
    for r, res in enumerate(ranks):
        for arch in ARCHS:
            fwd, kv = res[arch]["forward"], res[arch]["kv_cache"]
            print(
                f"\nZeRO-3 vs transformers, rank {r}/{len(ranks)}, {arch}: max|Δ| logits "
                f"{fwd['logits']:.2e} features {fwd['features']:.2e}; KV-cached logits "
                f"{kv['logits']:.2e} features {kv['features']:.2e}"
            )
            if "speculative" in res[arch]:
                print(f"  speculative: {res[arch]['speculative']}")
    return ranks


def _check_rank(res: dict, arch: str) -> None:
    r = res[arch]
    assert r["forward"]["real"] >= 1
    assert r["forward"]["logits"] <= ATOL and r["forward"]["features"] <= ATOL, r["forward"]
    assert r["kv_cache"]["logits"] <= ATOL and r["kv_cache"]["features"] <= ATOL, r["kv_cache"]
    assert not r["plain_partitioned"], "HfDeepSpeedConfig leaked into a later plain load"


@pytest.mark.parametrize("arch", ARCHS)
def test_single_process_matches_transformers(single, arch):
    """Logits, features and the KV-cached incremental forward equal plain transformers."""
    assert single[0]["world"] == 1
    _check_rank(single[0], arch)
    assert single[0][arch]["forward"]["padded"] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_two_processes_match_transformers(dual, arch):
    """Each rank checks its own share; 5 items on 2 ranks: rank 1 runs one padding batch."""
    assert [r["world"] for r in dual] == [2, 2]
    for res in dual:
        _check_rank(res, arch)
    fwd = [r[arch]["forward"] for r in dual]
    assert [f["real"] for f in fwd] == [3, 2] and [f["padded"] for f in fwd] == [0, 1]
    # the ranks ran different numbers of cached forwards; draining evened them out
    kv = [r[arch]["kv_cache"] for r in dual]
    assert kv[0]["forwards"] != kv[1]["forwards"]
    assert kv[0]["forwards"] + kv[0]["drained"] == kv[1]["forwards"] + kv[1]["drained"]


def test_speculative_decoding_same_tau(single, dual):
    """T=0 decoding through ZeRO-3 and plain targets: same tokens and τ, on every rank.

    MEDUSA (from specbench.drafts, fed by zero3_target_info) and a noisy oracle draft whose
    rounds are partly accepted, so that the KV-cache rollback runs through ZeRO-3 too.
    """
    runs = [(arch, single[0][arch]["speculative"]) for arch in ARCHS]
    runs += [("llama", r["llama"]["speculative"]) for r in dual]
    if "skipped" in runs[0][1]:
        pytest.skip(f"speculative decoding not available: {runs[0][1]['skipped']}")
    for arch, s in runs:
        assert s["info"] == 0.0, f"{arch}: zero3_target_info differs from the plain target"
        for draft in ("medusa", "oracle"):
            z, p = s[f"{draft}/zero3"], s[f"{draft}/plain"]
            assert z["tokens"] == p["tokens"] and z["tau"] == p["tau"], (arch, draft)
        accepted = s["oracle/zero3"]["accepted"]
        assert any(0 < a < 3 for a in accepted), (arch, accepted)  # partly accepted rounds
        assert s["oracle/zero3"]["tau"] > 1.5, (arch, accepted)


def test_fp8_checkpoint_dequantized(single):
    """ZeRO-3 on an FP8 checkpoint (converted to bf16) = transformers' FP8 dequantize path."""
    assert single[0]["fp8"]["logits"] <= 1e-2  # bf16; the weights themselves are equal


def test_fp8_conversion_equals_transformers_dequantizer(models, tmp_path):
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config

    from specbench.targets.quantized import fp8_block_size
    from specbench.targets.zero3 import dequantize_checkpoint

    out = dequantize_checkpoint(models["fp8"], tmp_path / "bf16")
    assert fp8_block_size(json.loads((out / "config.json").read_text())) is None
    ours = AutoModelForCausalLM.from_pretrained(out).state_dict()
    ref = AutoModelForCausalLM.from_pretrained(
        models["fp8"], dtype=torch.bfloat16,
        quantization_config=FineGrainedFP8Config(dequantize=True),
    ).state_dict()  # fmt: skip
    assert ours.keys() == ref.keys()
    for key, value in ref.items():  # transformers keeps some unquantized tensors in float32
        assert torch.equal(ours[key].float(), value.float()), key


def save_fake_mxfp4(src: Path, dst: Path) -> Path:
    """gpt-oss-style MXFP4 copy of ``src``: expert matrices as e2m1 blocks + e8m0 scales."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    g = torch.Generator().manual_seed(3)
    out = {}
    for key, w in load_file(src / "model.safetensors").items():
        if not key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            out[key] = w.bfloat16()
            continue
        experts, cols, rows = w.shape  # stored [E, rows, cols/32, 16]: two values per byte
        out[key + "_blocks"] = torch.randint(0, 256, (experts, rows, cols // 32, 16), generator=g)
        out[key + "_blocks"] = out[key + "_blocks"].to(torch.uint8)
        out[key + "_scales"] = torch.randint(122, 128, (experts, rows, cols // 32), generator=g)
        out[key + "_scales"] = out[key + "_scales"].to(torch.uint8)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"],
    }  # fmt: skip
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_mxfp4_conversion_equals_transformers_dequantizer(models, tmp_path):
    """gpt-oss ships MXFP4 experts: the converted checkpoint loads to exactly what
    transformers' ``Mxfp4Config(dequantize=True)`` loads, and ZeRO-3 then detects no
    quantization left to convert."""
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from specbench.targets.quantized import quant_method
    from specbench.targets.zero3 import dequantize_checkpoint

    src = save_fake_mxfp4(models["gpt_oss"], tmp_path / "mxfp4")
    assert quant_method(json.loads((src / "config.json").read_text())) == "mxfp4"
    out = dequantize_checkpoint(src, tmp_path / "bf16")
    assert quant_method(json.loads((out / "config.json").read_text())) is None
    ours = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).state_dict()
    ref = AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.bfloat16, quantization_config=Mxfp4Config(dequantize=True)
    ).state_dict()
    assert ours.keys() == ref.keys()
    experts = [k for k in ref if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(experts) == 4 and all(ref[k].abs().max() > 0 for k in experts)
    for key, value in ref.items():
        assert torch.equal(ours[key].float(), value.float()), key
    # the cost ratio's parameter count reads the MXFP4 files as the numbers they stand for
    from specbench.targets.info import target_info_from_checkpoint

    flops = [target_info_from_checkpoint(str(p)).target_flops_per_token for p in (src, out)]
    assert flops[0] == flops[1] == 2.0 * sum(v.numel() for v in ref.values())


def test_unsupported_quantization_is_named(tmp_path):
    from specbench.targets.zero3 import dequantize_checkpoint

    (tmp_path / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "gptq"}})
    )
    with pytest.raises(ValueError, match=r"one of \('fp8', 'mxfp4'\)"):
        dequantize_checkpoint(tmp_path, tmp_path / "out")


def test_dequantize_fp8_weight_partial_blocks():
    """Scale grid ceil(rows/bm) × ceil(cols/bn), edge blocks partial (DeepSeek semantics)."""
    from specbench.targets.zero3 import dequantize_fp8_weight

    q = torch.randn(24, 40).to(torch.float8_e4m3fn)
    scale = torch.rand(2, 3) + 0.5
    got = dequantize_fp8_weight(q, scale, (16, 16), torch.float32)
    want = torch.empty(24, 40)
    for r in range(24):
        for c in range(40):
            want[r, c] = q[r, c].float() * scale[r // 16, c // 16]
    assert torch.equal(got, want)


def test_ds_config_and_settings():
    from specbench.targets.zero3 import build_ds_config

    cfg = build_ds_config(torch.bfloat16, {"offload_param": "cpu", "stage3_max_live_parameters": 7})
    z = cfg["zero_optimization"]
    assert z["stage"] == 3 and z["offload_param"]["device"] == "cpu"
    assert z["stage3_max_live_parameters"] == 7 and cfg["bf16"]["enabled"]
    assert not build_ds_config(torch.float32, {})["fp16"]["enabled"]
    nvme = build_ds_config(torch.float16, {"offload_param": "nvme", "nvme_path": "/nvme"})
    assert nvme["zero_optimization"]["offload_param"]["nvme_path"] == "/nvme"
    with pytest.raises(ValueError, match="nvme_path"):
        build_ds_config(torch.float16, {"offload_param": "nvme"})
    with pytest.raises(ValueError, match="unknown zero3 settings"):
        build_ds_config(torch.float32, {"offload": "cpu"})


def test_lockstep_batches():
    from specbench.dist import lockstep_batches

    items = list("abcde")
    shares = [lockstep_batches(items, r, 3) for r in range(3)]
    assert shares == [
        [("a", True), ("d", True)],
        [("b", True), ("e", True)],
        [("c", True), ("a", False)],
    ]
    assert lockstep_batches(items, 0, 1) == [(x, True) for x in items]
    assert lockstep_batches(["a"], 1, 2) == [("a", False)]
    assert lockstep_batches([], 0, 2) == []
