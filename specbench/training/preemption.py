"""Stopping a training job cleanly on SIGTERM or SIGUSR1: checkpoint, then exit non-zero.

A scheduler warns a job before it kills it: SLURM's ``--signal=TERM@600`` (the SLURM
profile's ``train_group``) sends SIGTERM to every process of the job's steps 600 s before
its time limit, as a preemption or ``scancel`` does with ``KillWait`` seconds' notice.
While :class:`StopSignals` is active, such a signal only sets a flag; the trainer reads it
at the end of each optimizer step (every rank: the flag travels with the step's log lines,
so all ranks stop at the same step), writes the group's checkpoint and raises
:class:`Preempted`. The job exits non-zero, Snakemake resubmits it (``retries``), and the
new job resumes from that checkpoint to the drafts an uninterrupted run trains.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(RuntimeError):
    """Training stopped on a signal after writing its checkpoint (or with none to write)."""

    def __init__(self, signame: str, step: int, saved: bool) -> None:
        self.signum = int(getattr(signal, signame))
        where = "checkpoint written" if saved else "no checkpoint folder: it restarts from 0"
        super().__init__(f"stopped by {signame} after step {step} ({where})")


class StopSignals:
    """Within ``with StopSignals() as stop:``, SIGTERM/SIGUSR1 set ``stop.received``.

    The previous handlers come back on exit. Outside the main thread (where Python cannot
    install handlers) it installs nothing and ``received`` stays None.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
