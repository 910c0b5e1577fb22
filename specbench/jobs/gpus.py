"""Which GPUs a job uses when several jobs share one machine without a scheduler.

Snakemake's ``--resources gpu=N`` caps how many GPUs the running jobs ask for in total, but
does not say which: every job would start at ``cuda:0``. :func:`claim_gpus` picks free ones
with an exclusive ``flock`` per GPU in a machine-wide folder and exports them as
``CUDA_VISIBLE_DEVICES`` for the job (and the ranks it launches). Locks die with the process,
so a killed job frees its GPUs. Under SLURM (``SLURM_JOB_ID`` set) the scheduler has already
bound the job's GPUs, and nothing is claimed. A job that asked for no GPU sees none (an empty
``CUDA_VISIBLE_DEVICES``), so it runs on the CPU instead of crowding onto ``cuda:0``.

The locks live in ``SPECBENCH_GPU_LOCK_DIR`` (default ``/tmp/specbench-gpu-locks``, not
``$TMPDIR``, which Snakemake may set per job): every run on the machine that shares it
coordinates. The launcher holds the locks; its torchrun ranks are its children, which
Snakemake stops together with it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LOCK_DIR = Path(os.environ.get("SPECBENCH_GPU_LOCK_DIR", "/tmp/specbench-gpu-locks"))


def gpu_pool() -> list[str]:
    """The GPUs this machine lets jobs use: ``CUDA_VISIBLE_DEVICES`` if set, else all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    # nvidia-smi, not torch.cuda: counting through CUDA could initialise it in this process,
    # after which a CUDA_VISIBLE_DEVICES set by claim_gpus would be ignored here
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def _try_lock(path: Path) -> IO | None:
    f = open(path, "a")  # noqa: SIM115 - held open as the lock
    try:
        os.chmod(path, 0o666)  # another user's job may lock it next
    except PermissionError:  # created by another user, who made it shareable
        pass
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f
    except BlockingIOError:
        f.close()
        return None


@contextmanager
def claim_gpus(
    n: int, pool: list[str] | None = None, lock_dir: Path = LOCK_DIR, poll_seconds: float = 5.0
) -> Iterator[list[str] | None]:
    """Hold ``n`` free GPUs of ``pool`` (default :func:`gpu_pool`) while the block runs.

    Waits until ``n`` are free (jobs started by Snakemake within its ``gpu`` cap find them
    free at once, unless another run shares the machine). Yields the claimed ids, exported
    as ``CUDA_VISIBLE_DEVICES`` inside the block, or ``None`` when nothing is claimed: no
    GPU asked for, none present, or the scheduler binds GPUs itself.
    """
    if "SLURM_JOB_ID" in os.environ:
        yield None
        return
    if n <= 0:  # a CPU job: hide the GPUs
        with _visible(""):
            yield None
        return
    pool = gpu_pool() if pool is None else pool
    if not pool:
        yield None
        return
    if n > len(pool):
        raise ValueError(f"job asks for {n} GPUs, the machine has {len(pool)}: {pool}")
    if not lock_dir.exists():
        lock_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(lock_dir, 0o1777)  # shared by every user's runs, like /tmp itself
    waiting = False
    while True:
        held: list[tuple[str, IO]] = []
        for gpu in pool:
            f = _try_lock(lock_dir / f"gpu{gpu}.lock")
            if f is not None:
                held.append((gpu, f))
                if len(held) == n:
                    break
        if len(held) == n:
            break
        for _, f in held:  # all or nothing: never sit on some GPUs while waiting for more
            f.close()
        if not waiting:
            print(f"waiting for {n} free GPUs of {pool} (locks in {lock_dir})", flush=True)
            waiting = True
        time.sleep(poll_seconds)
    try:
        with _visible(",".join(g for g, _ in held)):
            yield [g for g, _ in held]
    finally:  # after the env is restored: whoever takes these GPUs next sees it so
        for _, f in held:
            f.close()


@contextmanager
def _visible(devices: str) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES=devices`` inside the block, the previous value after it."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
