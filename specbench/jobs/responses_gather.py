"""Stage ``responses_gather``: the shards of a (target, domain)'s training responses, in one file.

The ``responses_shard`` jobs number their rows with the global ``prompt_index``; this stage
copies them line by line (never the whole file in memory) into the path the unsharded
``responses`` job writes, and checks that the indices run 0, 1, 2, … across the shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from specbench.io import atomic_write_lines
from specbench.jobs import Job
from specbench.jobs.common import start


def gathered_lines(paths: list[str]) -> Iterator[str]:
    """The shards' lines in order; raises ValueError where a ``prompt_index`` is out of step."""
    expected = 0
    for path in paths:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                index = json.loads(line)["prompt_index"]
                if index != expected:
                    raise ValueError(
                        f"{path}: prompt_index {index} where {expected} was expected: a shard "
                        "is missing or stale (delete the shards and rerun)"
                    )
                expected += 1
                yield line if line.endswith("\n") else line + "\n"


def run(job: Job) -> None:
    ctx = start(job)
    shards = list(job.input["shards"])
    rows = atomic_write_lines(job.output["responses"], gathered_lines(shards))
    ctx.say(f"{rows} responses gathered from {len(shards)} shards")
