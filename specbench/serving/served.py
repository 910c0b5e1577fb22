"""Served τ of one trained draft: export it, serve it in vLLM on the eval prompts, count.

The prompts are the eval caches' own (``input_ids[:prompt_len]`` of every sequence), so the
served numbers pair prompt by prompt with the exact T=0 replay and the unbiased T=1
estimate of ``evaluate_draft``. At T=0 each served continuation is also compared with the
cached greedy one (``input_ids[prompt_len:]``): served τ equals the replay's exactly only
where the two continuations are identical (SPEC §4, "Served τ").
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from specbench.aggregation.stats import ratio_of_sums_se
from specbench.drafts import load_draft
from specbench.features.cache import FeatureCache
from specbench.formats import export_draft
from specbench.serving.client import SERVED, ServedPrompt, run_vllm, served_prompts
from specbench.targets.info import target_info_from_checkpoint


def cache_prompts(cache: FeatureCache) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """(prompt indices, prompt token ids, cached continuation ids) of every sequence."""
    indices, prompts, cached = [], [], []
    for i in range(len(cache)):
        seq = cache.sequence(i)
        n = int(seq["prompt_len"])
        ids = seq["input_ids"].tolist()
        indices.append(int(seq["prompt_index"]))
        prompts.append(ids[:n])
        cached.append(ids[n:])
    return indices, prompts, cached


def first_difference(served: list[int], cached: list[int]) -> int:
    """Index of the first token where ``served`` leaves ``cached``; -1 if it never does (the
    cached continuation runs past the served one: it was generated through EOS)."""
    for j, tok in enumerate(served):
        if j >= len(cached) or cached[j] != tok:
            return j
    return -1


def export_for_vllm(
    draft_dir: Path, arch: str, target: str, vocab: torch.Tensor, out: Path, k: int
):
    """The trained draft in the format vLLM loads for its architecture."""
    if arch not in SERVED:
        raise ValueError(f"vLLM serves no {arch!r} draft here; served: {sorted(SERVED)}")
    info = target_info_from_checkpoint(target, vocab)
    draft = load_draft(draft_dir, info)
    return export_draft(draft, info, out, SERVED[arch][1], target, k)


def rows(
    served: list[ServedPrompt], temperature: float, cached: list[list[int]] | None
) -> list[dict]:
    """Per-prompt rows of one temperature: counters, per-position counts, T=0 agreement."""
    out = []
    for i, s in enumerate(served):
        row = {
            "temperature": temperature,
            "prompt_index": s.prompt_index,
            "served_drafts": s.drafts,
            "served_accepted": s.accepted,
            "served_drafted": s.drafted,
            "served_tokens": sum(len(t) for t in s.tokens),
        }
        for j, (r, a) in enumerate(zip(s.reached, s.accepted_at, strict=True)):
            row[f"served_reached_{j + 1}"], row[f"served_accepted_{j + 1}"] = r, a
        if cached is not None:
            diff = first_difference(s.tokens[0], cached[i])
            row["continuation_identical"], row["first_difference"] = diff < 0, diff
        out.append(row)
    return out


@dataclass(frozen=True)
class Serving:
    """One engine's worth of serving: a trained draft with its target on the prompts of every
    domain's eval cache (``caches``: domain → path) at every temperature."""

    draft_dir: str | Path
    arch: str
    target: str
    caches: dict[str, str | Path]
    k: int
    new_tokens: int
    temperatures: list[float]
    seed: int = 0
    draft_sample_method: str | None = None  # vLLM's default where None
    samples: int = 1  # per prompt at T > 0
    ignore_eos: bool = False
    fix_cpu_expand: bool = False  # our stand-in for vLLM 0.32's CPU kernel (docs/vllm-t1.md)


def serve_draft(*args: Any, log: Path | None = None, **kwargs: Any) -> tuple[pd.DataFrame, dict]:
    """Serve one draft (:class:`Serving`'s fields, in order or by name; one engine for every
    domain): per-prompt rows (``domain`` column; cached continuation checks at T=0) and
    vLLM's answer (engine counters, timings)."""
    return serve_drafts([Serving(*args, **kwargs)], log=log)[0]


def serve_drafts(
    settings: list[Serving], log: Path | None = None
) -> list[tuple[pd.DataFrame, dict]]:
    """:func:`serve_draft` for each of ``settings``, in one vLLM process, one engine after
    another: vLLM is imported once."""
    with tempfile.TemporaryDirectory(prefix="specbench-export-") as tmp:
        found = [request(Path(tmp) / str(i), s) for i, s in enumerate(settings)]
        answers = run_vllm([req for req, _ in found], log=log)
    return [table(answer, prompts) for (_, prompts), answer in zip(found, answers, strict=True)]


def request(folder: Path, s: Serving) -> tuple[dict, dict]:
    """The draft exported under ``folder`` and vLLM's request for it; with the prompts'
    domains, indices and cached continuations, which :func:`table` pairs the answer with."""
    domains, indices, prompts, cached, vocab = [], [], [], [], None
    for domain, path in s.caches.items():
        cache = FeatureCache(path)
        found = cache_prompts(cache)
        domains += [domain] * len(found[0])
        indices, prompts, cached = indices + found[0], prompts + found[1], cached + found[2]
        vocab = cache.draft_to_target if vocab is None else vocab
        if not torch.equal(vocab, cache.draft_to_target):
            raise ValueError(f"{path}: another draft vocabulary than the other domains' caches")
    exported = export_for_vllm(Path(s.draft_dir), s.arch, s.target, vocab, folder, s.k)
    req = {
        "target": str(Path(s.target).resolve()),
        "draft": str(exported),
        "method": SERVED[s.arch][0],
        "k": s.k,
        "draft_sample_method": s.draft_sample_method,
        "prompts": prompts,
        "max_new_tokens": s.new_tokens,
        "temperatures": list(s.temperatures),
        "seed": s.seed,
        "samples": s.samples,
        "ignore_eos": s.ignore_eos,
        "fix_cpu_expand": s.fix_cpu_expand,
    }
    return req, {"domains": domains, "indices": indices, "cached": cached, "k": s.k}


def table(answer: dict, prompts: dict) -> tuple[pd.DataFrame, dict]:
    """Per-prompt rows of every temperature's run in ``answer`` (and ``answer`` itself)."""
    out = []
    for run in answer["runs"]:
        t = run["temperature"]
        found = served_prompts(run, prompts["indices"], prompts["k"])
        part = rows(found, t, prompts["cached"] if t == 0 else None)
        out += [{"domain": d, **row} for d, row in zip(prompts["domains"], part, strict=True)]
    return pd.DataFrame(out), answer


def served_tau(df: pd.DataFrame) -> tuple[float, float]:
    """τ = 1 + Σ accepted / Σ drafts over the rows, and its prompt-clustered standard error."""
    return ratio_of_sums_se(df["served_accepted"] + df["served_drafts"], df["served_drafts"])
