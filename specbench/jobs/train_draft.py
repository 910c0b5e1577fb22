"""Stage ``train_draft``: one (architecture, loss, seed) trained on the cached features."""

from __future__ import annotations

from pathlib import Path

from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.training.recipe import train_cell


def run(job: Job) -> None:
    ctx = start(job)
    arch = job.wildcards["arch"]
    train_cell(
        job.input["cache"],
        job.params["model"],
        arch,
        ctx.cfg.arch_hparams.get(arch, {}),
        job.params["loss"],
        int(job.wildcards["seed"]),
        ctx.cfg.train,
        Path(job.output["model"]).parent,
        device=ctx.device,  # the job's GPU (resources: gpu=1), else the CPU
        log=ctx.say,
    )
