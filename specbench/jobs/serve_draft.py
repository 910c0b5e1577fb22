"""Stage ``serve_draft`` (``eval.served``): one draft served by vLLM on the eval prompts.

The draft is exported in the format vLLM loads for its architecture, served with its target
in vLLM's speculative decoding (the serving venv, ``make serve-env``) on every domain's
eval prompts at every temperature with the eval K and ``live_new_tokens``, and vLLM's own
per-request counters are written per prompt to ``served.csv``; ``aggregate`` turns them
into ``tau_served`` / ``tau_served_se`` in ``tau.csv``. T > 0 uses
``eval.served_draft_sampling``, with our stand-in for vLLM 0.32's CPU kernel that breaks
T > 0 (``docs/vllm-t1.md``; a no-op on other platforms, which never register it).
"""

from __future__ import annotations

import json
from pathlib import Path

from specbench.io import atomic_write_text
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.serving.served import serve_draft, served_tau


def _domain_caches(caches: list[str], domains: list[str]) -> dict[str, str]:
    """The eval cache of each domain whose prompts are served (every split holds the same
    prompts; the T=0 one also holds the cached greedy continuations)."""
    out = {}
    for domain in domains:
        found = sorted(c for c in caches if Path(c).stem == domain)  # eval_t0 sorts first
        if not found:
            raise FileNotFoundError(f"no eval cache of domain {domain!r} among {caches}")
        out[domain] = found[0]
    return out


def run(job: Job) -> None:
    ctx = start(job)
    cfg, wc = ctx.cfg, job.wildcards
    out = Path(job.output["served"])
    df, answer = serve_draft(
        Path(job.input["draft"]).parent,
        wc["arch"],
        job.params["model"],
        _domain_caches(list(job.input["caches"]), list(cfg.domains)),
        cfg.eval.k_for(wc["arch"]),
        cfg.eval.live_new_tokens,
        list(cfg.temperatures),
        seed=int(wc["seed"]),
        draft_sample_method=cfg.eval.served_draft_sampling,
        log=Path(job.log).with_suffix(".vllm.log") if job.log else None,
        fix_cpu_expand=True,  # vLLM 0.32's CPU expand kernel breaks T > 0 (docs/vllm-t1.md)
    )
    cell = {"target": wc["target"], "draft_arch": wc["arch"], "loss": job.params["loss"]}
    df = df.assign(**cell, seed=int(wc["seed"]))
    atomic_write_text(out, df.to_csv(index=False))
    keys = ("temperature", "engine", "generate_seconds")
    summary = {
        "vllm_version": answer["vllm_version"],
        "draft_sample_method": cfg.eval.served_draft_sampling,
        "fix_cpu_expand": True,
        "load_seconds": answer["load_seconds"],
        "runs": [{k: r[k] for k in keys} for r in answer["runs"]],
    }
    atomic_write_text(job.output["summary"], json.dumps(summary, indent=1))
    for (domain, t), g in df.groupby(["domain", "temperature"]):
        tau, se = served_tau(g)
        ctx.say(f"{domain} T={t}: served τ {tau:.3f} ± {se:.3f} over {len(g)} prompts")
