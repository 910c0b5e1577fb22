"""Stages ``train_draft`` and ``curve_train``: one draft trained on the cached features.

A learning-curve point (``curve_train``) also has the wildcards ``steps`` (optimizer steps,
replacing ``train.steps``) and ``data`` (the share of the training sequences).
"""

from __future__ import annotations

from pathlib import Path

from specbench.features.cache import FeatureCache
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.info import target_info_from_checkpoint
from specbench.training.recipe import train_cell


def run(job: Job) -> None:
    ctx = start(job)
    wc, train = job.wildcards, ctx.cfg.train
    arch = wc["arch"]
    if "steps" in wc:
        train = train.model_copy(update={"steps": int(wc["steps"]), "epochs": None})
    cache = FeatureCache(job.input["cache"])
    info = target_info_from_checkpoint(job.params["model"], cache.draft_to_target)
    train_cell(
        cache,
        info,
        arch,
        ctx.cfg.hparams_for(wc["target"], arch),
        job.params["loss"],
        int(job.wildcards["seed"]),
        train,
        Path(job.output["model"]).parent,
        device=ctx.device,  # the job's GPU (resources: gpu=1), else the CPU
        log=ctx.say,
        data_fraction=float(wc.get("data", 1.0)),
    )
