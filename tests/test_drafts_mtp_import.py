"""Importing released DeepSeek-V3 MTP weights (``model.layers.N.*``) into the ``mtp`` draft."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_deepseek_v3_config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
    DeepseekV3DecoderLayer,
    DeepseekV3RotaryEmbedding,
)

from specbench.drafts import build_draft
from specbench.features import LAST
from specbench.targets.info import TargetInfo
from specbench.targets.quantized import dequantize_fp8_weight

V, VD, D, L, E, I = 50, 30, 32, 10, 4, 16  # vocabs, hidden, length, experts, expert width


def tiny_config():
    return tiny_deepseek_v3_config(V, D, max_positions=64)


@pytest.fixture(scope="module")
def release():
    """(info, released state dict, reference modules) for a random tiny DeepSeek-V3 MTP layer."""
    cfg = tiny_config()
    cfg._attn_implementation = "eager"  # the reference runs a different attention path
    g = torch.Generator().manual_seed(0)
    N = cfg.num_hidden_layers
    info = TargetInfo(
        hidden_size=D,
        vocab_size=V,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=2 * I,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=10000.0,
        embed_tokens=torch.randn(V, D, generator=g),
        lm_head=torch.randn(V, D, generator=g) / D**0.5,
        draft_to_target=torch.randperm(V, generator=g)[:VD],
        extra={"hf_config": cfg},
    )
    layer = DeepseekV3DecoderLayer(cfg, layer_idx=N)
    with torch.no_grad():
        for p in layer.parameters():  # matrices ~N(0, 0.25²), norm weights ~1 ± 0.1
            scale, offset = (0.25, 0.0) if p.dim() >= 2 else (0.1, 1.0)
            p.copy_(torch.randn(p.shape, generator=g) * scale + offset)
        layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(E, generator=g) * 0.1)
    ref = {
        "layer": layer,
        "enorm": 1 + 0.1 * torch.randn(D, generator=g),
        "hnorm": 1 + 0.1 * torch.randn(D, generator=g),
        "head_norm": 1 + 0.1 * torch.randn(D, generator=g),
        "eh_proj": torch.randn(D, 2 * D, generator=g) * 0.2,
    }
    p = f"model.layers.{N}."
    sd = {
        p + "enorm.weight": ref["enorm"],
        p + "hnorm.weight": ref["hnorm"],
        p + "eh_proj.weight": ref["eh_proj"],
        p + "shared_head.norm.weight": ref["head_norm"],
        p + "shared_head.head.weight": info.lm_head.clone(),
        p + "embed_tokens.weight": info.embed_tokens.clone(),
        "model.layers.0.self_attn.o_proj.weight": torch.randn(D, D),  # main model: ignored
    }
    for name, t in layer.state_dict().items():  # released layout: one module per expert
        if name == "mlp.experts.gate_up_proj":
            for e in range(E):
                sd[p + f"mlp.experts.{e}.gate_proj.weight"] = t[e, :I].clone()
                sd[p + f"mlp.experts.{e}.up_proj.weight"] = t[e, I:].clone()
        elif name == "mlp.experts.down_proj":
            for e in range(E):
                sd[p + f"mlp.experts.{e}.down_proj.weight"] = t[e].clone()
        else:
            sd[p + name] = t.clone()
    return info, sd, ref


def with_release(info: TargetInfo, sd) -> TargetInfo:
    return TargetInfo(**{**info.__dict__, "mtp_state_dict": sd})


def test_import_maps_every_released_tensor(release):
    info, sd, ref = release
    draft = build_draft("mtp", with_release(info, sd))
    report = draft.import_report
    assert report.layer == 2
    assert sorted(report.skipped) == ["embed_tokens.weight", "shared_head.head.weight"]
    own = draft.state_dict()
    assert set(report.imported) == set(own), "some draft tensor was not initialised"
    for name, t in ref["layer"].state_dict().items():
        assert torch.equal(own["block." + name], t), name
    assert torch.equal(draft.eh_proj.weight, ref["eh_proj"])
    assert torch.equal(draft.shared_head_norm.weight, ref["head_norm"])


def test_imported_draft_matches_reference_mtp(release):
    """Step 1 equals DeepSeek's MTP formula run with transformers' own (eager) layer."""
    info, sd, ref = release
    draft = build_draft("mtp", with_release(info, sd))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2, L), generator=g)
    feats = torch.randn(2, L, 4, D, generator=g)
    out = draft.forward_train(feats, ids, torch.ones(2, L, dtype=torch.bool), 1)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + info.rms_norm_eps) * w

    emb = info.embed_tokens[F.pad(ids, (0, 1))[:, 1:]]  # x_{i+1}
    x = torch.cat([rms(emb, ref["enorm"]), rms(feats[..., LAST, :], ref["hnorm"])], -1)
    x = x @ ref["eh_proj"].T
    causal = torch.full((L, L), float("-inf")).triu(1)[None, None]
    pos = torch.arange(L)[None]
    cos_sin = DeepseekV3RotaryEmbedding(info.extra["hf_config"])(x, pos)
    with torch.no_grad():
        h = ref["layer"](x, attention_mask=causal, position_embeddings=cos_sin)
    logits = rms(h, ref["head_norm"]) @ info.lm_head[info.draft_to_target].T
    torch.testing.assert_close(out.logits[:, :, 0], logits, atol=1e-5, rtol=1e-5)


def test_fp8_weights_are_dequantised(release):
    info, sd, ref = release
    q = torch.randn(6, 10).to(torch.float8_e4m3fn)
    s = torch.rand(2, 3) + 0.5
    expect = q.float() * s.repeat_interleave(4, 0)[:6].repeat_interleave(4, 1)[:, :10]
    assert torch.equal(dequantize_fp8_weight(q, s, (4, 4), torch.float32), expect)
    # in a checkpoint: weight_scale_inv next to an fp8 weight, one 128×128 block here
    key = "model.layers.2.eh_proj.weight"
    fp8 = (ref["eh_proj"] * 8).to(torch.float8_e4m3fn)
    sd8 = {**sd, key: fp8, key + "_scale_inv": torch.tensor([[0.125]])}
    draft = build_draft("mtp", with_release(info, sd8))
    assert torch.equal(draft.eh_proj.weight, fp8.float() * 0.125)


def test_dense_block_imports_what_maps(release):
    info, sd, _ = release
    draft = build_draft("mtp", with_release(info, sd), block="llama")
    imported = set(draft.import_report.imported)
    expected = {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head_norm.weight"}
    expected |= {"block.input_layernorm.weight", "block.post_attention_layernorm.weight"}
    assert imported == expected
    assert "block.self_attn.kv_b_proj.weight" in draft.import_report.skipped


def test_freeze_experts_trains_everything_but_the_released_experts(release, tmp_path):
    """``freeze_experts``: experts keep their released weights; attention, router, shared
    expert and projections still learn; the hparam survives save/load."""
    from specbench.drafts import load_draft
    from specbench.losses import build as build_loss

    info, sd, _ = release
    full = build_draft("mtp", with_release(info, sd))
    draft = build_draft("mtp", with_release(info, sd), freeze_experts=True)
    experts = {n: p.detach().clone() for n, p in draft.named_parameters() if ".experts." in n}
    others = {n: p.detach().clone() for n, p in draft.named_parameters() if p.requires_grad}
    assert experts and not any(n in others for n in experts)
    frozen = sum(p.numel() for p in experts.values())
    assert draft.num_trainable_parameters() == full.num_trainable_parameters() - frozen
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (2, L), generator=g)
    feats = torch.randn(2, L, 4, D, generator=g)
    out = draft.forward_train(feats, ids, torch.ones(2, L, dtype=torch.bool), 2)
    target = torch.log_softmax(torch.randn(out.logits.shape, generator=g), -1)
    rows = out.logits.reshape(-1, 2, VD)
    mask = torch.ones(rows.shape[:2], dtype=torch.bool)
    loss = build_loss("kl")(draft_logits=rows, target_logits=target.reshape(rows.shape), mask=mask)
    opt = torch.optim.SGD([p for p in draft.parameters() if p.requires_grad], lr=0.1)
    loss.backward()
    opt.step()
    after = dict(draft.named_parameters())
    assert all(torch.equal(after[n], t) for n, t in experts.items())
    assert any(not torch.equal(after[n], t) for n, t in others.items())
    draft.save(tmp_path)
    loaded = load_draft(tmp_path, with_release(info, sd))  # as evaluation rebuilds it
    assert loaded.hparams["freeze_experts"] is True
    assert loaded.num_trainable_parameters() == draft.num_trainable_parameters()
    assert all(torch.equal(p, after[n]) for n, p in loaded.named_parameters())


def test_freeze_experts_needs_released_experts(release):
    info, _, _ = release
    with pytest.raises(ValueError, match="freeze_experts needs the deepseek_v3 block"):
        build_draft("mtp", info, block="llama", freeze_experts=True)
    with pytest.raises(ValueError, match="no MTP weights to import"):
        build_draft("mtp", info, freeze_experts=True)


@pytest.mark.parametrize("freeze", [True, False])
def test_on_cuda_the_experts_take_the_path_grouped_mm_can_run(release, freeze):
    """transformers' CUDA experts use ``grouped_mm``, bf16 only and outside autocast (its
    meta kernel, which mirrors the CUDA checks, refuses float32): ``prepare`` keeps frozen
    experts in bf16 (exactly their released values), and sends trainable float32 experts
    to the per-expert loop. Nothing changes on a CPU."""
    info, sd, _ = release
    draft = build_draft("mtp", with_release(info, sd), freeze_experts=freeze)
    experts = draft.block.mlp.experts
    before = {n: p.detach().clone() for n, p in experts.named_parameters()}
    draft.prepare(torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in draft.parameters())
    draft.prepare(torch.device("cuda"))  # the choice only: no tensor is moved
    assert draft.recompute_steps
    if freeze:
        for name, p in experts.named_parameters():
            assert p.dtype == torch.bfloat16 and not p.requires_grad
            assert torch.equal(p.float(), before[name].bfloat16().float())
        assert experts.config._experts_implementation != "eager"
    else:
        assert all(p.dtype == torch.float32 for p in experts.parameters())
        assert experts.config._experts_implementation == "eager"
    others = [p for n, p in draft.named_parameters() if not n.startswith("block.mlp.experts")]
    assert others and all(p.dtype == torch.float32 for p in others)
