"""The files that pass between stages: one typed record each, and the names of their paths.

Every stage that writes one of these files and every stage (or ``.smk`` file) that reads it
goes through this module, so a field is named once:

- ``responses/<split>/<domain>.jsonl``: one :class:`ResponseRow` a line (``responses``,
  ``train_completions``; read by ``draft_vocab``, the feature stages, online training);
- ``train_status.json`` beside a trained draft: :class:`TrainStatus` (the trainer; read by
  evaluation);
- ``metrics.json`` beside ``per_prompt.csv``: :class:`EvalMetrics` (``evaluate_draft``; read
  by aggregation);
- ``data/vocab/<target>/<vocabulary>.json``: the draft vocabulary (:func:`vocab_ids`);
- ``step`` in a group's checkpoint folder: :class:`GroupCheckpoint` (the trainer's resume);
- path names: a loss spec's folder (:func:`loss_slug`, and :func:`losses_by_slug` back), an
  external draft's loss label and folder, and :func:`draft_dir`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specbench.io import atomic_write_text

EXTERNAL_PREFIX = "external:"  # the loss label of a draft trained elsewhere: external:<name>
EXTERNAL_SLUG = "external-"  # its folder in place of a loss: external-<name>


def loss_slug(spec: str) -> str:
    """A path-safe name for a loss spec: ``lk_lambda(eta=10)`` → ``lk_lambda-eta10``;
    an external draft's ``external:<name>`` → ``external-<name>``."""
    if spec.startswith(EXTERNAL_PREFIX):
        return EXTERNAL_SLUG + spec.removeprefix(EXTERNAL_PREFIX)
    s = spec.replace("+", "__").replace("(", "-").replace(")", "").replace("=", "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s.replace(",", "_"))


def losses_by_slug(specs: Iterable[str]) -> dict[str, str]:
    """The inverse of :func:`loss_slug` over a run's loss specs (a folder's loss)."""
    found: dict[str, str] = {}
    for spec in specs:
        if found.setdefault(loss_slug(spec), spec) != spec:
            raise ValueError(f"losses {found[loss_slug(spec)]!r} and {spec!r} share a folder name")
    return found


def draft_dir(root: str, stage: str, target: str, arch: str, loss: str, seed: int) -> str:
    """``<root>/<stage>/<target>/<arch>/<loss slug>/seed<seed>``: a draft's folder in a stage
    (``drafts``, ``eval``, ``export``)."""
    return f"{root}/{stage}/{target}/{arch}/{loss_slug(loss)}/seed{seed}"


def vocab_ids(path: str | Path) -> list[int]:
    """The target ids of a draft-vocabulary file (draft id → target id)."""
    return json.loads(Path(path).read_text())["draft_to_target"]


def vocab_feature_layers(path: str | Path) -> tuple[int, ...] | None:
    """The target layers the caches of a vocabulary hold, where they are not the default
    (an external draft's own vocabulary, for a draft that reads other layers)."""
    layers = json.loads(Path(path).read_text()).get("feature_layers")
    return None if layers is None else tuple(layers)


@dataclass
class ResponseRow:
    """One target response: the prompt's tokens, the response's (through its first EOS) and,
    for the greedy split, what the target went on to generate after it."""

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    lookahead_ids: list[int] = field(default_factory=list)

    def to_line(self) -> str:
        return json.dumps(asdict(self)) + "\n"


def write_responses(path: str | Path, rows: Iterable[ResponseRow]) -> None:
    """A responses file, atomically."""
    atomic_write_text(path, "".join(r.to_line() for r in rows))


def iter_responses(path: str | Path) -> Iterator[ResponseRow]:
    """The rows of a responses file, one at a time (660k never sit in memory as dicts)."""
    with open(path) as lines:
        for line in lines:
            if line.strip():
                yield ResponseRow(**json.loads(line))


@dataclass(frozen=True)
class TrainStatus:
    """How a draft's training ended: ``complete``, or ``stopped`` (a non-finite loss or
    gradient) after ``steps`` steps, and why."""

    status: str
    steps: int
    reason: str | None = None

    FILE = "train_status.json"

    def write(self, folder: str | Path) -> None:
        record = {k: v for k, v in asdict(self).items() if v is not None}
        atomic_write_text(Path(folder) / self.FILE, json.dumps(record, indent=1))

    @classmethod
    def label_of(cls, folder: str | Path) -> str:
        """``complete``; ``stopped: <why>``; ``external`` for a draft trained elsewhere
        (its folder has no status file)."""
        path = Path(folder) / cls.FILE
        if not path.is_file():
            return "external"
        s = cls(**json.loads(path.read_text()))
        return s.status if s.status == "complete" else f"stopped: {s.reason}"


@dataclass
class EvalMetrics:
    """``metrics.json``: what one evaluated draft is, beside its per-prompt sums."""

    target: str
    draft_arch: str
    loss: str
    seed: int
    k_eval: int
    draft_params: int  # all of the draft's own parameters, frozen ones too
    trainable_params: int
    cost_ratio: float  # draft FLOPs per step / target FLOPs per token
    cells: list[dict[str, Any]]  # {domain, temperature} evaluated
    train_status: str = "complete"  # TrainStatus.label_of the draft's folder

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, path: str | Path) -> EvalMetrics:
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class GroupCheckpoint:
    """The ``step`` record of a group's checkpoint folder: the step its drafts were saved
    at, and the fingerprint of the run they belong to."""

    step: int
    fingerprint: dict[str, Any]

    def write(self, folder: str | Path) -> None:
        atomic_write_text(Path(folder) / "step", json.dumps(asdict(self)))

    @classmethod
    def read(cls, folder: str | Path) -> GroupCheckpoint | None:
        path = Path(folder) / "step"
        return cls(**json.loads(path.read_text())) if path.is_file() else None
