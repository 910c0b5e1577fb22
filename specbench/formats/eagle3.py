"""EAGLE-3 to and from the speculators and SGLang (SpecForge) checkpoint formats.

Both formats hold the same tensors under two prefixes for the one decoder layer:
``layers.0.`` (speculators ``Eagle3DraftModel``; vLLM reads it) and ``midlayer.``
(SpecForge ``LlamaForCausalLMEagle3``, which is what SGLang's EAGLE-3 loader reads; vLLM
renames it too). ``d2t`` holds offsets (target id = draft id + d2t), ``t2d`` a boolean mask;
a full-vocabulary draft has neither (vLLM 0.32 has no parameter for them then, and fails).
The table of every name and every difference is in :mod:`specbench.formats`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from specbench.drafts import Draft, build_draft
from specbench.drafts.layers import Rope, draft_rope
from specbench.formats.common import (
    FormatError,
    hf_config,
    is_full_vocab,
    offsets_and_mask,
    read_checkpoint,
    reorder_rows,
    require,
    target_layers,
    write_checkpoint,
)
from specbench.formats.registry import register_format
from specbench.targets.info import TargetInfo, rope_parameters
from specbench.targets.runner import feature_layer_indices

LAYER = {"speculators": "layers.0.", "sglang": "midlayer."}
# our names below the layer (the same in all three)
LAYER_NAMES = (
    "input_layernorm.weight",
    "hidden_norm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
TOP_NAMES = ("fc.weight", "norm.weight", "lm_head.weight")


def aux_layer_ids(info: TargetInfo) -> list[int] | None:
    """The target layers EAGLE-3 reads (low, mid, high), as vLLM and speculators count them:
    the *input* of decoder layer i = transformers' ``hidden_states[i]`` (SGLang and SpecForge
    count one less: :func:`sglang_layer_ids`)."""
    n = target_layers(info)
    return None if n is None else list(feature_layer_indices(n)[:3])


def sglang_layer_ids(draft: Draft, info: TargetInfo) -> list[int] | None:
    """The aux layers as SGLang and SpecForge count them: one less than vLLM. SGLang captures
    ``id + 1``'s input (``set_eagle3_layers_to_capture``: "for the ith layer, it takes the
    output of the (i-1)th layer"), so transformers' ``hidden_states[i]`` is id ``i − 1``;
    SpecForge's default ``[1, L//2 − 1, L − 4]`` is vLLM's ``(2, L//2, L − 3)``, ours."""
    ids = draft.aux_layers or aux_layer_ids(info)
    return None if ids is None else [int(i) - 1 for i in ids]


def rope_fields(info: TargetInfo) -> dict[str, Any]:
    """The target's RoPE as a draft config writes it, as SpecForge copies it into its EAGLE-3
    config: ``rope_parameters`` (transformers 5) and ``rope_theta`` + ``rope_scaling``
    (readers on transformers 4: vLLM, SGLang; ``None`` for plain θ-RoPE)."""
    params = draft_rope(info, info.head_dim).params
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return {
        "rope_theta": params["rope_theta"],
        "rope_scaling": None if params["rope_type"] == "default" else scaling,
        "rope_parameters": dict(params),
    }


def layer_config(info: TargetInfo, intermediate: int) -> dict[str, Any]:
    """The draft layer as a Llama config (what both peers build their layer from)."""
    cfg = hf_config(info)
    max_positions = getattr(cfg, "max_position_embeddings", None) or info.max_position_embeddings
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": info.vocab_size,
        "hidden_size": info.hidden_size,
        "intermediate_size": intermediate,
        "num_hidden_layers": 1,
        "num_attention_heads": info.num_attention_heads,
        "num_key_value_heads": info.num_key_value_heads,
        "head_dim": info.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": info.rms_norm_eps,
        **rope_fields(info),
        "max_position_embeddings": int(max_positions or 4096),
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "pad_token_id": None,
    }


def tensors_out(draft: Draft, info: TargetInfo, fmt: str) -> dict[str, torch.Tensor]:
    """Our state dict under the format's names, with the target embedding and vocab maps."""
    state = draft.state_dict()
    out = {name: state[name] for name in TOP_NAMES}
    out.update({LAYER[fmt] + name: state[name] for name in LAYER_NAMES})
    if not is_full_vocab(info):  # vLLM refuses the maps for a full vocabulary: no parameter
        out["d2t"], out["t2d"] = offsets_and_mask(info)
    out["embed_tokens.weight"] = info.embed_tokens.detach().to(state["fc.weight"].dtype)
    return out


# -- import -------------------------------------------------------------------------------


def layer_rope(layer: dict[str, Any]) -> dict[str, Any]:
    """A draft layer config's RoPE parameters as transformers reads them (``rope_parameters``,
    else ``rope_scaling`` + ``rope_theta``; ``original_max_position_embeddings`` defaults to
    the layer's ``max_position_embeddings``)."""
    return rope_parameters(SimpleNamespace(**layer))


def check_rope(layer: dict[str, Any], info: TargetInfo, where: str) -> None:
    """The checkpoint's RoPE must be the target's, which our ``eagle3`` uses: same type and θ,
    and the same inverse frequencies and attention factor (so keys spelled out at their
    defaults, e.g. yarn's ``beta_fast: 32``, do not count as a difference)."""
    ours = draft_rope(info, info.head_dim)
    theirs = layer_rope(layer)
    kind, target_kind = theirs["rope_type"], ours.params["rope_type"]
    require(
        kind == target_kind,
        f"{where}: {kind!r} RoPE; the target's (which our eagle3 uses) is {target_kind!r}",
    )
    theta = float(theirs["rope_theta"])
    require(
        theta == float(ours.params["rope_theta"]),
        f"{where}: rope_theta {theta} (ours: the target's {ours.params['rope_theta']})",
    )
    differ = sorted(
        key for key in set(theirs) | set(ours.params) if theirs.get(key) != ours.params.get(key)
    )
    if not differ:
        return
    try:
        rope = Rope(theirs, info.head_dim, layer.get("max_position_embeddings"))
        same = _same_tables(rope, ours)
    except (KeyError, TypeError, ValueError) as err:  # incomplete or unsupported parameters
        raise FormatError(f"{where}: its {kind!r} RoPE cannot be computed ({err})") from None
    shown = ", ".join(f"{k} = {theirs.get(k)!r} (target: {ours.params.get(k)!r})" for k in differ)
    require(same, f"{where}: {kind!r} RoPE scaling differs from the target's: {shown}")


def _same_tables(a: Rope, b: Rope) -> bool:
    cpu = torch.device("cpu")
    (fa, ma), (fb, mb) = a.inv_freq(cpu), b.inv_freq(cpu)
    return ma == mb and torch.equal(fa, fb)


def check_layer(layer: dict[str, Any], info: TargetInfo, where: str) -> None:
    """Refuse a draft layer our ``eagle3`` cannot reproduce exactly, naming the difference."""
    kind = layer.get("model_type", "llama")
    require(kind == "llama", f"{where}: a {kind!r} draft layer (ours is a Llama layer)")
    for key, ours in (
        ("hidden_size", info.hidden_size),
        ("num_attention_heads", info.num_attention_heads),
        ("num_key_value_heads", info.num_key_value_heads),
        ("num_hidden_layers", 1),
    ):
        require(
            int(layer.get(key, ours)) == ours,
            f"{where}: {key} = {layer.get(key)} (ours: {ours}, from the target)",
        )
    head_dim = layer.get("head_dim") or layer["hidden_size"] // layer["num_attention_heads"]
    require(head_dim == info.head_dim, f"{where}: head_dim {head_dim} (ours: {info.head_dim})")
    eps = float(layer.get("rms_norm_eps", info.rms_norm_eps))
    require(eps == info.rms_norm_eps, f"{where}: rms_norm_eps {eps} (ours: {info.rms_norm_eps})")
    check_rope(layer, info, where)
    for key in ("attention_bias", "mlp_bias"):
        require(not layer.get(key, False), f"{where}: {key} (ours has no biases)")
    act = layer.get("hidden_act", "silu")
    require(act == "silu", f"{where}: hidden_act {act!r} (ours: silu)")


def check_aux(ids: list[int] | None, info: TargetInfo, where: str) -> list[int] | None:
    """The target layers the checkpoint reads: None where they are ours (the run's caches
    hold them), else the three it names, each a layer the target has."""
    n, ours = target_layers(info), aux_layer_ids(info)
    if ids is None or list(ids) == ours:
        return None
    require(
        # inputs of decoder layers 0..n-1: what vLLM and SGLang can capture (n, the final
        # normed state, is neither)
        len(ids) == 3 and (n is None or all(0 <= int(i) < n for i in ids)),
        f"{where}: reads target layers {ids}, not three of the target's 0..{n - 1 if n else n}",
    )
    return [int(i) for i in ids]


def draft_from_tensors(
    tensors: dict[str, torch.Tensor],
    prefix: str,
    info: TargetInfo,
    intermediate: int,
    where: str,
    aux: list[int] | None = None,
) -> Draft:
    """Our ``eagle3`` from a checkpoint's tensors (layer under ``prefix``; ``aux``: the target
    layers it reads where they are not ours)."""
    missing = [n for n in TOP_NAMES if n not in tensors]
    missing += [prefix + n for n in LAYER_NAMES if prefix + n not in tensors]
    require(not missing, f"{where}: missing tensors {missing}")
    extra = sorted(
        n for n in tensors if n.startswith(prefix) and n.removeprefix(prefix) not in LAYER_NAMES
    )
    require(not extra, f"{where}: tensors our layer does not have: {extra}")
    if "d2t" in tensors:
        ckpt_d2t = tensors["d2t"].long() + torch.arange(tensors["d2t"].numel())
    else:  # no map: the draft drafts over the whole target vocabulary
        ckpt_d2t = torch.arange(tensors["lm_head.weight"].shape[0])
    rows = reorder_rows(ckpt_d2t, info, where)
    emb = tensors.get("embed_tokens.weight")
    if emb is not None:
        target = info.embed_tokens.detach().float().cpu()
        err = (emb.float() - target).abs().max().item() if emb.shape == target.shape else None
        require(
            err is not None and err <= 1e-2 * max(target.abs().max().item(), 1e-6),
            f"{where}: its embed_tokens is not the target's embedding (ours is frozen to the "
            f"target's; max |Δ| = {err})",
        )
    draft = build_draft("eagle3", info, intermediate_size=intermediate, aux_layers=aux)
    state = {n: tensors[n] for n in TOP_NAMES}
    state["lm_head.weight"] = state["lm_head.weight"][rows]
    state.update({n: tensors[prefix + n] for n in LAYER_NAMES})
    draft.load_state_dict({k: v.float() for k, v in state.items()})
    return draft


def load_speculators(path: str | Path, info: TargetInfo) -> Draft:
    """A speculators ``eagle3`` checkpoint as our ``eagle3`` (or a refusal naming why not)."""
    cfg, tensors = read_checkpoint(path)
    where = f"speculators checkpoint {path}"
    kind = cfg.get("speculators_model_type")
    require(kind == "eagle3", f"{where}: speculators_model_type {kind!r}, not 'eagle3'")
    layer = cfg.get("transformer_layer_config") or {}
    check_layer(layer, info, where)
    for flag in ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output"):
        require(not cfg.get(flag, False), f"{where}: {flag} = true (our eagle3 has none of it)")
    hidden = cfg.get("target_hidden_size") or info.hidden_size
    require(hidden == info.hidden_size, f"{where}: target_hidden_size {hidden}")
    aux = check_aux(cfg.get("eagle_aux_hidden_state_layer_ids"), info, where)
    inter = int(layer.get("intermediate_size", info.intermediate_size))
    return draft_from_tensors(tensors, LAYER["speculators"], info, inter, where, aux)


def load_sglang(path: str | Path, info: TargetInfo) -> Draft:
    """A SpecForge / SGLang ``LlamaForCausalLMEagle3`` checkpoint as our ``eagle3``."""
    cfg, tensors = read_checkpoint(path)
    where = f"SGLang EAGLE-3 checkpoint {path}"
    arch = (cfg.get("architectures") or [""])[0]
    require(arch == "LlamaForCausalLMEagle3", f"{where}: architecture {arch!r}")
    check_layer(cfg, info, where)
    require(cfg.get("norm_output", True), f"{where}: norm_output = false (no final norm)")
    require(not cfg.get("fc_norm", False), f"{where}: fc_norm = true (ours has none)")
    hidden = cfg.get("target_hidden_size") or info.hidden_size
    require(hidden == info.hidden_size, f"{where}: target_hidden_size {hidden}")
    eagle = cfg.get("eagle_config") or {}
    ids = eagle.get("eagle_aux_hidden_state_layer_ids")
    aux = check_aux(None if ids is None else [int(i) + 1 for i in ids], info, where)
    inter = int(cfg.get("intermediate_size", info.intermediate_size))
    try:
        return draft_from_tensors(tensors, LAYER["sglang"], info, inter, where, aux)
    except KeyError as err:  # pragma: no cover - names checked above
        raise FormatError(f"{where}: missing {err}") from None


def offsets_vocab(tensors: dict[str, torch.Tensor], vocab_size: int) -> torch.Tensor:
    """The target ids of an EAGLE-3 checkpoint's draft vocabulary (``d2t`` holds offsets;
    a full-vocabulary checkpoint has none: its head's rows are the target's ids)."""
    if "d2t" not in tensors:
        return torch.arange(tensors["lm_head.weight"].shape[0])
    return tensors["d2t"].long() + torch.arange(tensors["d2t"].numel())


# -- export (each registered with its reader) ---------------------------------------------


@register_format(
    "eagle3",
    "speculators",
    load=load_speculators,
    vocab=offsets_vocab,
    loaded_by='`vllm serve --speculative-config \'{"method": "eagle3", "model": OUT}\'`; '
    "speculators `Eagle3DraftModel`",
    verified="served by vLLM 0.32 on CPU (`pytest -m served`, `eval.served`); speculators 0.9.0 "
    "`Eagle3DraftModel.from_pretrained`: max \\|Δ\\| = 0 (export), 0 "
    "(its own checkpoint → `load_external`); with Llama-3.1's `llama3` RoPE scaling: 0 and 0",
)
def export_speculators(draft: Draft, info: TargetInfo, out: Path, verifier: str, k: int) -> Path:
    """speculators 0.9.0 ``Eagle3SpeculatorConfig`` + weights (``vllm serve`` loads it)."""
    cfg = hf_config(info)
    config = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": "0.9.0",
        "transformer_layer_config": layer_config(info, draft.hparams["intermediate_size"]),
        "draft_vocab_size": info.draft_vocab_size,
        "norm_before_residual": False,
        "norm_before_fc": False,
        "fc_norm": False,
        "norm_output": False,
        "embed_requires_grad": False,
        "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": draft.aux_layers or aux_layer_ids(info),
        "torch_dtype": "float32",
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": k}],
            "default_proposal_method": "greedy",
            "verifier": {
                "name_or_path": verifier,
                "architectures": list(getattr(cfg, "architectures", None) or []),
            },
        },
    }
    return write_checkpoint(out, config, tensors_out(draft, info, "speculators"))


@register_format(
    "eagle3",
    "sglang",
    load=load_sglang,
    vocab=offsets_vocab,
    loaded_by="SGLang `--speculative-algorithm EAGLE3 --speculative-draft-model-path OUT`; "
    "SpecForge `LlamaForCausalLMEagle3`",
    verified="SpecForge 0.2.0 `LlamaForCausalLMEagle3`: max \\|Δ\\| = 1.7e-6 (export), 1.2e-7 "
    "(its own checkpoint → `load_external`); with `llama3` scaling: 1.6e-6 and 1.8e-7; "
    "float32, \\|logits\\| ≤ 7",
)
def export_sglang(draft: Draft, info: TargetInfo, out: Path, verifier: str, k: int) -> Path:
    """SpecForge's ``LlamaForCausalLMEagle3`` config (a Llama config + ``draft_vocab_size``)
    and weights: what SGLang's ``--speculative-algorithm EAGLE3`` loads."""
    config = layer_config(info, draft.hparams["intermediate_size"])
    config.update(
        architectures=["LlamaForCausalLMEagle3"],
        draft_vocab_size=info.draft_vocab_size,
        target_hidden_size=info.hidden_size,
        eagle_config={"eagle_aux_hidden_state_layer_ids": sglang_layer_ids(draft, info)},
        torch_dtype="float32",
    )
    return write_checkpoint(out, config, tensors_out(draft, info, "sglang"))
