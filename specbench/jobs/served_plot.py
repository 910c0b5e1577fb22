"""Stage ``served_plot`` (``eval.served``): served vs estimated τ from ``tau.csv``, as PNG."""

from __future__ import annotations

import pandas as pd

from specbench.aggregation.served_plot import plot_served
from specbench.jobs import Job
from specbench.jobs.common import start


def run(job: Job) -> None:
    start(job)
    plot_served(pd.read_csv(job.input["tau"]), job.output["plot"])
