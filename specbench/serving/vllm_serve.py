"""Serve one exported draft with its target in vLLM's speculative decoding: JSON in, JSON out.

Run as a file by the serving venv's Python (``make serve-env``)::

    .venv-serve/bin/python specbench/serving/vllm_serve.py REQUEST.json ANSWER.json

It imports only vLLM and the standard library: vLLM pins another transformers than the
project's venv, so nothing of specbench is importable here. The request names the target
folder, the exported draft, vLLM's method, K, the draft sampling method, the prompts as token
ids, the new tokens per prompt, a seed and the temperatures to run (one engine, one
``generate`` per temperature). The answer holds, per temperature and prompt (and sample when
``samples`` > 1), the generated token ids and vLLM's own per-request spec-decode counters
(``per_request_spec_decode_metrics="detailed"``: accepted and drafted tokens of every
verification step), plus the engine-wide counters of ``LLM.get_metrics`` that run added.

A request with ``"mode": "generate"`` is plain generation instead (no draft; the ``responses``
stage with ``engine_generate: vllm``, :func:`generate`): the target answers every prompt once
at one temperature with its own per-request seed, over ``tensor_parallel_size`` GPUs
(``enable_expert_parallel`` for MoE targets), and the answer holds each prompt's tokens (and
vLLM's log-probabilities of them where ``logprobs`` asks).

A list of requests is answered with a list, one engine after another in this process
(:func:`respond_each`; the ``served`` tests start their five engines so).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

ENGINE_COUNTERS = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


def speculative_config(req: dict[str, Any]) -> dict[str, Any]:
    """vLLM's ``speculative_config`` for the request (``draft_sample_method`` if given)."""
    cfg = {"method": req["method"], "model": req["draft"], "num_speculative_tokens": req["k"]}
    if req.get("draft_sample_method"):
        cfg["draft_sample_method"] = req["draft_sample_method"]
    return cfg


def engine_counters(metrics: list[Any]) -> dict[str, Any]:
    """The spec-decode counters of ``LLM.get_metrics()`` (summed over label sets)."""
    out: dict[str, Any] = {name: 0 for name in ENGINE_COUNTERS}
    out[PER_POSITION] = []
    for m in metrics:
        if m.name in ENGINE_COUNTERS:
            out[m.name] += int(m.value)
        elif m.name == PER_POSITION:
            values = [int(v) for v in m.values]
            prev = out[PER_POSITION] or [0] * len(values)
            out[PER_POSITION] = [a + b for a, b in zip(prev, values, strict=True)]
    return out


def counter_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What one ``generate`` added to the engine's cumulative counters."""
    out = {name: after[name] - before[name] for name in ENGINE_COUNTERS}
    prev = before[PER_POSITION] or [0] * len(after[PER_POSITION])
    out[PER_POSITION] = [a - b for a, b in zip(after[PER_POSITION], prev, strict=True)]
    return out


def has_tokenizer(folder: str) -> bool:
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    return any(os.path.exists(os.path.join(folder, n)) for n in names)


def expand_per_request(output, values, cu_num_tokens, replace_from, replace_to, *_, **__) -> None:
    """``output[t]`` = the value of token ``t``'s request (``replace_from`` → ``replace_to``).

    Our stand-in for vLLM 0.32's CPU ``expand`` kernel, which converts ``output`` to int64
    and writes into that copy, so a float ``output`` (the per-token temperature of the
    rejection sampler) is never written: at T > 0 the target's draft-position logits are
    divided by uninitialised memory (docs/vllm-t1.md). Only with ``fix_cpu_expand``.
    """
    import torch

    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    fixed = torch.where(values == replace_from, torch.full_like(values, replace_to), values)
    output.copy_(fixed.repeat_interleave(counts)[: output.numel()].to(output.dtype))


SHIPPED_EXPAND: list[Any] = []  # vLLM's own CPU expand kernel, once replaced


def fix_cpu_expand(fixed: bool = True) -> None:
    """Install :func:`expand_per_request` (or, ``fixed=False``, put vLLM's own kernel back)
    where vLLM's CPU platform takes its kernel from: every engine registers the kernels as it
    starts, in this process (multiprocessing off), so the next engine gets this one."""
    from vllm.utils import cpu_triton_utils

    if not SHIPPED_EXPAND:
        SHIPPED_EXPAND.append(cpu_triton_utils._expand_kernel_impl)
    cpu_triton_utils._expand_kernel_impl = expand_per_request if fixed else SHIPPED_EXPAND[0]


def completion_record(completion: Any) -> dict[str, Any]:
    """One generated sequence: its tokens and vLLM's per-request spec-decode counters."""
    stats = completion.spec_decode_metrics
    found = stats.to_dict() if stats is not None else {}
    return {
        "tokens": [int(t) for t in completion.token_ids],
        "finish_reason": completion.finish_reason,
        "step_accepted": found.get("per_step_accepted", []),
        "step_drafted": found.get("per_step_drafted", []),
    }


def serve(req: dict[str, Any]) -> dict[str, Any]:
    """Generate every prompt at every temperature with speculative decoding; counters per
    request."""
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    fix_cpu_expand(bool(req.get("fix_cpu_expand")))
    longest = max(len(p) for p in req["prompts"]) + req["max_new_tokens"] + req["k"] + 8
    llm = LLM(
        model=req["target"],
        dtype=req.get("dtype", "float32"),
        seed=req["seed"],
        max_model_len=req.get("max_model_len") or longest,
        speculative_config=speculative_config(req),
        per_request_spec_decode_metrics="detailed",
        disable_log_stats=False,
        generation_config="vllm",  # no sampling defaults from the target's files
        enforce_eager=True,
        # token ids in and out: a target folder without tokenizer files (tests' tiny ones)
        skip_tokenizer_init=not has_tokenizer(req["target"]),
    )
    load_seconds = time.perf_counter() - t0
    prompts = [{"prompt_token_ids": list(p)} for p in req["prompts"]]
    runs, before = [], engine_counters(llm.get_metrics())
    for temperature in req["temperatures"]:
        params = [
            SamplingParams(
                temperature=float(temperature),
                top_p=1.0,
                max_tokens=req["max_new_tokens"],
                seed=req["seed"] * 1_000_003 + i,  # one stream per prompt
                n=req.get("samples", 1) if temperature > 0 else 1,  # T=0: one is all
                detokenize=False,
                ignore_eos=bool(req.get("ignore_eos", False)),
            )
            for i in range(len(prompts))
        ]
        t1 = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t1
        after = engine_counters(llm.get_metrics())
        runs.append(
            {
                "temperature": temperature,
                "prompts": [[completion_record(c) for c in out.outputs] for out in outputs],
                "engine": counter_delta(after, before),
                "generate_seconds": seconds,
            }
        )
        before = after
    return {
        "vllm_version": __import__("vllm").__version__,
        "request": {k: v for k, v in req.items() if k != "prompts"},
        "runs": runs,
        "load_seconds": load_seconds,
    }


def generation_engine(req: dict[str, Any]):
    """One vLLM engine for plain generation, sized for the request's longest sequence."""
    from vllm import LLM

    longest = max(len(p) for p in req["prompts"]) + req["max_new_tokens"] + 8
    extra = {}
    if req.get("tensor_parallel_size", 1) > 1:
        extra["tensor_parallel_size"] = int(req["tensor_parallel_size"])
    if req.get("enable_expert_parallel"):
        extra["enable_expert_parallel"] = True
    return LLM(
        model=req["target"],
        dtype=req.get("dtype", "float32"),
        seed=int(req.get("seed", 0)),
        max_model_len=req.get("max_model_len") or longest,
        generation_config="vllm",  # no sampling defaults from the target's files
        enforce_eager=bool(req.get("enforce_eager", True)),
        skip_tokenizer_init=not has_tokenizer(req["target"]),
        **extra,
    )


def generation_params(req: dict[str, Any], temperature: float, seed: int, through: bool):
    """One prompt's sampling: the raw distribution at ``temperature`` (no top-k / top-p, no
    penalties), greedy at 0; it stops after emitting ``stop_token_ids`` (EOS, kept) unless the
    prompt generates through it (``through``: all ``max_new_tokens``). No ``min_tokens``:
    vLLM would mask the stop tokens' logits, and HF's look-ahead samples them unmasked."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=float(temperature),
        top_p=1.0,
        max_tokens=req["max_new_tokens"],
        seed=seed,
        detokenize=False,
        ignore_eos=True,  # EOS is ours to name: the tokenizer's (stop_token_ids), as in HF
        stop_token_ids=[] if through else list(req.get("stop_token_ids") or []),
        include_stop_str_in_output=True,
        logprobs=req.get("logprobs"),
    )


def generate(req: dict[str, Any], llm=None) -> dict[str, Any]:
    """Plain generation: every prompt's tokens (and their log-probabilities) at ``temperature``
    (or prompt ``i`` at ``temperatures[i]``; ``ignore_eos`` likewise one or one per prompt),
    prompt ``i`` sampled with ``seeds[i]`` (its own random stream: batching does not move it)."""
    t0 = time.perf_counter()
    llm = llm or generation_engine(req)
    load_seconds = time.perf_counter() - t0
    prompts = [{"prompt_token_ids": list(p)} for p in req["prompts"]]
    temps = req.get("temperatures") or [req["temperature"]] * len(prompts)
    through = req.get("ignore_eos", False)  # one for all, or one per prompt
    through = through if isinstance(through, list) else [through] * len(prompts)
    params = [
        generation_params(req, float(t), int(s), bool(e))
        for t, s, e in zip(temps, req["seeds"], through, strict=True)
    ]
    t1 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t1
    records = []
    for out in outputs:
        c = out.outputs[0]
        rec: dict[str, Any] = {"tokens": [int(t) for t in c.token_ids]}
        if req.get("logprobs") is not None and c.logprobs is not None:
            rec["logprobs"] = [
                {str(t): float(lp.logprob) for t, lp in step.items()} for step in c.logprobs
            ]
        records.append(rec)
    return {
        "vllm_version": __import__("vllm").__version__,
        "outputs": records,
        "load_seconds": load_seconds,
        "generate_seconds": seconds,
    }


def respond(req: dict[str, Any]) -> dict[str, Any]:
    """One request's answer: plain generation or speculative decoding."""
    return generate(req) if req.get("mode") == "generate" else serve(req)


def respond_each(reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several requests, one engine after another in this process: vLLM is imported once
    (~11 of the ~15 s an engine start takes on 2 CPU cores), and each engine's distributed
    state and memory are released before the next starts."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    answers = []
    for req in reqs:
        answers.append(respond(req))
        cleanup_dist_env_and_memory()
    return answers


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: vllm_serve.py REQUEST.json ANSWER.json")
    with open(argv[0]) as f:
        req = json.load(f)
    # a list of requests is answered with a list, in order
    answer = respond_each(req) if isinstance(req, list) else respond(req)
    with open(argv[1] + ".tmp", "w") as f:
        json.dump(answer, f)
    os.replace(argv[1] + ".tmp", argv[1])


if __name__ == "__main__":  # vLLM starts worker processes that re-import this file
    main(sys.argv[1:])
