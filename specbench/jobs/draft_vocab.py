"""Stage ``draft_vocab``: a draft vocabulary of the target (``truncated`` or ``full``).

``truncated``: the ``data.draft_vocab_size`` most frequent tokens of the training responses
(plus EOS), with the share of response tokens it covers; ``full``: every token of the
target's vocabulary (the identity map).
"""

from __future__ import annotations

import json

from transformers import AutoConfig

from specbench.artifacts import iter_responses
from specbench.features.vocab import full_vocab_payload, vocab_payload
from specbench.io import atomic_write_text
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.loading import load_tokenizer


def run(job: Job) -> None:
    ctx = start(job)
    if job.wildcards["vocab"] == "full":
        payload = full_vocab_payload(AutoConfig.from_pretrained(job.params["model"]).vocab_size)
    else:
        paths = job.input["responses"]
        responses = (r.response_ids for p in paths for r in iter_responses(p))  # streamed
        eos = load_tokenizer(job.params["model"]).eos_token_id
        payload = vocab_payload(responses, ctx.cfg.data.draft_vocab_size, (eos,))
    atomic_write_text(job.output["vocab"], json.dumps(payload))
    ctx.say(
        f"{job.wildcards['vocab']} draft vocab: {payload['size']} tokens, covering "
        f"{payload['coverage']:.2%} of the training response tokens"
    )
