"""Stages ``responses`` and ``responses_shard``: the target regenerates the responses of one
(split, domain), or of one shard of its training prompts.

How each split samples is the table :data:`specbench.data.splits.SPLITS`: T=1 for ``train``
and ``eval_t1``; greedy through EOS for ``eval_t0`` (T=0 replay verifies drafts past the end
of the response, so the continuation is kept as look-ahead). The sampling seed derives from
the (split, domain) names.

Shard ``i`` (the ``{shard}`` wildcard; ``data.response_shard_prompts`` = S prompts per shard)
answers the training prompts ``[i·S, (i+1)·S)`` and numbers its rows with their global
``prompt_index``; ``responses_gather`` concatenates the shards. Its seed is
:func:`~specbench.data.splits.shard_seed`: the responses of a shard depend on its prompts, S,
``generation_batch_size`` and its index, not on the number of shards (raising the number of
training prompts leaves the existing shards' responses as they were), and one shard equals
the unsharded job. Changing S changes every response (the batches and seeds move), not
their distribution. An empty shard (fewer prompts than planned: eval overlap dropped, or a
source with ``allow_fewer``) writes an empty file without loading the target.

With ``targets.<name>.engine_generate: vllm`` the job is one process (not one rank per GPU):
vLLM answers all its prompts with tensor parallelism over the job's GPUs
(:mod:`specbench.serving.generate`): the same rows, prompts and EOS cut, each prompt sampled
with its own seed derived from the job's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from specbench.artifacts import ResponseRow, write_responses
from specbench.data.generate import chat_prompt_ids, generate_responses, split_at_eos
from specbench.data.splits import SPLITS, name_seed, shard_seed
from specbench.dist import gather_to_rank0
from specbench.io import atomic_write_text, progress
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.serving.generate import require_serve_venv, vllm_generate
from specbench.targets.loading import load_tokenizer


def run(job: Job) -> None:
    ctx = start(job)
    cfg, wc, out = ctx.cfg, job.wildcards, job.output["responses"]
    split = SPLITS[wc.get("split", "train")]  # responses_shard: the train split
    prompts = json.loads(Path(job.input["prompts"]).read_text())[split.prompts]
    offset, seed = 0, name_seed(split.name, wc["domain"])
    if "shard" in wc:
        shard, size = int(wc["shard"]), cfg.data.response_shard_prompts
        if size is None:
            raise ValueError("a responses_shard job needs data.response_shard_prompts")
        offset, seed = shard * size, shard_seed(split.name, wc["domain"], shard)
        prompts = prompts[offset : offset + size]
        if not prompts:
            if ctx.rank == 0:
                atomic_write_text(out, "")
            ctx.say(f"shard {shard}: no prompts from {offset} on (an empty file)")
            return
        ctx.say(f"shard {shard}: prompts {offset}..{offset + len(prompts) - 1}")
    target = ctx.target_config
    if target.engine_generate == "vllm":
        require_serve_venv()  # before anything loads: the fix is `make serve-env`
    tok = load_tokenizer(job.params["model"])
    ids = [chat_prompt_ids(tok, p, cfg.data.max_prompt_tokens) for p in prompts]
    temperature = cfg.data.train_temperature if split.temperature is None else split.temperature
    new_tokens = cfg.data.train_new_tokens if split.is_train else cfg.data.eval_new_tokens
    t0 = time.time()
    if target.engine_generate == "vllm":  # one process; vLLM's workers span the job's GPUs
        responses, answer = vllm_generate(
            job.params["model"], ids, new_tokens, temperature, seed, tok.eos_token_id,
            through_eos=split.through_eos, dtype=target.dtype, gpus=job.gpus,
            log=Path(job.log).with_suffix(".vllm.log") if job.log else None,
        )  # fmt: skip
        ctx.say(
            f"vLLM {answer.get('vllm_version')}: loaded in {answer.get('load_seconds', 0):.0f}s"
            f", generated in {answer.get('generate_seconds', 0):.0f}s on {job.gpus} GPUs"
        )
        write_rows(out, offset, ids, responses, tok.eos_token_id, ctx, temperature, t0)
        return
    model = ctx.target()
    mine = generate_responses(
        model,
        tok,
        ids,
        new_tokens,
        temperature,
        seed=seed,
        batch_size=cfg.data.generation_batch_size,
        through_eos=split.through_eos,  # T=0 replay verifies past EOS: keep the continuation
        progress=lambda done, total: ctx.say(
            f"  rank 0: {progress(done, total, time.time() - t0, 'prompts')}"
        ),
        shard=(ctx.rank, ctx.world),
        synced_gpus=ctx.zero3 and ctx.world > 1,
    )
    parts = gather_to_rank0(mine, f"{out}.parts")
    if parts is None:
        return
    responses = [next((p[i] for p in parts if p[i] is not None), None) for i in range(len(ids))]
    if None in responses:  # a bug in the sharding, never a user error: fail loudly
        raise RuntimeError(f"no rank generated prompt {responses.index(None)}")
    write_rows(out, offset, ids, responses, tok.eos_token_id, ctx, temperature, t0)


def write_rows(out, offset, ids, responses, eos, ctx, temperature, t0) -> None:
    """The responses file: one row per prompt, its response cut after the first EOS."""
    rows = [
        ResponseRow(offset + i, p, *split_at_eos(resp, eos))
        for i, (p, resp) in enumerate(zip(ids, responses, strict=True))
    ]
    write_responses(out, rows)
    n = sum(len(r.response_ids) for r in rows)
    ctx.say(
        f"{len(rows)} responses, {n} response tokens, T={temperature}, {ctx.world} ranks, "
        f"{time.time() - t0:.0f}s"
    )
