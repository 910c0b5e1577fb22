"""Stage ``evaluate_draft``: every registered τ estimator of one draft, every domain × T.

Each rank takes every ``world``-th cache batch (expected τ) and every ``world``-th prompt
(live decoding, one random stream per prompt), so the tables do not depend on the number of
ranks; rank 0 gathers them. Under ZeRO-3 the target is wrapped in :class:`Lockstep`, so ranks
that decode different numbers of rounds still run their forwards in step.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from specbench.artifacts import EvalMetrics, TrainStatus
from specbench.data.splits import eval_split
from specbench.decoding import Setting
from specbench.decoding.estimators import measure_all, per_prompt_rows
from specbench.dist import Lockstep, gather_to_rank0
from specbench.drafts import load_draft
from specbench.drafts.align import usable_k
from specbench.features.cache import FeatureCache
from specbench.io import atomic_write_text, progress
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.info import target_info_from_checkpoint
from specbench.targets.loading import load_tokenizer
from specbench.targets.runner import TargetRunner

Cell = tuple[int, str]  # (temperature, domain)


def _cache_path(caches: list[str], split: str, domain: str) -> str:
    want = (Path(split) / f"{domain}.safetensors").as_posix()
    found = [c for c in caches if Path(c).as_posix().endswith(want)]
    if not found:
        raise FileNotFoundError(f"no evaluation cache .../{want} among the job's inputs {caches}")
    return found[0]


def run(job: Job) -> None:
    ctx = start(job)
    cfg, wc = ctx.cfg, job.wildcards
    model = ctx.target()
    eos = load_tokenizer(job.params["model"]).eos_token_id
    first = FeatureCache(job.input["caches"][0])
    info = target_info_from_checkpoint(job.params["model"], first.draft_to_target)
    draft = load_draft(Path(job.input["draft"]).parent, info).to(ctx.device).eval()
    lockstep = ctx.zero3 and ctx.world > 1
    layers = draft.target_layers(model.config.num_hidden_layers)  # live decoding's features
    runner = TargetRunner(Lockstep(model) if lockstep else model, layers)
    k = usable_k(draft, cfg.eval.k_for(wc["arch"]))
    setting = Setting(
        draft, k, int(wc["seed"]), runner=runner, live_prompts=cfg.eval.live_prompts,
        live_new_tokens=cfg.eval.live_new_tokens, unbiased_anchors=cfg.eval.unbiased_anchors,
        eos_token_id=eos, shard=(ctx.rank, ctx.world),
    )  # fmt: skip
    mine: dict[Cell, dict[str, dict]] = {}  # cell -> estimator name -> prompt -> sums
    done, cells, t0 = 0, len(cfg.temperatures) * len(cfg.domains), time.time()
    for temperature in cfg.temperatures:
        split = eval_split(temperature)
        for domain in cfg.domains:
            cache = FeatureCache(_cache_path(job.input["caches"], split, domain))
            mine[(temperature, domain)] = found = measure_all(setting, cache, temperature)
            done += 1
            counts = ", ".join(f"{len(v)} {name}" for name, v in found.items())
            ctx.say(
                f"{domain} T={temperature}: rank 0: {counts} "
                f"[{progress(done, cells, time.time() - t0, 'cells')}]"
            )
    if lockstep:
        runner.model.drain()  # keep answering the other ranks' forwards until all are done
    parts = gather_to_rank0(mine, f"{job.output['metrics']}.parts")
    if parts is None:
        return
    rows = []
    for temperature in cfg.temperatures:
        for domain in cfg.domains:
            found = {
                name: {pid: s for p in parts for pid, s in p[(temperature, domain)][name].items()}
                for name in parts[0][(temperature, domain)]
            }
            rows += per_prompt_rows(domain, temperature, found)
            counts = ", ".join(f"{len(v)} {name}" for name, v in found.items())
            ctx.say(f"{domain} T={temperature}: prompts: {counts}")
    write_outputs(job, rows, k, draft, info, cfg.temperatures, cfg.domains)


def write_outputs(job: Job, rows: list[dict], k: int, draft, info, temperatures, domains) -> None:
    """``per_prompt.csv`` (per-position counts as flat columns) and ``metrics.json``."""
    df = pd.DataFrame(rows)
    for j in range(k):
        at = lambda v, j=j: v[j] if isinstance(v, list) else 0  # noqa: E731 (no live run: 0)
        df[f"reached_{j + 1}"] = df["reached"].map(at)
        df[f"accepted_{j + 1}"] = df["accepted_at"].map(at)
    df = df.drop(columns=["reached", "accepted_at"])
    wc = job.wildcards
    meta = EvalMetrics(
        target=wc["target"],
        draft_arch=wc["arch"],
        loss=job.params["loss"],
        seed=int(wc["seed"]),
        k_eval=k,
        # all of the draft's own parameters, frozen ones too (MTP's released experts); the
        # target's embedding and head are shared buffers and do not count
        draft_params=sum(p.numel() for p in draft.parameters()),
        trainable_params=draft.num_trainable_parameters(),
        cost_ratio=draft.flops_per_step() / info.target_flops_per_token,
        cells=[{"domain": d, "temperature": t} for t in temperatures for d in domains],
        train_status=TrainStatus.label_of(Path(job.input["draft"]).parent),
    )
    atomic_write_text(job.output["per_prompt"], df.to_csv(index=False))
    meta.write(job.output["metrics"])
