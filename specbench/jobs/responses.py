"""Stage ``responses``: the target regenerates the responses of one (split, domain).

How each split samples is the table :data:`specbench.data.splits.SPLITS`: T=1 for ``train``
and ``eval_t1``; greedy through EOS for ``eval_t0`` (T=0 replay verifies drafts past the end
of the response, so the continuation is kept as look-ahead). The sampling seed derives from
the (split, domain) names.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from specbench.data.generate import chat_prompt_ids, generate_responses, split_at_eos, write_jsonl
from specbench.data.splits import SPLITS, name_seed
from specbench.dist import gather_to_rank0
from specbench.io import progress
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.loading import load_tokenizer


def run(job: Job) -> None:
    ctx = start(job)
    cfg, wc, out = ctx.cfg, job.wildcards, job.output["responses"]
    prompts = json.loads(Path(job.input["prompts"]).read_text())
    split = SPLITS[wc["split"]]
    prompts = prompts[split.prompts]
    tok = load_tokenizer(job.params["model"])
    model = ctx.target()
    ids = [chat_prompt_ids(tok, p, cfg.data.max_prompt_tokens) for p in prompts]
    temperature = cfg.data.train_temperature if split.temperature is None else split.temperature
    new_tokens = cfg.data.train_new_tokens if split.is_train else cfg.data.eval_new_tokens
    t0 = time.time()
    mine = generate_responses(
        model,
        tok,
        ids,
        new_tokens,
        temperature,
        seed=name_seed(split.name, wc["domain"]),
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
    rows = []
    for i, (p, resp) in enumerate(zip(ids, responses, strict=True)):
        response, lookahead = split_at_eos(resp, tok.eos_token_id)
        rows.append(
            {"prompt_index": i, "prompt_ids": p, "response_ids": response}
            | {"lookahead_ids": lookahead}
        )
    write_jsonl(out, rows)
    n = sum(len(r["response_ids"]) for r in rows)
    ctx.say(
        f"{len(rows)} responses, {n} response tokens, T={temperature}, {ctx.world} ranks, "
        f"{time.time() - t0:.0f}s"
    )
