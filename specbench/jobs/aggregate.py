"""Stage ``aggregate``: ``tau.csv`` and the paired gains of every loss vs the baseline."""

from __future__ import annotations

from pathlib import Path

from specbench.aggregation.tables import gains_markdown, write_tables
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.losses import canonical


def run(job: Job) -> None:
    ctx = start(job)
    cfg, out = ctx.cfg, job.output
    tau, gains = write_tables(
        [Path(p).parent for p in job.input["metrics"]],
        canonical(cfg.baseline_loss),
        cfg.eval.bootstrap,
        cfg.note,
        out["tau"],
        out["gains"],
        out["gains_md"],
    )
    ctx.say(tau.to_string())
    ctx.say(gains_markdown(gains))
