"""Stages ``features_train`` / ``features_eval``: run the target once over a split, cache it.

``features_train`` merges every domain's training responses into one cache (the drafts
train on all domains); ``features_eval`` caches one (evaluation split, domain).

Each rank takes every ``world``-th batch of sequences (the batches are the ones a single
process would form, so the cache does not depend on the number of ranks); rank 0 gathers
the parts and writes one cache, atomically.

Under ``eval.prefix_kv`` the T=1 evaluation caches also get the target's KV rows (``kv``):
one more forward per sequence, unpadded; under ZeRO-3 every batch runs as many of them as
the largest batch has sequences, so the ranks stay in step (a short last batch, a filler).
"""

from __future__ import annotations

import time

import torch

from specbench.artifacts import vocab_feature_layers, vocab_ids
from specbench.config import Config
from specbench.dist import gather_to_rank0, lockstep_batches
from specbench.features.cache import concat_caches, read_sequences, save_cache
from specbench.io import progress
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.featurize import compute_features, compute_prefix_kv
from specbench.targets.runner import TargetRunner


def stores_prefix_kv(job: Job, cfg: Config) -> bool:
    """Whether this job's cache gets the target's KV rows: a ``features_eval`` job of the
    split :meth:`EvalConfig.prefix_kv_for` names (the T=1 one, under ``eval.prefix_kv``)."""
    return job.stage == "features_eval" and cfg.eval.prefix_kv_for(job.wildcards["split"])


def run(job: Job) -> None:
    ctx = start(job)
    out = job.output["cache"]
    d2t = torch.tensor(vocab_ids(job.input["vocab"]))
    seqs = read_sequences(job.input["responses"], merged=job.stage == "features_train")
    runner = TargetRunner(ctx.target(), vocab_feature_layers(job.input["vocab"]))
    size = ctx.cfg.data.feature_batch_size
    batches = list(enumerate(seqs[i : i + size] for i in range(0, len(seqs), size)))
    kv = stores_prefix_kv(job, ctx.cfg)
    # ZeRO-3 ranks: KV forwards per batch = sequences of the largest (the first), fillers too
    kv_forwards = len(batches[0][1]) if ctx.zero3 and ctx.world > 1 and batches else None
    t0 = time.time()
    mine = {}
    shares = lockstep_batches(batches, ctx.rank, ctx.world, pad=ctx.zero3)
    for n, ((bi, batch), real) in enumerate(shares):
        part = compute_features(runner, batch, d2t, batch_size=size)
        if kv:
            part["kv"] = compute_prefix_kv(runner, batch, forwards=kv_forwards)
        if real:  # a lockstep filler ran only to keep the ZeRO-3 ranks in step
            mine[bi] = part
        ctx.say(f"  rank 0: {progress(n + 1, len(shares), time.time() - t0, 'batches')}")
    parts = gather_to_rank0(mine, f"{out}.parts")
    if parts is None:
        return
    merged = {bi: part for p in parts for bi, part in p.items()}
    tensors = concat_caches([merged[bi] for bi, _ in batches])
    save_cache(tensors, out)
    n = int(tensors["input_ids"].numel())
    if kv:
        rows = tensors["kv"]  # [n, L, 2, H, D]
        mb = rows.numel() * rows.element_size() / 1e6
        ctx.say(f"prefix KV: {mb:.1f} MB, {tuple(rows.shape)} {rows.dtype} (eval.prefix_kv)")
    secs = time.time() - t0
    ctx.say(f"cached {len(seqs)} sequences, {n} positions, {ctx.world} ranks, {secs:.0f}s")
