"""Stage ``plots``: τ gains with CIs, and per-position acceptance, as PNG."""

from __future__ import annotations

from specbench.aggregation.plots import write_plots
from specbench.jobs import Job
from specbench.jobs.common import start


def run(job: Job) -> None:
    start(job)
    i, o = job.input, job.output
    write_plots(i["tau"], i["gains"], o["gains"], o["acceptance"])
