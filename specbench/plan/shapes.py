"""The paper targets' shapes, for planning without their weights or the network.

Each is the subset of the hub repo's ``config.json`` that memory depends on (the same
values ``tests/tiny.py`` quotes for the twins). Where the checkpoint is in the local
Hugging Face cache, the planner reads its own config instead.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, LlamaConfig, PretrainedConfig

LLAMA_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip

# hub id -> (config class, values); only the dense Llama targets for now: the MoE targets'
# drafts and ZeRO-3 working sets are not modelled yet (the planner says so)
SHAPES: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "meta-llama/Llama-3.1-8B-Instruct": (LlamaConfig, dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        rope_theta=500000.0, rope_scaling=LLAMA_ROPE, max_position_embeddings=131072,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )),
    "meta-llama/Llama-3.3-70B-Instruct": (LlamaConfig, dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        rope_theta=500000.0, rope_scaling=LLAMA_ROPE, max_position_embeddings=131072,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )),
}  # fmt: skip


def target_config(model: str) -> PretrainedConfig | None:
    """``model``'s config: from a local folder or the HF cache, else :data:`SHAPES`; None
    when neither has it."""
    try:
        return AutoConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):
        pass
    if model in SHAPES:
        cls, values = SHAPES[model]
        return cls(**values)
    return None
