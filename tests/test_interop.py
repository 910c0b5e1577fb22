"""Drafts in the peers' formats, checked with the peers' own code (marker ``interop``).

Export: a specbench draft is written with :func:`specbench.formats.export_draft`, loaded by
speculators 0.9.0's ``Eagle3DraftModel.from_pretrained`` or SpecForge 0.2.0's
``LlamaForCausalLMEagle3``, and both run the same teacher-forced draft steps on the same
target features and tokens: the logits must agree. Import: tiny random checkpoints built and
saved by the peers' own classes are read by :func:`specbench.formats.load_external` and
compared the same way. The peers come from ``tests/peers_site.py`` (installed without their
dependencies). Each test prints the max |Δ| it measured (``pytest -m interop -s``).

SpecForge's class is built from its config and given the safetensors with
``load_state_dict(strict=True)``: its ``from_pretrained`` under our transformers (5.23;
SpecForge pins 5.8.1) leaves the non-persistent RoPE caches of the class uninitialised.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peers_site import ensure_peers, speculators_eagle3
from safetensors.torch import load_file
from tiny import tiny_deepseek_v3_config, tiny_llama

from specbench.drafts import build_draft
from specbench.formats import FormatError, export_draft, external_vocab, load_external
from specbench.targets.info import TargetInfo, target_info_from_model

pytestmark = pytest.mark.interop

V, VD, D, L, K = 80, 40, 32, 12, 3  # target vocab, draft vocab, hidden, positions, steps
TOL = 1e-5


@pytest.fixture(scope="module")
def peers():
    ensure_peers()
    torch._dynamo.config.disable = True  # SpecForge's RMSNorm is torch.compile'd: run eager
    yield
    torch._dynamo.config.disable = False


def saved_target(model, folder):
    """``model`` saved to ``folder`` (the peers read the verifier's files), its info with a
    sorted 40-token draft vocabulary, and fixed features / tokens."""
    model.save_pretrained(folder)
    d2t = torch.randperm(V, generator=torch.Generator().manual_seed(0))[:VD].sort().values
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(1, L, 4, D, generator=g), torch.randint(0, V, (1, L), generator=g)
    return model, str(folder), target_info_from_model(model, d2t), inputs


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A tiny 8-layer Llama (plain θ-RoPE), saved, with its info and inputs."""
    model = tiny_llama(vocab_size=V, hidden_size=D, layers=8)
    return saved_target(model, tmp_path_factory.mktemp("target"))


LLAMA3_ROPE = {  # Llama-3.1's scaling, with an original context of 64 positions so that the
    # tiny heads' wavelengths (2π/ω = 6.3, 63, 628, 6283) fall in all three llama3 regimes
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def scaled_target(tmp_path_factory):
    """The same tiny Llama with Llama-3.1's ``llama3`` RoPE scaling (θ = 5e5)."""
    model = tiny_llama(vocab_size=V, hidden_size=D, layers=8)
    model.config.rope_parameters = {**LLAMA3_ROPE, "rope_theta": 500000.0}
    return saved_target(model, tmp_path_factory.mktemp("scaled"))


def perturbed(draft, seed: int = 1):
    """Move every weight off its initialisation, so that no tensor can go unchecked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return draft.eval()


def ours_logits(draft, inputs) -> torch.Tensor:
    """specbench's teacher-forced logits ``[L, K, V_draft]`` at every anchor."""
    feats, ids = inputs
    with torch.no_grad():
        return draft.forward_train(feats, ids, torch.ones_like(ids, dtype=torch.bool), K).logits[0]


def speculators_logits(model, inputs) -> torch.Tensor:
    """speculators' own TTT forward (its step-1 token at i is x_{i+1}; positions 0..L-1);
    the logits are read off ``lm_head`` with a hook (its forward returns draft tokens)."""
    feats, ids = inputs
    got = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: got.append(o[0]))
    with torch.no_grad():
        model(
            hidden_states=feats[..., :3, :].flatten(-2),
            input_ids=F.pad(ids[:, 1:], (0, 1)),
            document_ids=torch.zeros_like(ids),
            position_ids=torch.arange(L)[None],
            ttt_steps=K,
        )
    hook.remove()
    return torch.stack(got, dim=1)


def specforge_logits(model, inputs) -> torch.Tensor:
    """SpecForge's draft steps as its Eagle-3 trainer runs them (``project_hidden_states``,
    then per step ``embed_input_ids`` → ``backbone`` with its TTT cache → ``compute_logits``)."""
    feats, ids = inputs
    with torch.no_grad():
        h = model.project_hidden_states(feats[..., :3, :].flatten(-2))
        mask = model.prepare_decoder_attention_mask(torch.ones(1, L), h, 1, L, 0)
        cache, out = [[], []], []
        for t in range(K):
            emb = model.embed_input_ids(F.pad(ids[:, 1 + t :], (0, 1 + t)))
            h = model.backbone(emb, h, cache, mask, torch.arange(L)[None])
            out.append(model.compute_logits(h)[0])
    return torch.stack(out, dim=1)


def report(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    delta = (ours - theirs).abs().max().item()
    print(f"\n{what}: max |Δ logits| = {delta:.3g} (|logits| ≤ {ours.abs().max().item():.3g})")
    return delta


def speculators_model(path):
    from speculators.models.eagle3 import Eagle3DraftModel, Eagle3SpeculatorConfig

    cfg = Eagle3SpeculatorConfig.from_pretrained(path)
    cfg.transformer_layer_config._attn_implementation = "sdpa"  # CPU: no flex attention
    return Eagle3DraftModel.from_pretrained(path, config=cfg).eval()


def specforge_model(path):
    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
    from transformers import LlamaConfig

    model = LlamaForCausalLMEagle3(LlamaConfig.from_pretrained(path))
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.eval()


# -- export ---------------------------------------------------------------------------------


def test_speculators_loads_our_eagle3(peers, target, tmp_path):
    _, folder, info, inputs = target
    draft = perturbed(build_draft("eagle3", info))
    out = export_draft(draft, info, tmp_path / "spec", "speculators", folder, K)
    peer = speculators_model(out)
    assert peer.config.eagle_aux_hidden_state_layer_ids == [2, 4, 5]
    assert torch.equal(peer.d2t + torch.arange(VD), info.draft_to_target)
    assert report("speculators Eagle3DraftModel", ours_logits(draft, inputs),
                  speculators_logits(peer, inputs)) <= TOL  # fmt: skip


def test_specforge_loads_our_eagle3(peers, target, tmp_path):
    _, folder, info, inputs = target
    draft = perturbed(build_draft("eagle3", info))
    out = export_draft(draft, info, tmp_path / "sgl", "sglang", folder, K)
    peer = specforge_model(out)
    assert int(peer.t2d.sum()) == VD and peer.draft_vocab_size == VD
    # SGLang captures layer id + 1's input: our hidden_states [2, 4, 5] are its [1, 3, 4]
    # (SpecForge's default [1, L//2 - 1, L - 4] for L = 8), vLLM's (2, L//2, L - 3)
    ids = json.loads((out / "config.json").read_text())["eagle_config"]
    assert ids["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    assert report("SpecForge LlamaForCausalLMEagle3", ours_logits(draft, inputs),
                  specforge_logits(peer, inputs)) <= TOL  # fmt: skip


# -- import ---------------------------------------------------------------------------------


def speculators_checkpoint(model, folder, info, out, **flags):
    """A random EAGLE-3 over ``info``'s draft vocabulary, made by speculators (seed 2)."""
    layer = model.config.__class__.from_dict(model.config.to_dict())
    layer.num_hidden_layers = 1
    return speculators_eagle3(layer, info.draft_to_target, folder, K, 2, out, **flags)


def test_speculators_checkpoint_imports(peers, target, tmp_path):
    model, folder, info, inputs = target
    peer = speculators_checkpoint(model, folder, info, tmp_path / "ckpt")
    draft = load_external("speculators", tmp_path / "ckpt", info).eval()
    assert draft.arch == "eagle3"
    assert report("speculators checkpoint → load_external", ours_logits(draft, inputs),
                  speculators_logits(peer, inputs)) <= TOL  # fmt: skip


def test_specforge_checkpoint_imports(peers, target, tmp_path):
    model, _, info, inputs = target
    peer = specforge_checkpoint(model, info, tmp_path / "ckpt")
    cfg_file = tmp_path / "ckpt" / "config.json"  # SpecForge's default layers, as its trainer
    cfg = json.loads(cfg_file.read_text())  # writes them: ours, one less (SGLang's counting)
    cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [1, 3, 4]}
    cfg_file.write_text(json.dumps(cfg))
    draft = load_external("sglang", tmp_path / "ckpt", info).eval()
    assert draft.aux_layers is None  # the run's own layers: its caches hold them
    assert report("SpecForge checkpoint → load_external", ours_logits(draft, inputs),
                  specforge_logits(peer, inputs)) <= TOL  # fmt: skip


def specforge_checkpoint(model, info, out):
    """A random EAGLE-3 built and saved by SpecForge's ``LlamaForCausalLMEagle3`` from the
    target's config (as its trainer does: RoPE scaling included)."""
    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3

    cfg = model.config.__class__.from_dict(model.config.to_dict())
    cfg.num_hidden_layers, cfg.draft_vocab_size = 1, VD
    cfg.architectures = ["LlamaForCausalLMEagle3"]
    torch.manual_seed(3)
    peer = LlamaForCausalLMEagle3(cfg)
    with torch.no_grad():
        peer.embed_tokens.weight.copy_(model.get_input_embeddings().weight)
        peer.t2d.zero_()
        peer.t2d[info.draft_to_target] = True
        peer.d2t.copy_(info.draft_to_target - torch.arange(VD))
        for name, p in peer.named_parameters():
            if name != "embed_tokens.weight":
                p.add_(torch.randn_like(p) * 0.05)
    peer.save_pretrained(out)
    return peer.eval()


def plain_rope_logits(draft, info, inputs) -> torch.Tensor:
    """The same weights rotated with plain θ-RoPE (what specbench did before scaling)."""
    plain = TargetInfo(**{**info.__dict__, "rope_parameters": {}})
    twin = build_draft("eagle3", plain, **draft.hparams)
    twin.load_state_dict(draft.state_dict())
    return ours_logits(twin.eval(), inputs)


def test_llama3_scaled_eagle3_round_trips(peers, scaled_target, tmp_path):
    """Llama-3.1-style RoPE scaling: checkpoints made by speculators and SpecForge import
    (their logits, their own classes), and ours export with the scaling both peers read."""
    model, folder, info, inputs = scaled_target
    assert info.rope_parameters["rope_type"] == "llama3"
    peer = speculators_checkpoint(model, folder, info, tmp_path / "spec")
    saved = json.loads((tmp_path / "spec" / "config.json").read_text())
    assert saved["transformer_layer_config"]["rope_parameters"]["rope_type"] == "llama3"
    draft = load_external("speculators", tmp_path / "spec", info).eval()
    ours = ours_logits(draft, inputs)
    assert report("llama3: speculators checkpoint → load_external", ours,
                  speculators_logits(peer, inputs)) <= TOL  # fmt: skip
    # the scaling is seen: plain θ-RoPE on the same weights is far off
    assert report("llama3 vs plain θ-RoPE, same weights", ours,
                  plain_rope_logits(draft, info, inputs)) > 100 * TOL  # fmt: skip

    peer = specforge_checkpoint(model, info, tmp_path / "sgl")
    assert peer.midlayer.self_attn.rope_scaling["rope_type"] == "llama3"
    draft = load_external("sglang", tmp_path / "sgl", info).eval()
    assert report("llama3: SpecForge checkpoint → load_external", ours_logits(draft, inputs),
                  specforge_logits(peer, inputs)) <= TOL  # fmt: skip

    draft = perturbed(build_draft("eagle3", info))
    out = export_draft(draft, info, tmp_path / "out-spec", "speculators", folder, K)
    layer = json.loads((out / "config.json").read_text())["transformer_layer_config"]
    assert layer["rope_scaling"] == {**LLAMA3_ROPE} and layer["rope_theta"] == 500000.0
    assert report("llama3: speculators Eagle3DraftModel loads ours", ours_logits(draft, inputs),
                  speculators_logits(speculators_model(out), inputs)) <= TOL  # fmt: skip
    out = export_draft(draft, info, tmp_path / "out-sgl", "sglang", folder, K)
    assert report("llama3: SpecForge loads ours", ours_logits(draft, inputs),
                  specforge_logits(specforge_model(out), inputs)) <= TOL  # fmt: skip


def test_import_refuses_another_rope_scaling(peers, scaled_target, tmp_path):
    """A scaled checkpoint whose scaling is not the target's is refused, naming the key; the
    same scaling with defaults spelled out is not a difference."""
    _, folder, info, _ = scaled_target
    ok = export_draft(build_draft("eagle3", info), info, tmp_path / "ok", "sglang", folder, K)
    cfg = json.loads((ok / "config.json").read_text())

    def load_with(**rope):
        params = {**cfg["rope_parameters"], **rope}
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        config = {**cfg, "rope_parameters": params, "rope_scaling": scaling}
        (ok / "config.json").write_text(json.dumps(config))
        return load_external("sglang", ok, info)

    with pytest.raises(FormatError, match=r"factor = 4.0 \(target: 8.0\)"):
        load_with(factor=4.0)
    with pytest.raises(FormatError, match="original_max_position_embeddings = 8192"):
        load_with(original_max_position_embeddings=8192)
    with pytest.raises(FormatError, match="'yarn' RoPE; the target's .* is 'llama3'"):
        load_with(rope_type="yarn")
    plain = export_draft(build_draft("eagle3", info), info, tmp_path / "p", "sglang", folder, K)
    plain_cfg = json.loads((plain / "config.json").read_text())
    plain_cfg.update(rope_scaling=None, rope_parameters={"rope_type": "default",
                     "rope_theta": 500000.0})  # fmt: skip
    (plain / "config.json").write_text(json.dumps(plain_cfg))
    with pytest.raises(FormatError, match="'default' RoPE; the target's .* is 'llama3'"):
        load_external("sglang", plain, info)
    assert load_with(factor=8) is not None  # an int factor: the same tables


def test_import_refuses_what_it_cannot_map(peers, target, tmp_path):
    """Each difference is a refusal that names it, never a silently different draft."""
    model, folder, info, _ = target
    speculators_checkpoint(model, folder, info, tmp_path / "nbr", norm_before_residual=True)
    with pytest.raises(FormatError, match="norm_before_residual"):
        load_external("speculators", tmp_path / "nbr", info)
    ok = tmp_path / "ok"
    export_draft(build_draft("eagle3", info), info, ok, "sglang", folder, K)
    cfg = json.loads((ok / "config.json").read_text())
    scaled = {"rope_type": "llama3", "rope_theta": info.rope_theta, "factor": 8.0}
    (ok / "config.json").write_text(json.dumps({**cfg, "rope_parameters": scaled}))
    with pytest.raises(FormatError, match="llama3"):
        load_external("sglang", ok, info)
    (ok / "config.json").write_text(json.dumps(cfg))
    other = target_info_from_model(model, torch.arange(VD))  # another draft vocabulary
    with pytest.raises(FormatError, match="vocab: own"):
        load_external("sglang", ok, other)
    assert torch.equal(external_vocab("sglang", ok, V), info.draft_to_target)


# -- formats no peer can load on CPU: exact round trips through our own reader ----------------


@pytest.mark.parametrize("arch", ["medusa", "mlp_speculator"])
def test_vllm_formats_round_trip(target, tmp_path, arch):
    """vLLM's MEDUSA and MLP-speculator classes need vLLM itself (no CPU import), so these
    two formats are checked against our reader only: names and config as vLLM reads them."""
    model, folder, info, inputs = target
    full = target_info_from_model(model)  # the MLP-speculator format needs the full vocabulary
    use = full if arch == "mlp_speculator" else info
    hp = {"num_heads": K} if arch == "medusa" else {"num_stages": K}
    draft = perturbed(build_draft(arch, use, **hp))
    out = export_draft(draft, use, tmp_path / arch, "vllm", folder, K)
    names = set(load_file(str(out / "model.safetensors")))
    assert (
        ("lm_heads.0.weight" in names and "token_map" in names)
        if arch == "medusa"
        else ({"emb.0.weight", "proj.0.weight", "head.0.weight", "ln.0.bias"} <= names)
    )
    back = load_external("vllm", out, use).eval()
    assert torch.equal(ours_logits(draft, inputs), ours_logits(back, inputs))
    if arch == "mlp_speculator":
        with pytest.raises(FormatError, match="no vocabulary map"):
            export_draft(build_draft(arch, info, num_stages=K), info, tmp_path / "x", "vllm")


def test_mtp_export_uses_the_targets_layer_names(tmp_path):
    """DeepSeek-V3's MTP layer names, read back by the loader the ``mtp`` draft starts from."""
    from transformers import DeepseekV3ForCausalLM

    from specbench.drafts.mtp_import import import_mtp_state_dict

    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(tiny_deepseek_v3_config(V, D)).eval()
    info = target_info_from_model(model)
    draft = perturbed(build_draft("mtp", info, block="deepseek_v3"))
    out = export_draft(draft, info, tmp_path / "mtp", "mtp", "tiny-deepseek", K)
    tensors = load_file(str(out / "model.safetensors"))
    n = model.config.num_hidden_layers
    assert all(k.startswith(f"model.layers.{n}.") for k in tensors)
    assert f"model.layers.{n}.mlp.experts.3.down_proj.weight" in tensors
    fresh = build_draft("mtp", info, block="deepseek_v3")
    report_ = import_mtp_state_dict(fresh, tensors)
    assert sorted(report_.skipped) == ["embed_tokens.weight", "shared_head.head.weight"]
    for name, value in draft.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_unsupported_pairs_name_the_valid_ones(target):
    _, _, info, _ = target
    with pytest.raises(FormatError, match=r"unknown format 'onnx'; valid: \["):
        export_draft(build_draft("eagle3", info), info, "unused", "onnx")
    with pytest.raises(FormatError, match="DFlash"):
        export_draft(build_draft("block_diffusion", info), info, "unused", "speculators")
    with pytest.raises(FormatError, match="speculators 0.9.0 defines no MLP-speculator"):
        export_draft(build_draft("mlp_speculator", info), info, "unused", "speculators")


def test_command_line_export_and_import(target, tmp_path):
    """``python -m specbench.formats export`` / ``import`` (in-process), and their errors."""
    from specbench.formats.__main__ import main

    _, folder, info, inputs = target
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"draft_to_target": info.draft_to_target.tolist()}))
    draft = perturbed(build_draft("eagle3", info))
    draft.save(tmp_path / "draft")
    cli = ["--target", folder, "--vocab", str(vocab)]
    main(["export", str(tmp_path / "draft"), str(tmp_path / "out"), "--format", "sglang", *cli])
    main(["import", "sglang", str(tmp_path / "out"), str(tmp_path / "back"), *cli])
    back = load_external("sglang", tmp_path / "out", info).eval()
    assert torch.equal(ours_logits(draft, inputs), ours_logits(back, inputs))
    assert (tmp_path / "back" / "model.safetensors").exists()
    with pytest.raises(SystemExit, match="valid: "):
        main(["export", str(tmp_path / "draft"), str(tmp_path / "x"), "--format", "onnx", *cli])
