"""One rank of a launched job: ``python -m specbench.jobs JOB.json [JOB.json ...]``.

Started by torchrun (see :func:`specbench.jobs.launch`, one job per launch). Several job
files run one after the other in the same process group, each loading its own target (the
tests use this to pay for one interpreter start); a job's ranks start the next one as soon
as rank 0 has its parts, and meet it again in the next job's first collective.
"""

from __future__ import annotations

import signal
import sys

from specbench.jobs import STOP_SIGNALS, Job, exit_on_preemption, run_stage


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m specbench.jobs JOB.json [JOB.json ...]")
    for s in STOP_SIGNALS:  # the launcher ignores them; a rank takes them (the trainer's)
        signal.signal(s, signal.SIG_DFL)
    with exit_on_preemption():
        for path in argv:
            run_stage(Job.load(path))


if __name__ == "__main__":
    main(sys.argv[1:])
