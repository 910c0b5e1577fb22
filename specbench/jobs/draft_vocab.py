"""Stage ``draft_vocab``: the truncated draft vocabulary from the training responses."""

from __future__ import annotations

import json

from specbench.data.generate import read_jsonl
from specbench.features.vocab import vocab_payload
from specbench.io import atomic_write_text
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.loading import load_tokenizer


def run(job: Job) -> None:
    ctx = start(job)
    responses = [r["response_ids"] for path in job.input["responses"] for r in read_jsonl(path)]
    eos = load_tokenizer(job.params["model"]).eos_token_id
    payload = vocab_payload(responses, ctx.cfg.data.draft_vocab_size, (eos,))
    atomic_write_text(job.output["vocab"], json.dumps(payload))
    ctx.say(
        f"draft vocab {payload['size']} tokens covers {payload['coverage']:.2%} "
        "of training response tokens"
    )
