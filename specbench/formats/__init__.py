"""Drafts in and out of the checkpoint formats that serving engines and peer trainers load.

:func:`export_draft` writes a trained draft in a peer's format; :func:`load_external` reads a
peer's checkpoint into specbench's own :class:`~specbench.drafts.Draft` (evaluated like a
trained one), or refuses with the difference named. CLI: ``python -m specbench.formats``.

Formats register themselves: one ``@register_format(arch, format, load=..., vocab=...)`` per
pair on its exporter in ``formats/<arch>.py`` (modules are discovered), and
:func:`~specbench.formats.registry.refuse_format` for a pair people ask for that no engine
loads. The README's formats table is :func:`~specbench.formats.registry.formats_markdown`
(``tests/test_interop.py`` checks each pair with the peer's own code).

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
  ``eagle_aux_hidden_state_layer_ids`` (speculators; vLLM reads layer i's input) =
  ``[2, L/2, L−3]``, or ``eagle_config.eagle_aux_hidden_state_layer_ids`` (SGLang, which
  captures layer id + 1's input) = ``[1, L/2−1, L−4]``, SpecForge's default;
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
  a trained ``embed_tokens``. Other auxiliary target layers than ours import (the draft's
  ``aux_layers``; its own vocabulary file names them, and its caches are made at them);
  over the run's vocabulary, whose caches hold ours, ``import_draft`` refuses it.
- Vocabulary, every format: the run's draft vocabulary must hold the same target tokens as
  the checkpoint's (rows are reordered exactly); otherwise it is evaluated over its own
  vocabulary (``external_drafts: vocab: own``, the default, with caches of its own).
- MLP speculator: the format has no vocabulary map, so both directions need a full-vocabulary
  draft; a truncated one is refused (a bias-free head row cannot give −∞).
- MEDUSA: ``original_lm_head`` (one head shared by every step).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import torch

from specbench.drafts import Draft
from specbench.formats.common import FormatError, read_checkpoint
from specbench.formats.registry import REGISTRY, Format, formats_markdown
from specbench.targets.info import TargetInfo

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "__main__"):
    importlib.import_module(f"{__name__}.{_module}")


def exportable() -> list[str]:
    """Every format some architecture exports to."""
    return sorted({f.name for f in REGISTRY.values() if f.export})


def import_archs() -> dict[str, tuple[str, ...]]:
    """The formats that can be read back, and the architectures each holds."""
    readable = sorted({f.name for f in REGISTRY.values() if f.load})
    return {
        name: tuple(sorted(f.arch for f in REGISTRY.values() if f.load and f.name == name))
        for name in readable
    }


# what the config's types and the workflow's wildcards name (every module is registered now)
FORMATS = exportable()
IMPORT_ARCHS = import_archs()


def supported(arch: str) -> list[str]:
    """The formats ``arch`` can be exported to."""
    return sorted(f.name for f in REGISTRY.values() if f.arch == arch and f.export)


def check_pair(arch: str, fmt: str) -> None:
    """Raise a :class:`FormatError` naming the valid choices unless ``arch`` exports to ``fmt``."""
    if fmt in supported(arch):
        return
    if fmt not in exportable():
        raise FormatError(f"unknown format {fmt!r}; valid: {exportable()}")
    refusal = REGISTRY.get((arch, fmt)) or REGISTRY.get((arch, "*"))
    why = refusal.refused if refusal else "no such format"
    valid = supported(arch) or "none"
    raise FormatError(f"{arch} cannot be written as {fmt!r}: {why}; {arch} exports to: {valid}")


def export_draft(
    draft: Draft, info: TargetInfo, out_dir: str | Path, fmt: str, verifier: str = "", k: int = 6
) -> Path:
    """Write ``draft`` (trained against ``info``) in format ``fmt`` to ``out_dir``, atomically.

    ``verifier`` is the target's hub id or folder (recorded where the format has a field for
    it); ``k`` the number of speculative tokens recorded where the format asks for one.
    """
    check_pair(draft.arch, fmt)
    return REGISTRY[(draft.arch, fmt)].export(draft, info, Path(out_dir), verifier, k)


def _readable(fmt: str, path: str | Path) -> Format:
    """The registered pair a checkpoint of format ``fmt`` is (reads its config.json)."""
    readable = import_archs()
    if fmt not in readable:
        raise FormatError(f"cannot read format {fmt!r}; readable: {sorted(readable)}")
    archs = readable[fmt]
    kind = archs[0] if len(archs) == 1 else read_checkpoint(path)[0].get("model_type")
    if kind not in archs:
        raise FormatError(f"{path}: model_type {kind!r}; a {fmt} checkpoint holds one of {archs}")
    return REGISTRY[(kind, fmt)]


def external_arch(fmt: str, path: str | Path) -> str:
    """The architecture a checkpoint of format ``fmt`` holds (reads its config.json)."""
    return _readable(fmt, path).arch


def external_vocab(fmt: str, path: str | Path, vocab_size: int) -> torch.Tensor:
    """The target ids of a checkpoint's draft vocabulary (sorted), so a run can adopt it."""
    reader = _readable(fmt, path).vocab
    return reader(read_checkpoint(path)[1], vocab_size).sort().values


def load_external(fmt: str, path: str | Path, info: TargetInfo) -> Draft:
    """A peer's checkpoint (folder or hub id) as specbench's own draft, or a refusal.

    ``info`` describes the target the checkpoint drafts for, with the run's draft vocabulary.
    """
    return _readable(fmt, path).load(path, info)


__all__ = [
    "FORMATS",
    "IMPORT_ARCHS",
    "FormatError",
    "check_pair",
    "export_draft",
    "external_arch",
    "external_vocab",
    "formats_markdown",
    "load_external",
    "supported",
]
