"""Stage ``prompts``: a domain's disjoint train/eval prompt lists (offline or data.sources)."""

from __future__ import annotations

import json

from specbench.data.hub import domain_prompts
from specbench.io import atomic_write_text
from specbench.jobs import Job
from specbench.jobs.common import start


def run(job: Job) -> None:
    ctx = start(job)
    data, domain = ctx.cfg.data, job.wildcards["domain"]
    payload = domain_prompts(
        domain,
        data.train_prompts_per_domain,
        data.eval_prompts_per_domain,
        data.source(domain, "train"),
        data.source(domain, "eval"),
        log=ctx.say,
    )
    atomic_write_text(job.output["prompts"], json.dumps(payload, indent=1))
    ctx.say(f"{domain}: {len(payload['train'])} train, {len(payload['eval'])} eval prompts")
