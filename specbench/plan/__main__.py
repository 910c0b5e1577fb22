"""``python -m specbench.plan --configfile configs/paper.yaml``: does every GPU job fit?

For every GPU job of the DAG whose target's shape is known (:mod:`specbench.plan.shapes`) it
prints the peak GPU memory per rank, in parts, against the memory of the GPU the job asks for
(``targets.<name>.gpu_model``, :data:`~specbench.plan.cost.GPU_GIB`; any GPU: 80 GB, or
``--gpu-gib``), the host memory per job and the hours:

- ``train_group`` (online training, ``train.features: online``): :mod:`specbench.plan.memory`;
- ``evaluate_draft`` (and ``curve_eval``), ``responses`` / ``responses_shard`` (HF's generate
  or vLLM, per ``engine_generate``), ``features_eval`` (and ``features_train`` where
  ``train.features: cache``): :mod:`specbench.plan.jobs`, :mod:`specbench.plan.tables`;
- the GPU-hours of regenerating the training responses, per engine (:mod:`.cost`).

Host memory: :mod:`specbench.plan.host`. A job that does not fit is one line naming the job,
the estimate, the limit and the knobs that change it; the exit status is then 1. The
workflow's ``onstart`` runs :func:`check` before any job. ``--write-profile PATH`` instead
rewrites the SLURM profile's generated ``mem_mb`` and ``runtime`` values
(:mod:`specbench.plan.profile`). Nothing here needs a GPU or the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import yaml

from specbench.config import load_config
from specbench.losses.rowstats import default_chunk_rows
from specbench.plan import cost
from specbench.plan.cost import GPU_GIB
from specbench.plan.host import host_parts, vocab_bytes
from specbench.plan.memory import (
    GiB,
    draft_memory,
    drafts_per_rank,
    forward_memory,
    group_rank_bytes,
    target_bytes,
)
from specbench.plan.profile import arch_vocab, zero3_of
from specbench.plan.shapes import target_config
from specbench.plan.tables import other_jobs

PROMPT_TOKENS = 128  # a planned micro-batch: b sequences of prompt + train_new_tokens


def plan(config: dict, gpu_gib: float, log=print) -> list[str]:
    """Print the tables; return the one-line refusals of the jobs that do not fit.
    ``gpu_gib``: the memory of a job that names no ``gpu_model``."""
    cfg = load_config(config)
    refusals: list[str] = []
    length = PROMPT_TOKENS + cfg.data.train_new_tokens
    n = sum(cfg.data.train_prompts(d) for d in cfg.domains)
    log(f"train_group jobs: peak GiB per GPU at micro-batches of {length} tokens; host GiB "
        f"per job; hours at {cost.TOKENS} tokens a sequence, {n:,} sequences")  # fmt: skip
    log(f"{'target/arch':26s} GPUs d/GPU micro  target  drafts  activ.  margin    peak  limit"
        "       host  jobs  h/job    GPU-h")  # fmt: skip
    total_h = 0.0
    params: dict[str, tuple[float, float]] = {}  # target -> (total, active) parameters
    shapes = {}
    for name, t in cfg.targets.items():
        shape = target_config(t.model)
        if shape is not None:
            params[name], shapes[name] = cost.target_params(shape), shape
        for arch in cfg.archs_for(name):
            label = f"{name}/{arch}"
            if shape is None:
                log(f"{label:26s} not planned: no config for {t.model} (download it)")
                continue
            row = plan_row(cfg, name, arch, shape, params[name], length, n, gpu_gib)
            total_h += row["gpu_h"]
            log(row["line"])
            if row["refusal"]:
                refusals.append(row["refusal"])
    log(f"training: {total_h:,.0f} GPU-h")
    refusals += other_jobs(cfg, shapes, params, gpu_gib, log)
    regeneration(cfg, n, params, log, shapes, gpu_gib)
    return refusals


def plan_row(
    cfg, name: str, arch: str, shape, params: tuple[float, float], length: int, n: int,
    gpu_gib: float,
) -> dict:  # fmt: skip
    """One (target, architecture): its peak memory per GPU, host memory, GPU-hours.
    ``params``: the target's (total, active) parameters (``cost.target_params``)."""
    t, train = cfg.targets[name], cfg.train_for(name)
    b = train.micro_batch_size or train.batch_size
    ranks, groups = max(1, t.gpus), cfg.train_groups(name, arch)
    per = drafts_per_rank(len(groups[0]), ranks)
    vocab = arch_vocab(cfg, shape, arch)
    os.environ["SPECBENCH_LOSS_CHUNK_ROWS"] = str(default_chunk_rows(vocab, "cuda"))
    try:  # train.autocast: auto is bf16 on GPUs of capability >= 8.0
        draft = draft_memory(shape, arch, cfg.hparams_for(name, arch), vocab, b, length,
                             train.k_for(arch), autocast=torch.bfloat16)  # fmt: skip
        forward = forward_memory(shape, vocab, b, length, torch.bfloat16)
    finally:
        os.environ.pop("SPECBENCH_LOSS_CHUNK_ROWS", None)
    total, active = params
    zero3 = zero3_of(t)
    parts = group_rank_bytes(target_bytes(total, ranks, zero3), forward, draft, per)
    model = t.gpu_model_for(arch)
    limit = GPU_GIB.get(model, gpu_gib)  # a model not in the table: --gpu-gib
    fits = parts["peak"] <= limit * GiB
    c = cost.group_cost(
        active, cost.gather_seconds(total, ranks, zero3), draft.flops_per_step,
        draft.k, draft.recompute, train.steps_for(arch, n),
        train.batch_size, b, ranks, per, len(groups),
    )  # fmt: skip
    host = host_parts(
        "train_group",
        params=total,
        ranks=ranks,
        offload=cost.offloads(zero3),
        vocab_mats=vocab_bytes(shape),
        tokens=n * cost.TOKENS,
    )["total"]
    cells = " ".join(f"{parts[k] / GiB:7.1f}" for k in ("target", "drafts", "activations"))
    line = (
        f"{name + '/' + arch:26s} {ranks:4d} {per:5d} {b:5d} {cells}"
        f" {parts['margin'] / GiB:7.1f}"
        f" {parts['peak'] / GiB:7.1f}  {limit:3.0f} {model or 'any':4s}"
        f" {host / GiB:7.0f} {len(groups):5d}"
        f" {c.wall_h:6.0f} {c.gpu_h:8,.0f}" + ("" if fits else "  DOES NOT FIT")
    )  # fmt: skip
    refusal = None
    if not fits:
        knobs = [f"targets.{name}.group_size ({len(groups[0])})"] if per > 1 else []
        knobs += [f"arch_hparams.{arch}.train_anchors"] if arch == "eagle3" else []
        knobs += [f"targets.{name}.micro_batch_size ({b})"]
        refusal = (
            f"train_group {name}/{arch}: {parts['peak'] / GiB:.1f} GiB per GPU > {limit:.0f} "
            f"GiB; lower {', '.join(knobs)}, or ask for a bigger GPU "
            f"(targets.{name}.gpu_model: one of {', '.join(GPU_GIB)})"
        )
    return {"line": line, "refusal": refusal, "gpu_h": c.gpu_h, "parts": parts}


def regeneration(
    cfg, n: int, params: dict[str, tuple[float, float]], log=print, shapes=None,
    gpu_gib: float = GPU_GIB["h100"],
) -> dict[str, float]:  # fmt: skip
    """GPU-hours of regenerating the training responses, per target that has to (``params``:
    the (total, active) parameters of each target whose shape is known): with HF's generate
    and with vLLM (where ``shapes`` are given; on GPUs of ``gpu_gib``), and with the engine
    each target's ``engine_generate`` picks. Returns the three totals."""
    log(f"\n{'target':26s} GPUs  forwards/rank   HF GPU-h    vLLM: C  s/step   GPU-h  engine"
        "   (regenerated training responses)")  # fmt: skip
    totals = {"hf": 0.0, "vllm": 0.0, "configured": 0.0}
    shards = cfg.data.response_shard_prompts
    for name, t in cfg.targets.items():
        if name not in params or t.train_completions:  # released completions: not generated
            continue
        total, active = params[name]
        ranks = max(1, t.gpus)
        gather = cost.gather_seconds(total, ranks, zero3_of(t))
        forwards, h = cost.regeneration_gpu_hours(
            total, active, gather, ranks, n, cfg.data.generation_batch_size,
            cfg.data.train_new_tokens,
        )  # fmt: skip
        v = None
        if shapes and name in shapes:
            width = 4 if t.dtype == "float32" else 2
            v = cost.vllm_generation_gpu_hours(
                total, active, ranks, n, cfg.data.train_new_tokens, PROMPT_TOKENS,
                cost.kv_bytes_per_token(shapes[name], ranks, width),
                shapes[name].num_hidden_layers, gpu_gib * GiB,
                jobs=-(-n // shards) if shards else 1, width=width,
            )  # fmt: skip
        vh = v.gpu_h if v else h  # vLLM cannot hold it: HF's (ZeRO-3) is what runs
        chosen = vh if t.engine_generate == "vllm" else h
        totals["hf"] += h
        totals["vllm"] += vh
        totals["configured"] += chosen
        vcells = (
            f"{v.concurrency:8d} {v.t_step:7.3f} {v.gpu_h:7,.0f}"
            if v
            else f"{'does not fit ' + str(ranks) + ' GPUs':>24s}"
        )
        log(f"{name:26s} {ranks:4d} {forwards:15,d} {h:9,.0f}  {vcells}  {t.engine_generate}")
    log(
        f"regenerated responses: {totals['configured']:,.0f} GPU-h with each target's "
        f"engine_generate (all HF: {totals['hf']:,.0f}; vLLM where it fits: "
        f"{totals['vllm']:,.0f})"
    )
    return totals


def check(config: dict, log=print) -> list[str]:
    """The refusals of :func:`plan`, with an unnamed GPU's memory from ``$SPECBENCH_GPU_GIB``
    (default: an H100's): the check the workflow runs before it submits a job."""
    return plan(config, float(os.environ.get("SPECBENCH_GPU_GIB", GPU_GIB["h100"])), log)


def check_once(config: dict, folder: Path, log=print) -> list[str]:
    """:func:`check`, skipped where it passed before for this config with this code: a pass
    is recorded in ``folder`` under a digest of the config, ``$SPECBENCH_GPU_GIB``, the
    versions of torch and transformers and specbench's own source. The workflow's
    ``onstart`` calls this, so a resumed or repeated run does not trace the matrix again
    (6-12 minutes on 2 CPU cores for configs/paper.yaml)."""
    import transformers

    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(f"{os.environ.get('SPECBENCH_GPU_GIB')}|{torch.__version__}|".encode())
    h.update(transformers.__version__.encode())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    mark = Path(folder) / f"{h.hexdigest()[:16]}.ok"
    if mark.is_file():
        log(f"planner: every job fits (checked before for this config and code: {mark})")
        return []
    refusals = check(config, log)
    if not refusals:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text("every job fits\n")
    return refusals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configfile", type=Path, required=True)
    p.add_argument("--gpu-gib", type=float, default=GPU_GIB["h100"],
                   help="usable GiB of a job's GPU where its gpu_model does not say")  # fmt: skip
    p.add_argument("--write-profile", type=Path, metavar="CONFIG_YAML",
                   help="rewrite this SLURM profile's generated mem_mb and runtime values "
                        "(specbench/plan/profile.py) instead of planning")  # fmt: skip
    args = p.parse_args(argv)
    config = yaml.safe_load(args.configfile.read_text())
    if args.write_profile:
        from specbench.plan.profile import rewrite

        changed = rewrite(args.write_profile, load_config(config), args.gpu_gib)
        print(f"{args.write_profile}: {'rewritten' if changed else 'up to date'}")
        return 0
    refusals = plan(config, args.gpu_gib)
    for line in refusals:
        print(line, file=sys.stderr)
    return 1 if refusals else 0


if __name__ == "__main__":
    raise SystemExit(main())
