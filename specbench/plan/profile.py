"""Host memory and wall time of every GPU job type per target, and the SLURM profile's
``mem_mb`` and ``runtime`` written from them.

``python -m specbench.plan --configfile configs/paper.yaml --write-profile
workflow/profiles/slurm/config.yaml`` rewrites, in the profile's ``set-resources``, the
``mem_mb`` and ``runtime`` lines of :data:`GENERATED` (one value per target of the config, by
the target's name, and a fallback for other targets) and nothing else:

    mem_mb   ⌈HEADROOM_MEM · host / 1 GB⌉ GB, in MB (host: :mod:`specbench.plan.host`)
    runtime  ⌈HEADROOM_TIME · wall / 10 min⌉ · 10 min, at least MIN_RUNTIME; for train_group
             at most PARTITION_LIMIT: a group outlives the limit by resuming from its
             checkpoint when the profile's ``retries`` resubmit it

A value is the largest over the target's architectures (and, for ``responses``, over the
evaluation splits' jobs and the training shards', which share the rule's resources). None
of this traces anything: parameter counts (:func:`~specbench.plan.cost.target_params`), draft
FLOPs from a draft built under ``FakeTensorMode`` (no step run) and the cost formulas, so
``tests/test_plan.py`` can check the shipped profile against it in seconds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from specbench.drafts.align import training_k
from specbench.plan import cost
from specbench.plan.host import cache_bytes, host_parts, vocab_bytes

HEADROOM_MEM, HEADROOM_TIME = 1.25, 2.0
MIN_RUNTIME = 30  # minutes: a job's scheduling slack
PARTITION_LIMIT = 2880  # minutes: the longest limit of a typical GPU partition (48 h)
PROMPT_TOKENS = 128  # mean prompt tokens of a planned sequence
# the rules whose values are generated; ``responses`` also sizes ``responses_shard`` (one
# YAML anchor), evaluate_draft ``curve_eval``, train_draft ``curve_train``
GENERATED = ("responses", "features_train", "features_eval", "train_draft", "train_group",
             "evaluate_draft")  # fmt: skip
# (mem_mb, runtime) of a target the config does not name: hand-set
FALLBACK = {"responses": (64_000, 120), "features_train": (256_000, 120),
            "features_eval": (64_000, 120), "train_draft": (64_000, 240),
            "train_group": (128_000, PARTITION_LIMIT), "evaluate_draft": (64_000, 120)}  # fmt: skip
COMMAND = ("python -m specbench.plan --configfile configs/paper.yaml "
           "--write-profile workflow/profiles/slurm/config.yaml")  # fmt: skip


def zero3_of(target) -> dict | None:
    """A target's ZeRO-3 settings, or None where it runs without ZeRO-3."""
    return target.zero3 if target.engine == "zero3" else None


def draft_cost(shape, arch: str, hparams: dict, vocab: int, k: int) -> tuple[float, bool, int]:
    """(``flops_per_step``, TTT steps recomputed on a GPU, trained K) of a draft, built
    under ``FakeTensorMode`` (nothing allocated, nothing run)."""
    from specbench.plan.memory import planned_draft

    with FakeTensorMode(allow_non_fake_inputs=True):
        draft, _, _ = planned_draft(shape, arch, hparams, vocab, torch.bfloat16, True, True)
    return (
        draft.flops_per_step(),
        bool(getattr(draft, "recompute_steps", False)),
        training_k(draft, k),
    )


def arch_vocab(cfg, shape, arch: str) -> int:
    """The draft vocabulary size of ``arch`` on a target of ``shape``."""
    return shape.vocab_size if cfg.vocab_for(arch) == "full" else cfg.data.draft_vocab_size


def target_figures(cfg, name: str, shape, params: tuple[float, float], gpu_gib: float) -> dict:
    """rule -> {"host": bytes, "hours": wall hours} of ``name``'s jobs of every rule of
    :data:`GENERATED` (the module doc; a rule the config's DAG lacks is sized all the same)."""
    t, data = cfg.targets[name], cfg.data
    total, active = params
    ranks, zero3 = max(1, t.gpus), zero3_of(t)
    gather = cost.gather_seconds(total, ranks, zero3)
    offload, vocab_mats = cost.offloads(zero3), vocab_bytes(shape)
    n = sum(data.train_prompts(d) for d in cfg.domains)
    archs = cfg.archs_for(name)
    vd = max(arch_vocab(cfg, shape, a) for a in archs)
    eval_len = PROMPT_TOKENS + data.eval_new_tokens
    eval_cache = cache_bytes(data.eval_prompts_per_domain * eval_len, shape.hidden_size, vd)
    train_cache = cache_bytes(n * cost.TOKENS, shape.hidden_size, vd)
    common = dict(params=total, ranks=ranks, offload=offload, vocab_mats=vocab_mats)
    out = {}

    def put(rule: str, hours: float, **kw) -> None:
        out[rule] = {"host": host_parts(rule, **common, **kw)["total"], "hours": hours}

    # responses: the evaluation splits' jobs and the training shards' (where regenerated)
    jobs = [(data.eval_prompts_per_domain, data.eval_new_tokens)]
    if not t.train_completions:
        jobs.append((data.response_shard_prompts or n, data.train_new_tokens))
    hours = max(_generation_hours(cfg, name, shape, params, gpu_gib, m, new) for m, new in jobs)
    if t.engine_generate == "vllm":  # vLLM holds the weights on the GPUs, whatever ZeRO-3 says
        out["responses"] = {"host": host_parts("responses", **{**common, "offload": False})
                            ["total"], "hours": hours}  # fmt: skip
    else:
        put("responses", hours)
    seqs = data.eval_prompts_per_domain
    put("features_eval", cost.features_hours(total, active, gather, ranks, seqs,
        data.feature_batch_size, eval_len, cfg.eval.prefix_kv), cache=eval_cache)  # fmt: skip
    put("features_train", cost.features_hours(total, active, gather, ranks, n,
        data.feature_batch_size, cost.TOKENS), cache=train_cache)  # fmt: skip
    groups, drafts = 0.0, 0.0
    for arch in archs:
        train = cfg.train_for(name)
        b = train.micro_batch_size or train.batch_size
        vocab, hparams = arch_vocab(cfg, shape, arch), cfg.hparams_for(name, arch)
        flops, recompute, k = draft_cost(shape, arch, hparams, vocab, train.k_for(arch))
        steps = train.steps_for(arch, n)
        g = cfg.train_groups(name, arch)
        per = math.ceil(len(g[0]) / ranks)
        c = cost.group_cost(active, gather, flops, k, recompute, steps, train.batch_size, b,
                            ranks, per, len(g))  # fmt: skip
        groups = max(groups, c.wall_h)
        one = cost.group_cost(0.0, 0.0, flops, k, recompute, steps, train.batch_size, b, 1, 1, 1)
        drafts = max(drafts, one.wall_h - one.target_gpu_h)  # no target forward: cached
    put("train_group", groups, tokens=n * cost.TOKENS)
    put("train_draft", drafts, cache=train_cache)
    live = cfg.eval.live_prompts * len(cfg.domains)
    k_eval = max(cfg.eval.k_for(a) for a in archs)
    put("evaluate_draft", cost.eval_hours(total, active, gather, ranks, k_eval, eval_len,
        seqs * len(cfg.domains), live, cfg.eval.live_new_tokens, cfg.eval.unbiased_anchors,
        list(cfg.temperatures)), cache=eval_cache)  # fmt: skip
    return out


def _generation_hours(cfg, name, shape, params, gpu_gib, n: int, new: int) -> float:
    """Wall hours of one responses job of ``n`` prompts and ``new`` tokens, with the target's
    ``engine_generate`` (HF's where vLLM cannot hold the target)."""
    t = cfg.targets[name]
    total, active = params
    ranks = max(1, t.gpus)
    if t.engine_generate == "vllm":
        width = 4 if t.dtype == "float32" else 2
        v = cost.vllm_generation_gpu_hours(
            total, active, ranks, n, new, PROMPT_TOKENS,
            cost.kv_bytes_per_token(shape, ranks, width), shape.num_hidden_layers,
            gpu_gib * 2**30, jobs=1, width=width,
        )  # fmt: skip
        if v is not None:
            return v.gpu_h / ranks
    gather = cost.gather_seconds(total, ranks, zero3_of(t))
    _, h = cost.regeneration_gpu_hours(total, active, gather, ranks, n,
                                       cfg.data.generation_batch_size, new)  # fmt: skip
    return h / ranks + cost.load_seconds(total) / 3600


def resource_values(
    figures: dict[str, dict], rules: tuple[str, ...] = GENERATED
) -> dict[str, tuple[dict, dict]]:
    """rule -> ({target: mem_mb}, {target: runtime minutes}) with the module doc's headroom;
    the rules of :data:`GENERATED` not in ``rules`` (not in the config's DAG) get no target
    of their own, only the fallback."""
    out = {}
    for rule in GENERATED:
        mem, run = {}, {}
        for name, fig in figures.items() if rule in rules else ():
            mem[name] = math.ceil(HEADROOM_MEM * fig[rule]["host"] / 1e9) * 1000
            minutes = max(MIN_RUNTIME, math.ceil(HEADROOM_TIME * fig[rule]["hours"] * 6) * 10)
            run[name] = min(minutes, PARTITION_LIMIT) if rule == "train_group" else minutes
        out[rule] = (mem, run)
    return out


def _expression(values: dict[str, int], fallback: int) -> str:
    if not values:  # a rule outside the config's DAG
        return str(fallback)
    pairs = ", ".join(f"('{k}', {v:_})" for k, v in values.items())
    return f'"dict([{pairs}]).get(wildcards.target, {fallback:_})"'


def write_profile(text: str, values: dict[str, tuple[dict, dict]]) -> str:
    """``text`` (the profile) with the ``mem_mb`` and ``runtime`` lines of every rule of
    :data:`GENERATED` in ``set-resources`` replaced by ``values``; the rest as it was."""
    lines, rule, seen = text.splitlines(keepends=True), None, set()
    inside = False
    for i, line in enumerate(lines):
        if re.match(r"^\S", line):
            inside = line.startswith("set-resources:")
            rule = None
            continue
        head = re.match(r"^  (\w+):", line)
        if inside and head:
            rule = head.group(1) if head.group(1) in GENERATED else None
            continue
        key = re.match(r"^    (mem_mb|runtime):", line)
        if inside and rule and key:
            mem, run = values[rule]
            which = key.group(1)
            fb = FALLBACK[rule][0 if which == "mem_mb" else 1]
            expr = _expression(mem if which == "mem_mb" else run, fb)
            lines[i] = f"    {which}: {expr}\n"
            seen.add((rule, which))
    missing = {(r, k) for r in GENERATED for k in ("mem_mb", "runtime")} - seen
    if missing:
        raise ValueError(f"the profile has no line for {sorted(missing)} in set-resources")
    return "".join(lines)


def profile_values(cfg, gpu_gib: float) -> dict[str, tuple[dict, dict]]:
    """:func:`resource_values` of every target of ``cfg`` whose shape the planner knows."""
    from specbench.plan.shapes import target_config

    figures = {}
    for name, t in cfg.targets.items():
        shape = target_config(t.model)
        if shape is not None:
            gib = _gpu_gib(t, gpu_gib)
            figures[name] = target_figures(cfg, name, shape, cost.target_params(shape), gib)
    return resource_values(figures, dag_rules(cfg))


def dag_rules(cfg) -> tuple[str, ...]:
    """The rules of :data:`GENERATED` in ``cfg``'s DAG: online training has no training
    feature cache (``features_train``) nor cache-trained drafts (``train_draft``); the
    ones without are left at the fallback, since sizing a feature cache of every training
    response (petabytes at the paper's scale, issue #10) would only write requests no node
    can meet."""
    cached = cfg.train.features == "cache"
    return tuple(r for r in GENERATED if cached or r not in ("features_train", "train_draft"))


def _gpu_gib(target, default: float) -> float:
    """The memory of the GPU a target's non-training jobs ask for (its default gpu_model)."""
    return cost.GPU_GIB.get(target.gpu_model_for("default"), default)


def rewrite(path: Path, cfg, gpu_gib: float) -> bool:
    """Rewrite the profile at ``path``; True where it changed."""
    old = path.read_text()
    new = write_profile(old, profile_values(cfg, gpu_gib))
    if new != old:
        path.write_text(new)
    return new != old
