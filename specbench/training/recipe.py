"""The training recipe: build a group of drafts, train them on one feature stream, save them.

Reads top to bottom: the source gives the draft vocabulary, the target checkpoint gives what
the drafts may know of their target (config, embedding, head), each draft's seed fixes its
initialisation and its random draws, and one batch stream (``train.data_seed``) feeds all.
A matrix cell (``train_draft``) is a group of one draft on the feature cache; an online group
job (``train_group``) is every (loss, seed) of an architecture on the running target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from specbench.dist import rank_and_world
from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache
from specbench.io import atomic_write_text
from specbench.losses import build as build_loss
from specbench.targets.info import TargetInfo
from specbench.targets.runner import feature_layer_indices
from specbench.training.config import TrainConfig
from specbench.training.trainer import FeatureSource, Member, make_member, train_group


@dataclass(frozen=True)
class Run:
    """One draft of a group: its loss spec, seed, and output folder."""

    loss: str
    seed: int
    out_dir: Path

    @property
    def name(self) -> str:
        return f"{self.loss}/seed{self.seed}"


def train_runs(
    source: FeatureSource,
    info: TargetInfo,
    arch: str,
    hparams: dict[str, Any],
    runs: list[Run],
    train: TrainConfig,
    *,
    device: torch.device | str | None = None,
    log=print,
    data_fraction: float = 1.0,
    checkpoint: str | Path | None = None,
) -> list[Member]:
    """Train ``arch`` once per run on ``source`` (``info``: the target, with the source's
    draft vocabulary); write each run's folder.

    On N ranks each builds, trains and writes its share of the runs (``runs[rank::N]``) and
    returns those members.

    ``data_fraction`` < 1 trains on a share of the sequences (:func:`data_subset`). Each
    folder gets ``train_log.csv``, ``train_status.json`` (complete, or stopped early and
    why), then the draft; its ``model.safetensors`` is written last, so its presence marks
    a complete folder (a job killed midway leaves none, and Snakemake reruns it).
    """
    device = torch.device(device or "cpu")
    rank, world = rank_and_world()
    if not torch.equal(info.draft_to_target.cpu(), source.draft_to_target.cpu()):
        raise ValueError("the target info's draft vocabulary is not the feature source's")
    mine = runs[rank::world]  # the drafts are spread over the ranks (trainer docstring)
    members, shared = [], {}  # shared: one device copy of the target's embedding per rank
    for run in mine:
        torch.manual_seed(run.seed)  # the draft's initialisation: the same alone or in a group
        draft = build_draft(arch, info, **hparams)
        layers = getattr(info.extra.get("hf_config"), "num_hidden_layers", None)
        if layers and draft.target_layers(layers) != feature_layer_indices(layers):
            raise ValueError(f"{arch} {hparams}: training features hold the default layers")
        loss_fn = build_loss(run.loss)
        members.append(make_member(run.name, draft, loss_fn, run.seed, train, device, shared))
    n = len(source)
    sequences = None if data_fraction >= 1 else data_subset(n, data_fraction)
    steps = train.steps_for(arch, n if sequences is None else len(sequences))
    params = f"{members[0].draft.num_trainable_parameters():,}" if members else "?"
    log(f"{arch} ({params} trainable params) × {len(runs)} drafts, {len(mine)} on rank 0")
    log(f"{n} sequences, {steps} steps of {train.batch_size}, {world} ranks, device {device}")
    if sequences is not None:
        log(f"training on {len(sequences)} of {n} sequences ({data_fraction:g})")
    t0 = time.time()
    train_group(members, source, train, steps, log, device, sequences, checkpoint)
    log(f"trained in {time.time() - t0:.0f}s")
    for run, m in zip(mine, members, strict=True):  # each rank writes the drafts it holds
        out = Path(run.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "train_log.csv", pd.DataFrame(m.records).to_csv(index=False))
        m.status.write(out)
        m.draft.save(out)
    if world > 1:
        dist.barrier()  # every draft of the group is written
    return members


def train_cell(
    cache: FeatureCache,
    info: TargetInfo,
    arch: str,
    hparams: dict[str, Any],
    loss: str,
    seed: int,
    train: TrainConfig,
    out_dir: str | Path,
    *,
    device: torch.device | str | None = None,
    log=print,
    data_fraction: float = 1.0,
) -> list[dict]:
    """One matrix cell: ``arch`` trained with ``loss`` and ``seed`` on the feature cache."""
    run = Run(loss, seed, Path(out_dir))
    log(f"cache: {len(cache)} sequences, {cache.num_positions} positions")
    members = train_runs(
        cache, info, arch, hparams, [run], train,
        device=device, log=log, data_fraction=data_fraction,
    )  # fmt: skip
    return members[0].records


def data_subset(n: int, fraction: float) -> list[int]:
    """The first ``ceil(fraction·n)`` of one fixed permutation of ``n`` sequences.

    The permutation does not depend on the fraction, so smaller subsets are nested in larger
    ones, and it mixes the domains (the training cache holds them one after another).
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return sorted(order[: max(1, math.ceil(fraction * n))].tolist())
