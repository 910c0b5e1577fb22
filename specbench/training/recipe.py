"""The training recipe of one matrix cell: build the draft, train it on the cache, save it.

Reads top to bottom: the cache gives the draft vocabulary, the target checkpoint gives what
the draft may know of its target (config, embedding, head; the target itself never runs),
the seed fixes the draft's initialisation and the batch stream.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache
from specbench.io import atomic_write_text
from specbench.losses import build as build_loss
from specbench.targets.info import target_info_from_checkpoint
from specbench.training.config import TrainConfig
from specbench.training.trainer import train_draft


def train_cell(
    cache_path: str | Path,
    target_model: str,
    arch: str,
    hparams: dict[str, Any],
    loss: str,
    seed: int,
    train: TrainConfig,
    out_dir: str | Path,
    device: torch.device | str | None = None,
    log=print,
    data_fraction: float = 1.0,
) -> list[dict]:
    """Train ``arch`` with ``loss`` and ``seed``; write ``train_log.csv`` and the draft.

    ``data_fraction`` < 1 trains on a share of the cached sequences (:func:`data_subset`).

    ``model.safetensors`` is written last, so its presence marks a complete draft (a run
    killed midway leaves none and Snakemake reruns the cell).
    """
    cache = FeatureCache(cache_path)
    info = target_info_from_checkpoint(target_model, cache.draft_to_target)
    torch.manual_seed(seed)
    draft = build_draft(arch, info, **hparams)
    log(f"{arch} ({draft.num_trainable_parameters():,} trainable params) loss={loss} seed={seed}")
    log(f"cache: {len(cache)} sequences, {cache.num_positions} positions, device {device}")
    sequences = None if data_fraction >= 1 else data_subset(len(cache), data_fraction)
    if sequences is not None:
        log(f"training on {len(sequences)} of {len(cache)} sequences ({data_fraction:g})")
    t0 = time.time()
    records = train_draft(
        draft, build_loss(loss), cache, train, seed, log=log, device=device, sequences=sequences
    )
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "train_log.csv", pd.DataFrame(records).to_csv(index=False))
    draft.save(out_dir)
    log(f"trained in {time.time() - t0:.0f}s")
    return records


def data_subset(n: int, fraction: float) -> list[int]:
    """The first ``ceil(fraction·n)`` of one fixed permutation of ``n`` sequences.

    The permutation does not depend on the fraction, so smaller subsets are nested in larger
    ones, and it mixes the domains (the training cache holds them one after another).
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return sorted(order[: max(1, math.ceil(fraction * n))].tolist())
