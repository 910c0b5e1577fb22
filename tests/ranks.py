"""Shared by the tests that start rank groups (ZeRO-3, launched jobs) in subprocesses."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
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


def clean_env() -> dict[str, str]:
    """This environment without a launcher's variables; the repo importable; 1 thread/rank."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"  # tiny models: 2 ranks on 2 cores, no oversubscription
    return env


def run_group(cmd: list[str], cwd: Path, timeout: float, what: str) -> str:
    """Run ``cmd`` (one process or a torchrun group) to success; return its output.

    A rank out of lockstep hangs in a collective: on timeout the whole process group is
    killed and the test fails with the output's tail.
    """
    proc = subprocess.Popen(
        cmd, env=clean_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"{what} timed out (ranks out of lockstep?)\n{log[-4000:]}")
    assert proc.returncode == 0, log[-6000:]
    return log
