"""The paper targets' shapes, for planning without their weights or the network.

Each is the subset of the hub repo's ``config.json`` that memory depends on (the values
``tests/tiny.py`` quotes for the twins; ``tests/test_plan.py`` checks they agree). Where the
checkpoint is in the local Hugging Face cache, the planner reads its own config instead.
"""

from __future__ import annotations

from typing import Any

import transformers
from transformers import AutoConfig, PretrainedConfig

LLAMA_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
GPT_OSS = dict(
    hidden_size=2880, intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8,
    head_dim=64, num_experts_per_tok=4, sliding_window=128, vocab_size=201088,
    rope_theta=150000.0, rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
    "beta_slow": 1.0, "original_max_position_embeddings": 4096, "truncate": False},
    max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip

# hub id -> (config class name in transformers, values)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "meta-llama/Llama-3.1-8B-Instruct": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        rope_theta=500000.0, rope_scaling=LLAMA_ROPE, max_position_embeddings=131072,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )),
    "meta-llama/Llama-3.3-70B-Instruct": ("LlamaConfig", dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        rope_theta=500000.0, rope_scaling=LLAMA_ROPE, max_position_embeddings=131072,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )),
    "openai/gpt-oss-20b": ("GptOssConfig", dict(GPT_OSS, num_hidden_layers=24,
                                                num_local_experts=32)),
    "openai/gpt-oss-120b": ("GptOssConfig", dict(GPT_OSS, num_hidden_layers=36,
                                                 num_local_experts=128)),
    "Qwen/Qwen3-235B-A22B-Instruct-2507": ("Qwen3MoeConfig", dict(
        hidden_size=4096, intermediate_size=12288, moe_intermediate_size=1536,
        num_hidden_layers=94, num_attention_heads=64, num_key_value_heads=4, head_dim=128,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
        vocab_size=151936, rope_theta=5000000.0, max_position_embeddings=262144,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    )),
    "deepseek-ai/DeepSeek-V3-0324": ("DeepseekV3Config", dict(
        hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, first_k_dense_replace=3, num_attention_heads=128,
        num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1,
        num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5,
        vocab_size=129280, rope_theta=10000.0, rope_scaling={"rope_type": "yarn",
        "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        max_position_embeddings=163840, rms_norm_eps=1e-6, num_nextn_predict_layers=1,
        tie_word_embeddings=False,
    )),
    # configs/tvdpp.yaml's target, the TVD++ paper's (no GQA, 32k vocabulary, no RoPE
    # scaling); copies of the repo's config.json carry rms_norm_eps 1e-5 (1e-6 before July
    # 2023's update) and no rope_theta (transformers' default 1e4)
    "meta-llama/Llama-2-7b-chat-hf": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, head_dim=128, vocab_size=32000,
        rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )),
    # draft_lm's pretrained drafters (their tokenizers are their targets')
    "meta-llama/Llama-3.2-1B-Instruct": ("LlamaConfig", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        rope_theta=500000.0, rope_scaling=dict(LLAMA_ROPE, factor=32.0),
        max_position_embeddings=131072, tie_word_embeddings=True, rms_norm_eps=1e-5,
    )),
    "Qwen/Qwen3-0.6B": ("Qwen3Config", dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        rope_theta=1000000.0, max_position_embeddings=40960, rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )),
}  # fmt: skip


def planned_config(model: str) -> PretrainedConfig:
    """:func:`target_config`, or an error naming the ids the planner knows."""
    cfg = target_config(model)
    if cfg is None:
        raise ValueError(f"no config for {model!r} on disk or in plan/shapes.py: {sorted(SHAPES)}")
    return cfg


def target_config(model: str) -> PretrainedConfig | None:
    """``model``'s config: from a local folder or the HF cache, else :data:`SHAPES`; None
    when neither has it."""
    try:
        return AutoConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):
        pass
    if model in SHAPES:
        cls, values = SHAPES[model]
        return getattr(transformers, cls)(**values)
    return None
