"""Stage ``learning_curve``: the table and plot of τ against training steps and data."""

from __future__ import annotations

from pathlib import Path

from specbench.aggregation.curve import write_curve
from specbench.jobs import Job
from specbench.jobs.common import start


def run(job: Job) -> None:
    ctx = start(job)
    points = [Path(p).parent for p in job.input["metrics"]]
    table = write_curve(points, job.params.get("vocab"), job.output["table"], job.output["plot"])
    ctx.say(table.to_string(index=False))
