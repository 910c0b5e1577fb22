"""Stages ``external_vocab``, ``import_draft`` and ``export_draft`` (:mod:`specbench.formats`).

An external draft (config ``external_drafts``) enters the matrix as a folder in
specbench's own format, ``results/drafts/<target>/<arch>/external-<name>/seed0/``, written
by ``import_draft`` with :func:`~specbench.formats.load_external` and ``Draft.save``: from
there on it is evaluated like a trained draft (expected, live/replayed and unbiased τ) and
lands in ``tau.csv`` with loss ``external:<name>``. ``external_vocab`` writes its own draft
vocabulary (``vocab: own``), over which its feature caches are built. ``export_draft``
writes a draft of the run in one peer format (or, where the format cannot hold it, a
``NOT_EXPORTED.txt`` that says why).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from specbench.artifacts import vocab_feature_layers, vocab_ids
from specbench.drafts import load_draft
from specbench.formats import FormatError, export_draft, external_vocab, load_external
from specbench.formats.common import target_layers
from specbench.io import atomic_dir, atomic_write_text
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.info import target_info_from_checkpoint
from specbench.targets.runner import feature_layer_indices


def _external(job: Job):
    cfg = start(job).cfg
    by_name = {e.name: e for e in cfg.external_drafts}
    return by_name[job.wildcards["name"]]


def _info(job: Job):
    vocab = torch.tensor(vocab_ids(job.input["vocab"]))
    return target_info_from_checkpoint(job.params["model"], vocab)


def write_vocab(job: Job) -> None:
    """The checkpoint's own draft vocabulary, in the draft-vocabulary file format."""
    ext = _external(job)
    from transformers import AutoConfig

    target = AutoConfig.from_pretrained(job.params["model"])
    ids = external_vocab(ext.format, ext.path, target.vocab_size)
    payload = {"draft_to_target": ids.tolist(), "size": ids.numel(), "source": ext.loss}
    # a draft that reads other target layers than the default: its caches are made at those
    draft = load_external(
        ext.format, ext.path, target_info_from_checkpoint(job.params["model"], ids)
    )
    layers = draft.target_layers(target.num_hidden_layers)
    if layers != feature_layer_indices(target.num_hidden_layers):
        payload["feature_layers"] = list(layers)
    atomic_write_text(job.output["vocab"], json.dumps(payload))
    print(f"{ext.loss}: its own draft vocabulary, {ids.numel()} tokens", flush=True)


def import_draft(job: Job) -> None:
    """Read the external checkpoint and save it as a specbench draft (origin recorded)."""
    ext, info = _external(job), _info(job)
    draft = load_external(ext.format, ext.path, info)
    n = target_layers(info)
    cached = vocab_feature_layers(job.input["vocab"]) or feature_layer_indices(n)
    if n is not None and draft.target_layers(n) != cached:
        raise FormatError(
            f"{ext.name} reads target layers {draft.target_layers(n)}, its caches hold {cached}: "
            "evaluate it over its own vocabulary (external_drafts: vocab: own), whose caches "
            "are made at its layers"
        )
    folder = Path(job.output["model"]).parent
    with atomic_dir(folder) as tmp:
        draft.save(tmp)
        origin = {"name": ext.name, "format": ext.format, "path": ext.path, "note": ext.note}
        (tmp / "origin.json").write_text(json.dumps(origin, indent=1))
    print(f"{ext.loss}: {ext.format} checkpoint {ext.path} → {folder}", flush=True)


def export(job: Job) -> None:
    """One draft of the run in one format; a format that cannot hold it says why."""
    start(job)
    info = _info(job)
    draft = load_draft(Path(job.input["draft"]).parent, info)
    fmt, out = job.wildcards["format"], Path(job.output["dir"])
    try:
        export_draft(draft, info, out, fmt, job.params["model"], job.params["k"])
    except FormatError as err:
        with atomic_dir(out) as tmp:
            (tmp / "NOT_EXPORTED.txt").write_text(f"{err}\n")
        print(f"not exported: {err}", flush=True)


def run(job: Job) -> None:
    {"external_vocab": write_vocab, "import_draft": import_draft, "export_draft": export}[
        job.stage
    ](job)
