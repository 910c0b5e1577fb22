"""Stage ``aggregate``: ``tau.csv`` and the paired gains of every loss vs the baseline."""

from __future__ import annotations

from pathlib import Path

from specbench.aggregation.served import served_cells, with_served
from specbench.aggregation.tables import gains_markdown, write_tables
from specbench.io import atomic_write_text
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
    if job.input.get("served"):  # eval.served: vLLM's τ beside the estimates
        tau = with_served(tau, served_cells(job.input["served"]))
        atomic_write_text(out["tau"], tau.to_csv(index=False))
    ctx.say(tau.to_string())
    ctx.say(gains_markdown(gains))
