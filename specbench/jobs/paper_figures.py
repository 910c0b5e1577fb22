"""Stage ``paper_figures``: our measurements beside the papers' published numbers."""

from __future__ import annotations

from specbench.aggregation.paper import write_paper_figures
from specbench.jobs import Job
from specbench.jobs.common import start


def run(job: Job) -> None:
    ctx = start(job)
    i = job.input
    both = write_paper_figures(i["tau"], i["gains"], job.params["reference"], job.output["dir"])
    ctx.say(both.to_string())
