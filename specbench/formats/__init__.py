"""Drafts in and out of the checkpoint formats that serving engines and peer trainers load.

:func:`export_draft` writes a trained draft in a peer's format; :func:`load_external` reads a
peer's checkpoint into specbench's own :class:`~specbench.drafts.Draft` (evaluated like a
trained one), or refuses with the difference named. CLI: ``python -m specbench.formats``.

Formats (arch × format; ``tests/test_interop.py`` checks each with the peer's own code)
--------------------------------------------------------------------------------------

============== ============ ============================================== ===================
arch           format       what loads it                                  direction
============== ============ ============================================== ===================
eagle3         speculators  speculators 0.9.0 ``Eagle3DraftModel``;        export and import
                            ``vllm serve --speculative-config
                            '{"method": "eagle3", "model": OUT}'``
eagle3         sglang       SpecForge 0.2.0 ``LlamaForCausalLMEagle3``;    export and import
                            SGLang ``--speculative-algorithm EAGLE3``
mlp_speculator vllm         vLLM ``method: mlp_speculator`` (IBM           export and import,
                            fms-extras ``MLPSpeculatorPreTrainedModel``)    full vocabulary only
medusa         vllm         vLLM ``method: medusa`` (``MedusaConfig``,     export and import
                            ``token_map`` for a truncated vocabulary)
mtp            mtp          the target checkpoint itself (DeepSeek-V3      export
                            layer 61); vLLM ``method: deepseek_mtp``
block_diffusion —           none (see ``NOT_AVAILABLE``)                   —
============== ============ ============================================== ===================

Name mappings (ours → theirs)
-----------------------------

specbench ``eagle3`` → speculators (``<layer>`` = ``layers.0.``) / SGLang (``midlayer.``):

- ``fc``, ``norm``, ``lm_head`` → the same names (``lm_head`` rows in draft-id order);
- ``input_layernorm`` (on the embedding), ``hidden_norm``, ``self_attn.{q,k,v,o}_proj``
  (q/k/v read 2d), ``post_attention_layernorm``, ``mlp.*`` → ``<layer>`` + the same name;
- the target embedding (a frozen buffer we never save) → ``embed_tokens.weight`` (written;
  on import it must equal the target's);
- ``draft_to_target`` (target ids) → ``d2t`` = target id − draft id (offsets), ``t2d`` a
  boolean mask over the target vocabulary;
- low/mid/high features = transformers' ``hidden_states[2, L/2, L−3]`` →
  ``eagle_aux_hidden_state_layer_ids`` (speculators) or
  ``eagle_config.eagle_aux_hidden_state_layer_ids`` (SGLang), the same numbers;
- layer geometry (the target's width, heads, ``head_dim``, ε; our ``intermediate_size``) →
  ``transformer_layer_config`` (speculators) or the top-level Llama config (SGLang), with
  ``num_hidden_layers`` 1;
- the target's RoPE (``TargetInfo.rope_parameters``: θ and any llama3 / yarn / linear
  scaling, which our layer uses) → ``rope_parameters`` (transformers 5) and ``rope_theta`` +
  ``rope_scaling`` (transformers 4 readers: vLLM, SGLang), as SpecForge copies the target's.

=================================== ==========================================================
specbench ``mlp_speculator``         vLLM / fms-extras
=================================== ==========================================================
``emb.i`` ([V_draft + 1, inner])     ``emb.i`` ([V, inner]); our extra off-vocabulary row dropped
``proj.i``, ``head.i``, ``ln.i.*``   same names (tied: stored once, ``proj.0``/``proj.1``)
``ln0`` (``scale_input``)            ``ln0`` (no parameters)
``LN(w_s·P s + w_e·√(inner/2)·E y)`` ``LN(P s + (w_e·√(inner/2)/w_s)·E y)``: equal (LN is
                                     scale-invariant) up to ε / w_s² ≈ 1e-6 relative
=================================== ==========================================================

=================================== ==========================================================
specbench ``medusa``                 vLLM
=================================== ==========================================================
``blocks.i.j.linear.{weight,bias}``  ``blocks.i.layers.j.{weight,bias}`` (``medusa_fc_bias``)
``heads.i``                          ``lm_heads.i``
``draft_to_target``                  ``token_map`` (absent for the full vocabulary)
=================================== ==========================================================

``mtp`` → ``model.layers.{N}.``: see :mod:`specbench.formats.mtp` (the inverse of
:mod:`specbench.drafts.mtp_import`).

Differences refused on import (each raises :class:`FormatError` naming it)
---------------------------------------------------------------------------
- EAGLE-3: another RoPE than the target's (type, θ, or scaling parameters that change the
  inverse frequencies or yarn's attention factor; the refusal names the keys), another ε,
  width, head count or ``head_dim`` than the target's; more than one layer; a Qwen3 layer
  (q/k norms); biases; speculators' ``norm_before_residual``, ``norm_before_fc``, ``fc_norm``,
  ``norm_output`` (recycles the normed state); SGLang's ``norm_output: false`` (no final norm);
  other target layers than our cache's; a trained ``embed_tokens``.
- Vocabulary, every format: the run's draft vocabulary must hold the same target tokens as
  the checkpoint's (rows are reordered exactly); otherwise it is evaluated over its own
  vocabulary (``external_drafts: vocab: own``, the default, with caches of its own).
- MLP speculator: the format has no vocabulary map, so both directions need a full-vocabulary
  draft; a truncated one is refused (a bias-free head row cannot give −∞).
- MEDUSA: ``original_lm_head`` (one head shared by every step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from specbench.drafts import Draft
from specbench.formats import eagle3, medusa, mlp_speculator, mtp
from specbench.formats.common import FormatError, read_checkpoint
from specbench.targets.info import TargetInfo

Exporter = Callable[[Draft, TargetInfo, Path, str, int], Path]
EXPORTERS: dict[tuple[str, str], Exporter] = {
    ("eagle3", "speculators"): eagle3.export_speculators,
    ("eagle3", "sglang"): eagle3.export_sglang,
    ("mlp_speculator", "vllm"): mlp_speculator.export_vllm,
    ("medusa", "vllm"): medusa.export_vllm,
    ("mtp", "mtp"): mtp.export_mtp,
}
FORMATS = sorted({fmt for _, fmt in EXPORTERS})
# formats that can be read back, and the architecture each holds
IMPORT_ARCHS: dict[str, tuple[str, ...]] = {
    "speculators": ("eagle3",),
    "sglang": ("eagle3",),
    "vllm": ("medusa", "mlp_speculator"),
}
# (arch, format) pairs people ask for that no engine or reference loads, and why
NOT_AVAILABLE: dict[tuple[str, str], str] = {
    ("mlp_speculator", "speculators"): (
        "speculators 0.9.0 defines no MLP-speculator model (it has eagle3, mtp, dflash, "
        "dflash2, dspark, peagle, xpress); vLLM's method=mlp_speculator loads IBM fms-extras' "
        "format: use --format vllm"
    ),
    ("medusa", "speculators"): (
        "speculators 0.9.0 defines no MEDUSA model; vLLM's method=medusa loads its own "
        "MEDUSA format: use --format vllm"
    ),
    ("medusa", "sglang"): "SGLang serves no MEDUSA drafts; vLLM does: use --format vllm",
    ("block_diffusion", "*"): (
        "no format is implemented for the block drafter, and no engine or reference loads it "
        "as it is: DFlash checkpoints (z-lab DFlash, SpecForge 0.2.0 DFlashDraftModel, "
        "speculators 'dflash', which vLLM and SGLang serve) read one target layer per draft "
        "layer as context and embed MASK with the target's frozen embedding of a mask token; "
        "specbench's block drafter fuses four cached target layers into one context and "
        "learns its MASK vector, so no renaming gives the same model"
    ),
}


def supported(arch: str) -> list[str]:
    """The formats ``arch`` can be exported to."""
    return sorted(fmt for a, fmt in EXPORTERS if a == arch)


def check_pair(arch: str, fmt: str) -> None:
    """Raise a :class:`FormatError` naming the valid choices unless ``arch`` exports to ``fmt``."""
    if (arch, fmt) in EXPORTERS:
        return
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; valid: {FORMATS}")
    why = NOT_AVAILABLE.get((arch, fmt)) or NOT_AVAILABLE.get((arch, "*"))
    valid = supported(arch) or "none"
    raise FormatError(
        f"{arch} cannot be written as {fmt!r}: {why or 'no such format'}; "
        f"{arch} exports to: {valid}"
    )


def export_draft(
    draft: Draft, info: TargetInfo, out_dir: str | Path, fmt: str, verifier: str = "", k: int = 6
) -> Path:
    """Write ``draft`` (trained against ``info``) in format ``fmt`` to ``out_dir``, atomically.

    ``verifier`` is the target's hub id or folder (recorded where the format has a field for
    it); ``k`` the number of speculative tokens recorded where the format asks for one.
    """
    check_pair(draft.arch, fmt)
    return EXPORTERS[(draft.arch, fmt)](draft, info, Path(out_dir), verifier, k)


def external_arch(fmt: str, path: str | Path) -> str:
    """The architecture a checkpoint of format ``fmt`` holds (reads its config.json)."""
    if fmt not in IMPORT_ARCHS:
        raise FormatError(f"cannot read format {fmt!r}; readable: {sorted(IMPORT_ARCHS)}")
    archs = IMPORT_ARCHS[fmt]
    if len(archs) == 1:
        return archs[0]
    kind = read_checkpoint(path)[0].get("model_type")
    if kind not in archs:
        raise FormatError(f"{path}: model_type {kind!r}; a {fmt} checkpoint holds one of {archs}")
    return kind


def external_vocab(fmt: str, path: str | Path, vocab_size: int) -> torch.Tensor:
    """The target ids of a checkpoint's draft vocabulary (sorted), so a run can adopt it."""
    _, tensors = read_checkpoint(path)
    if "d2t" in tensors:  # EAGLE-3 offsets
        ids = tensors["d2t"].long() + torch.arange(tensors["d2t"].numel())
    elif "token_map" in tensors:  # vLLM MEDUSA
        ids = tensors["token_map"].long()
    else:  # no map: the whole target vocabulary
        ids = torch.arange(vocab_size)
    return ids.sort().values


def load_external(fmt: str, path: str | Path, info: TargetInfo) -> Draft:
    """A peer's checkpoint (folder or hub id) as specbench's own draft, or a refusal.

    ``info`` describes the target the checkpoint drafts for, with the run's draft vocabulary.
    """
    arch = external_arch(fmt, path)
    loaders = {
        ("speculators", "eagle3"): eagle3.load_speculators,
        ("sglang", "eagle3"): eagle3.load_sglang,
        ("vllm", "medusa"): medusa.load_vllm,
        ("vllm", "mlp_speculator"): mlp_speculator.load_vllm,
    }
    return loaders[(fmt, arch)](path, info)


__all__ = [
    "EXPORTERS",
    "FORMATS",
    "FormatError",
    "check_pair",
    "export_draft",
    "external_arch",
    "external_vocab",
    "load_external",
    "supported",
]
