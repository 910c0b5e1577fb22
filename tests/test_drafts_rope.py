"""The attention drafts' RoPE is the target's own, scaling included.

EAGLE-3, the block drafter and MTP's Llama layer rotate with :func:`rope_cos_sin` over the
target's rope parameters (:attr:`TargetInfo.rope_parameters`). Here their cos/sin tables are
compared with the rotary embedding of the target model itself (transformers'
``LlamaRotaryEmbedding`` / ``GptOssRotaryEmbedding`` / ``DeepseekV3RotaryEmbedding``) on the
tiny twins of ``tests/tiny.py``, at positions inside, at and far beyond the original
context; a target without scaling gets exactly the tables of plain θ-RoPE it always had.
Run with ``-s`` to see the max |Δ| per RoPE type.
"""

from __future__ import annotations

import pytest
import torch
from tiny import TWINS, build_twin, tiny_llama
from transformers import LlamaConfig, LlamaForCausalLM

from specbench.drafts import build_draft, load_draft
from specbench.drafts.layers import Rope, draft_rope, rope_cos_sin
from specbench.targets.info import TargetInfo, target_info_from_model

# inside the twins' original contexts (16, 32), across them, up to and beyond their maximum
POSITIONS = torch.tensor([0, 1, 2, 5, 15, 16, 17, 31, 32, 33, 100, 127, 128, 511, 1279, 4096])


def linear_llama() -> torch.nn.Module:
    """A tiny Llama with linear ("position interpolation") scaling, factor 4."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rope_scaling={"rope_type": "linear", "factor": 4.0},
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


TARGETS = {
    "llama3 (Llama-3.1-8B twin)": lambda: build_twin(TWINS["meta-llama/Llama-3.1-8B-Instruct"]()),
    "llama3 (Llama-3.3-70B twin)": lambda: build_twin(TWINS["meta-llama/Llama-3.3-70B-Instruct"]()),
    "yarn (gpt-oss-20b twin, attention factor 1.35)": lambda: build_twin(
        TWINS["openai/gpt-oss-20b"]()
    ),
    "yarn (DeepSeek-V3 twin, mscale)": lambda: build_twin(TWINS["deepseek-ai/DeepSeek-V3-0324"]()),
    "default (Qwen3-235B twin)": lambda: build_twin(TWINS["Qwen/Qwen3-235B-A22B-Instruct-2507"]()),
    "linear": linear_llama,
}


def targets_tables(model: torch.nn.Module, positions: torch.Tensor):
    """cos/sin ``[T, hd]`` of the target's own rotary embedding (gpt-oss returns the half
    tables ``[T, hd/2]`` of its split-half rotation, which our ``[ω; ω]`` layout repeats)."""
    cos, sin = model.model.rotary_emb(torch.zeros(1), positions[None])
    cos, sin = cos[0], sin[0]
    if cos.shape[-1] == model.config.head_dim // 2:
        cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    return cos, sin


@pytest.mark.parametrize("kind", list(TARGETS))
def test_draft_rope_equals_the_targets_rotary_embedding(kind):
    model = TARGETS[kind]()
    info = target_info_from_model(model)
    rope = draft_rope(info, info.head_dim)
    assert rope.params["rope_type"] == model.config.rope_parameters["rope_type"]
    ours = rope_cos_sin(POSITIONS, rope, torch.float32)
    theirs = targets_tables(model, POSITIONS)
    delta = max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))
    factor = rope.inv_freq(torch.device("cpu"))[1]
    print(f"\n{kind}: max |Δ cos/sin| = {delta:.3g} at positions 0…4096 (factor {factor:.4g})")
    assert delta <= 1e-6
    plain = old_rope_cos_sin(POSITIONS, info.head_dim, info.rope_theta, torch.float32)
    assert torch.equal(ours[0], plain[0]) == (rope.params["rope_type"] == "default")
    # per-row positions [B, T] (training-time test) give the same rows
    rows = rope_cos_sin(torch.stack([POSITIONS, POSITIONS.flip(0)]), rope, torch.float32)[0]
    assert torch.equal(rows[0], ours[0]) and torch.equal(rows[1], ours[0].flip(0))


def old_rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """The plain θ-RoPE tables as ``layers.rope_cos_sin`` computed them before scaling."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    angles = positions.float()[..., None] * (1.0 / theta**exponent)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unscaled_target_keeps_the_plain_tables(dtype):
    """SmolLM2-like Llama (θ = 1e5, no rope_scaling) and a hand-built info: bit-identical."""
    model = tiny_llama()
    model.config.rope_parameters["rope_theta"] = 100000.0  # SmolLM2-135M's θ
    info = target_info_from_model(model)
    assert info.rope_parameters == {"rope_type": "default", "rope_theta": 100000.0}
    hand = TargetInfo(**{**info.__dict__, "rope_parameters": {}})
    for i in (info, hand):
        ours = rope_cos_sin(POSITIONS, draft_rope(i, i.head_dim), dtype)
        old = old_rope_cos_sin(POSITIONS, i.head_dim, 100000.0, dtype)
        assert all(torch.equal(a, b) for a, b in zip(ours, old, strict=True))


@pytest.mark.parametrize("arch", ["eagle3", "block_diffusion", "mtp"])
def test_drafts_take_the_targets_rope_and_keep_their_hparams(arch, tmp_path):
    """Each attention draft rotates with the target's llama3 RoPE; the rope comes from the
    target, not from the draft's config, so saved drafts load as before."""
    model = build_twin(TWINS["meta-llama/Llama-3.1-8B-Instruct"]())
    info = target_info_from_model(model)
    draft = build_draft(arch, info).eval()
    assert draft.rope.params == info.rope_parameters
    assert draft.rope.params["rope_type"] == "llama3"
    assert not any("rope" in name for name in draft.hparams)
    assert not any("rope" in name for name in draft.state_dict())
    draft.save(tmp_path / arch)
    back = load_draft(tmp_path / arch, info)
    assert back.rope.params == info.rope_parameters


def test_unsupported_rope_is_refused():
    with pytest.raises(ValueError, match="'dynamic' is not supported"):
        Rope({"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, 8)
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        Rope({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}, 8)
