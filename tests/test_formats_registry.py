"""Formats register themselves: a new (architecture, format) pair is one decorated exporter
with its loader and vocabulary reader, and flows through ``export_draft``, ``external_vocab``
and ``load_external``; the README's table is the registry's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import tiny_llama

from specbench.drafts import build_draft, load_draft
from specbench.formats import (
    FORMATS,
    IMPORT_ARCHS,
    FormatError,
    export_draft,
    external_arch,
    external_vocab,
    formats_markdown,
    load_external,
)
from specbench.formats import registry as reg
from specbench.formats.common import write_checkpoint
from specbench.targets.info import target_info_from_model

ROOT = Path(__file__).resolve().parents[1]


def test_readme_formats_table_is_the_registrys():
    assert formats_markdown() in (ROOT / "README.md").read_text(), (
        "README's formats table is stale: python -m specbench.formats table"
    )


def test_the_config_and_the_workflow_name_the_registered_formats():
    from typing import get_args

    from specbench.config import ImportFormat

    readable = {"speculators", "sglang", "transformers", "vllm"}
    assert set(get_args(ImportFormat)) == set(IMPORT_ARCHS) == readable
    assert IMPORT_ARCHS["vllm"] == ("medusa", "mlp_speculator")
    assert IMPORT_ARCHS["transformers"] == ("draft_lm",)
    assert FORMATS == ["mtp", "sglang", "speculators", "transformers", "vllm"]


@pytest.fixture
def toy(monkeypatch):
    """A throwaway ``toy`` format for ``medusa``, registered for one test: our own state dict
    plus the draft vocabulary as ``ids``."""
    monkeypatch.setattr(reg, "REGISTRY", dict(reg.REGISTRY))
    monkeypatch.setattr("specbench.formats.REGISTRY", reg.REGISTRY)

    def load(path, info):
        return load_draft(Path(path) / "ours", info)

    def vocab(tensors, vocab_size):
        return tensors["ids"].flip(0)  # any order: external_vocab sorts

    @reg.register_format("medusa", "toy", load=load, vocab=vocab, loaded_by="nothing")
    def export(draft, info, out, verifier, k):
        write_checkpoint(out, {"k": k}, {"ids": info.draft_to_target})
        draft.save(Path(out) / "ours")
        return out

    return export


def test_a_registered_format_flows_through_export_vocab_and_import(toy, tmp_path):
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=64, hidden_size=32, layers=2)
    d2t = torch.arange(0, 64, 3)
    info = target_info_from_model(model, d2t)
    draft = build_draft("medusa", info, num_heads=2)
    out = export_draft(draft, info, tmp_path / "toy", "toy")
    assert external_arch("toy", out) == "medusa"
    assert torch.equal(external_vocab("toy", out, 64), d2t)
    back = load_external("toy", out, info)
    for name, value in draft.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert "| `medusa` | `toy` | nothing | — |" in formats_markdown()
    with pytest.raises(FormatError, match="eagle3 exports to: .*'speculators'"):
        export_draft(build_draft("eagle3", info), info, tmp_path / "x", "toy")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register_format("medusa", "toy", loaded_by="again")(toy)
