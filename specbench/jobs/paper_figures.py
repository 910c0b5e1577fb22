"""Stage ``paper_figures``: our measurements beside the papers' published numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from specbench.aggregation.paper import write_paper_figures
from specbench.jobs import Job
from specbench.jobs.common import start


def run(job: Job) -> None:
    ctx = start(job)
    i = job.input
    hub_ids = {e.name: e.path for e in ctx.cfg.external_drafts}  # the model cards' key
    out = job.output["dir"]
    both = write_paper_figures(i["tau"], i["gains"], job.params["reference"], out, hub_ids)
    ctx.say(both.to_string())
    ctx.say(pd.read_csv(Path(out) / "released_drafts.csv").to_string())
    ctx.say(pd.read_csv(Path(out) / "tvdpp_vs_paper.csv").to_string())
