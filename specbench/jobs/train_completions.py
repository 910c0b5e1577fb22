"""Stage ``train_completions``: a (target, domain)'s training responses from released completions.

Reads the target's ``train_completions`` source for the domain (:mod:`specbench.data.completions`)
instead of regenerating (no model, no GPU: the tokenizer only) and writes the rows the
``responses`` stage would, at the same path. At most the domain's training-prompt count of
rows is taken; the domain's evaluation prompts (from the ``prompts`` job) are kept out. The
log counts the rows read, taken and skipped, and why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from specbench.data.completions import CompletionStats, completion_rows
from specbench.io import atomic_write_lines
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.loading import load_tokenizer

PROGRESS_ROWS = 50_000


def run(job: Job) -> None:
    ctx = start(job)
    cfg, wc = ctx.cfg, job.wildcards
    source = cfg.completions(wc["target"], wc["domain"])
    if source is None:
        raise ValueError(f"targets.{wc['target']}.train_completions has no {wc['domain']!r}")
    n = cfg.data.train_prompts(wc["domain"])
    held_out = json.loads(Path(job.input["prompts"]).read_text())["eval"]
    tok = load_tokenizer(job.params["model"])
    ctx.say(f"{wc['domain']}: up to {n} training responses from {source.describe()}")
    stats, t0 = CompletionStats(), time.time()

    def lines():
        for row in completion_rows(
            source,
            tok,
            n,
            cfg.data.max_prompt_tokens,
            cfg.data.train_new_tokens,
            exclude=held_out,
            stats=stats,
        ):
            if row.prompt_index % PROGRESS_ROWS == 0 and row.prompt_index:
                ctx.say(f"  {row.prompt_index} rows, {time.time() - t0:.0f}s")
            yield row.to_line()

    kept = atomic_write_lines(job.output["responses"], lines())
    ctx.say(f"{stats.summary()} ({time.time() - t0:.0f}s)")
    if kept == 0:
        raise ValueError(f"{source.describe()}: no usable row ({stats.summary()})")
    if kept < n:
        ctx.say(f"took all {kept} usable rows, fewer than the {n} training prompts asked for")
