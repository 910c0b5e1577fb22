"""(architecture, format) pairs by name: one ``@register_format`` per pair in its
``formats/<arch>.py``.

The decorator goes on the pair's exporter and names its loader (none: export only) and
vocabulary reader, with what loads it and how the tests verify it: the README's formats
table is :func:`formats_markdown`. :func:`refuse_format` records a pair people ask for that
no engine loads, and why; the error says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from specbench.drafts import Draft
from specbench.targets.info import TargetInfo

Exporter = Callable[[Draft, TargetInfo, Path, str, int], Path]
Loader = Callable[[str | Path, TargetInfo], Draft]
# (the checkpoint's tensors, the target's vocabulary size) -> target ids of its draft vocabulary
VocabReader = Callable[[dict[str, torch.Tensor], int], torch.Tensor]


def full_vocab(tensors: dict[str, torch.Tensor], vocab_size: int) -> torch.Tensor:
    """A format without a vocabulary map: the draft proposes the whole target vocabulary."""
    return torch.arange(vocab_size)


@dataclass(frozen=True)
class Format:
    """One (architecture, format) pair: how it is written, read, and what loads it."""

    arch: str
    name: str  # "*" for a refusal of every format
    export: Exporter | None = None
    load: Loader | None = None
    vocab: VocabReader = full_vocab
    loaded_by: str = ""  # what loads it (the README's table)
    verified: str = "—"  # what the tests compare it with (the README's table)
    refused: str = ""  # why no engine or reference loads this pair


REGISTRY: dict[tuple[str, str], Format] = {}


def _add(fmt: Format) -> Format:
    if (fmt.arch, fmt.name) in REGISTRY:
        raise ValueError(f"format {fmt.name!r} of {fmt.arch} is registered twice")
    REGISTRY[(fmt.arch, fmt.name)] = fmt
    return fmt


def register_format(
    arch: str,
    name: str,
    *,
    loaded_by: str,
    load: Loader | None = None,
    vocab: VocabReader = full_vocab,
    verified: str = "—",
) -> Callable[[Exporter], Exporter]:
    """Decorate the exporter of ``arch`` in format ``name``: registers it with its ``load``er
    and ``vocab`` reader."""

    def add(export: Exporter) -> Exporter:
        _add(Format(arch, name, export, load, vocab, loaded_by, verified))
        return export

    return add


def refuse_format(arch: str, name: str, why: str, loaded_by: str = "") -> None:
    """Record that ``arch`` has no format ``name`` (``"*"``: none at all), and why; a
    ``loaded_by`` puts the refusal in the README's table."""
    _add(Format(arch, name, refused=why, loaded_by=loaded_by))


def formats_markdown() -> str:
    """The README's formats table: every exportable pair, then the architectures with none."""
    rows = [f for f in REGISTRY.values() if f.export]
    rows += [f for f in REGISTRY.values() if f.name == "*" and f.loaded_by]
    lines = [
        "| arch | `--format` | what loads it | verified with (logits vs specbench's forward, "
        "same inputs) |",
        "|---|---|---|---|",
    ]
    for f in rows:
        name = "—" if f.name == "*" else f"`{f.name}`"
        lines.append(f"| `{f.arch}` | {name} | {f.loaded_by} | {f.verified} |")
    return "\n".join(lines) + "\n"
