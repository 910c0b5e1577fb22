"""Shared by the tests that start rank groups (ZeRO-3, launched jobs) in subprocesses."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module marks: the `zero3` marker, skipped with the reason where DeepSpeed is missing
ZERO3_MARKS = [
    pytest.mark.zero3,
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="deepspeed is not installed (pip install deepspeed==0.19.8, or the zero3 extra)",
    ),
]
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


TAG_VAR = "SPECBENCH_TEST_GROUP"  # marks every process a test starts, ranks included


def clean_env() -> dict[str, str]:
    """This environment without a launcher's variables; the repo importable; 1 thread/rank."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"  # tiny models: 2 ranks on 2 cores, no oversubscription
    return env


def tagged(tag: str) -> list[int]:
    """PIDs of the live processes whose environment carries ``TAG_VAR=tag``.

    The environment is inherited by every descendant, whatever session or process group it
    moves to (``torch.distributed.run`` starts its ranks in sessions of their own, so
    killing the launcher's group leaves them running) and even once the launcher is gone
    and the ranks have been re-parented.
    """
    needle = f"{TAG_VAR}={tag}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes()
            stat = (proc / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in env.split(b"\0") and stat.rsplit(")", 1)[1].split()[0] != "Z":
            pids.append(int(proc.name))
    return pids


def kill_tagged(tag: str) -> None:
    """SIGKILL every process carrying ``tag`` until none is left (they may be forking)."""
    for _ in range(50):
        pids = tagged(tag)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def run_group(cmd: list[str], cwd: Path, timeout: float, what: str, tag: str | None = None) -> str:
    """Run ``cmd`` (one process or a torchrun group) to success; return its output.

    A rank out of lockstep hangs in a collective: on timeout every process the command
    started (found by ``tag``, an environment variable they all inherit) is killed, and the
    test fails with the output's tail, within a few seconds of ``timeout``. Whatever the
    outcome, no process of the command is left behind.
    """
    tag = tag or uuid.uuid4().hex
    env = clean_env() | {TAG_VAR: tag}
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tagged(tag)
        try:  # every writer of the pipe is dead: the rest of the output is there
            log, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            log = "(no output: the pipe stayed open after the kill)"
        why = f"{what} timed out after {timeout:.0f}s (ranks out of lockstep?)"
        pytest.fail(f"{why}\n{log[-4000:]}")
    finally:
        kill_tagged(tag)  # a launcher that exited may leave ranks behind
    assert proc.returncode == 0, log[-6000:]
    return log
