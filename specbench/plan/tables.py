"""The planner's tables of the GPU jobs besides training: ``evaluate_draft`` (and
``curve_eval``), ``responses`` / ``responses_shard``, ``features_eval`` (and
``features_train`` where ``train.features: cache``). GPU memory per rank traced
(:mod:`specbench.plan.jobs`), host memory and hours from :mod:`specbench.plan.profile`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from specbench.plan import cost
from specbench.plan.jobs import eval_memory, generation_memory, job_peak, unbiased_memory
from specbench.plan.memory import GiB, forward_memory, target_bytes
from specbench.plan.profile import arch_vocab, target_figures, zero3_of

HEAD = (f"{'target/arch job':31s} GPUs  K/b   target   draft  activ.  margin    peak  limit"
        "       host  jobs  h/job    GPU-h")  # fmt: skip


def other_jobs(
    cfg, shapes: dict, params: dict[str, tuple[float, float]], gpu_gib: float,
    log: Callable[[str], None] = print,
) -> list[str]:  # fmt: skip
    """Print the tables; return the one-line refusals of the jobs that do not fit."""
    data = cfg.data
    eval_len = data.max_prompt_tokens + data.eval_new_tokens  # the longest sequence
    log(f"\nevaluate_draft, responses, features_eval jobs: peak GiB per GPU (sequences of up "
        f"to {eval_len} tokens; generation of {data.generation_batch_size} prompts of "
        f"{data.max_prompt_tokens}), host GiB and hours per job")  # fmt: skip
    log(HEAD)
    refusals, total_h = [], 0.0
    for name, shape in shapes.items():
        for r in target_rows(cfg, name, shape, params[name], gpu_gib, eval_len):
            log(r.line)
            total_h += r.gpu_h
            if r.refusal:
                refusals.append(r.refusal)
    log(f"evaluation, responses and features: {total_h:,.0f} GPU-h")
    return refusals


@dataclass
class Row:
    line: str
    refusal: str | None
    gpu_h: float


def _row(label: str, kb: str, parts: dict | None, lim: float, model: str, fig: dict,
         ranks: int, jobs: int, why: str | None) -> Row:  # fmt: skip
    """A table line; ``why`` (the refusal's knobs) where the job does not fit."""
    gpu_h = jobs * ranks * fig["hours"]
    if parts:
        cells = " ".join(f"{parts[k] / GiB:7.1f}" for k in ("target", "draft", "activations"))
        cells += f" {parts['margin'] / GiB:7.1f} {parts['peak'] / GiB:7.1f}"
    else:
        cells = f"{'vLLM: ' + ('fits' if why is None else 'does not fit'):>39s}"
    line = (f"{label:31s} {ranks:4d} {kb:>4s} {cells}  {lim:3.0f} {model or 'any':4s}"
            f" {fig['host'] / GiB:7.0f} {jobs:5d} {fig['hours']:6.1f} {gpu_h:8,.0f}"
            + ("" if why is None else "  DOES NOT FIT"))  # fmt: skip
    return Row(line, why, gpu_h)


def target_rows(cfg, name: str, shape, params: tuple[float, float], gpu_gib: float,
                eval_len: int) -> list[Row]:  # fmt: skip
    """The rows of one target: its evaluation per architecture, responses, features."""
    t, data = cfg.targets[name], cfg.data
    ranks, zero3 = max(1, t.gpus), zero3_of(t)
    dtype = getattr(torch, t.dtype)
    tgt = target_bytes(params[0], ranks, zero3, dtype.itemsize)
    model = t.gpu_model_for("default")
    limit = cost.GPU_GIB.get(model, gpu_gib)
    figs = target_figures(cfg, name, shape, params, limit)
    bigger = f"or ask for a bigger GPU (targets.{name}.gpu_model: one of {', '.join(cost.GPU_GIB)})"
    rows = []
    # the unbiased phase runs the target, whatever the draft: traced once per target at the
    # largest draft vocabulary and K of its architectures (its memory grows with both), an
    # upper bound for the others; each traced MoE forward takes ~10 s on a CPU
    archs = cfg.archs_for(name)
    vd_max = max(arch_vocab(cfg, shape, a) for a in archs)
    unb = unbiased_memory(shape, vd_max, eval_len, max(cfg.eval.k_for(a) for a in archs), dtype)
    for arch in archs:
        vd, k = arch_vocab(cfg, shape, arch), cfg.eval.k_for(arch)
        em = eval_memory(shape, arch, cfg.hparams_for(name, arch), vd, eval_len, k,
                         dtype=dtype, target=False)  # fmt: skip
        em.unbiased = unb
        parts = job_peak(tgt, em.draft, em.work)
        arch_model = t.gpu_model_for(arch)
        lim = cost.GPU_GIB.get(arch_model, gpu_gib)
        why = None
        if parts["peak"] > lim * GiB:
            why = (f"evaluate_draft {name}/{arch}: {parts['peak'] / GiB:.1f} GiB per GPU > "
                   f"{lim:.0f} GiB (expected-τ batches of {em.batch}, branch forwards of 64 "
                   f"anchors); raise targets.{name}.gpus ({t.gpus}) {bigger}")  # fmt: skip
        jobs = len(cfg.losses_for(arch)) * len(cfg.seeds)
        rows.append(_row(f"{name}/{arch} eval", f"{em.k}/{em.batch}", parts, lim, arch_model,
                         figs["evaluate_draft"], ranks, jobs, why))  # fmt: skip
    regen = not t.train_completions
    new = max(data.eval_new_tokens, data.train_new_tokens if regen else 0)
    jobs = len(cfg.temperatures) * len(cfg.domains)  # the evaluation splits' jobs
    jobs += sum(data.response_shards(d) or 1 for d in cfg.train_domains) if regen else 0
    if t.engine_generate == "vllm":
        v = cost.vllm_generation_gpu_hours(
            params[0], params[1], ranks, 1, new, data.max_prompt_tokens,
            cost.kv_bytes_per_token(shape, ranks, dtype.itemsize), shape.num_hidden_layers,
            limit * GiB, width=dtype.itemsize,
        )  # fmt: skip
        why = None if v else (
            f"responses {name}: vLLM cannot hold the target and one sequence's KV cache on "
            f"{ranks} GPUs of {limit:.0f} GiB; raise targets.{name}.gpus, set "
            f"targets.{name}.engine_generate: hf {bigger}"
        )  # fmt: skip
        rows.append(_row(f"{name} responses", "vllm", None, limit, model, figs["responses"],
                         ranks, jobs, why))  # fmt: skip
    else:
        b = data.generation_batch_size
        gm = generation_memory(shape, b, data.max_prompt_tokens, new, dtype)
        parts = job_peak(tgt, 0, gm.work)
        why = None
        if parts["peak"] > limit * GiB:
            why = (
                f"responses {name}: {parts['peak'] / GiB:.1f} GiB per GPU > {limit:.0f} GiB "
                f"(KV cache of {b} sequences of {data.max_prompt_tokens} + {new} tokens: "
                f"{gm.kv / GiB:.1f} GiB); lower data.generation_batch_size ({b}), set "
                f"targets.{name}.engine_generate: vllm, raise targets.{name}.gpus {bigger}"
            )
        rows.append(_row(f"{name} responses", f"{b}", parts, limit, model, figs["responses"],
                         ranks, jobs, why))  # fmt: skip
    fb, vd = data.feature_batch_size, vd_max
    for rule in ["features_eval"] + (["features_train"] if cfg.train.features == "cache" else []):
        length = eval_len if rule == "features_eval" else cost.TOKENS
        parts = job_peak(tgt, 0, forward_memory(shape, vd, fb, length, dtype))
        why = None
        if parts["peak"] > limit * GiB:
            why = (
                f"{rule} {name}: {parts['peak'] / GiB:.1f} GiB per GPU > {limit:.0f} GiB; "
                f"lower data.feature_batch_size ({fb}), raise targets.{name}.gpus {bigger}"
            )
        n_eval = len(cfg.temperatures) * len(cfg.domains) * len(cfg.vocabs_for(name))
        rows.append(_row(f"{name} {rule}", f"{fb}", parts, limit, model, figs[rule], ranks,
                         n_eval if rule == "features_eval" else 1, why))  # fmt: skip
    return rows
