"""Fixtures shared by test modules: `datasets` offline, one local smoke run per session, one
torch thread for the modules of tiny models."""

from __future__ import annotations

import os

# Under pytest-xdist (`make test`: 3 workers on 2 cores) each test process, and every process
# it starts (Snakemake jobs, ranks, vLLM), runs one OpenMP thread: with more, the threads of
# oversubscribed cores spin at OpenMP barriers waiting for each other. Measured on a 2-core
# EPYC with AVX512-BF16, the whole suite: 15 min 46 s and 1,361 CPU-s -> 14 min 0 s and 1,155 CPU-s.
# Set before torch is imported (it reads the variable then); a value already set is kept
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from repo_copy import copy_repo


@dataclass(frozen=True)
class SmokeRun:
    path: Path  # a repo copy with the smoke matrix run in it (results/, .snakemake/)
    seconds: float  # the run's wall time

    def copy(self, dst: Path) -> Path:
        """A private copy to change (timestamps kept, so Snakemake sees nothing to redo)."""
        shutil.copytree(self.path, dst, symlinks=True)
        return dst


@pytest.fixture(scope="session")
def smoke_local(tmp_path_factory, worker_id) -> SmokeRun:
    """``snakemake --cores 2 --configfile configs/smoke.yaml`` in a repo copy, once.

    The end-to-end tests (tests/test_pipeline.py, tests/test_report.py) and the SLURM
    comparison (tests/test_slurm.py) share it; read it as it is, or :meth:`SmokeRun.copy` it
    first. Under pytest-xdist they run on different workers (``make test``), so the run is
    shared between workers: the first to ask runs it under a file lock in the session's
    common temp folder, the others wait for it and read where it is (a failed run is
    recorded, so a second worker fails at once rather than running it again).
    """
    if worker_id == "master":  # one process
        return run_smoke(tmp_path_factory.mktemp("smoke_local"))
    root = tmp_path_factory.getbasetemp().parent  # common to this session's workers
    record = root / "smoke_local.json"
    with FileLock(str(root / "smoke_local.lock")):
        if not record.is_file():
            try:
                run = run_smoke(root / "smoke_local")
                record.write_text(json.dumps({"path": str(run.path), "seconds": run.seconds}))
            except BaseException as err:
                record.write_text(json.dumps({"error": str(err)[-4000:]}))
                raise
    saved = json.loads(record.read_text())
    assert "error" not in saved, f"the shared smoke run failed:\n{saved.get('error')}"
    return SmokeRun(Path(saved["path"]), saved["seconds"])


def run_smoke(folder: Path) -> SmokeRun:
    work = copy_repo(folder)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "configs/smoke.yaml"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"local smoke run failed:\n{proc.stderr[-4000:]}"
    return SmokeRun(work, time.perf_counter() - t0)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """`datasets`, with its cache in tmp_path and the network off (as on our machines)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return datasets


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    its models are tiny, so per-op threading overhead dominates and 2 busy cores thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# the long xdist groups first (`make test` runs `--dist loadgroup` on 2 workers): a worker takes
# work units in collection order, so collected last (alphabetically) the smoke group ran alone
# at the end. The smoke run's tests and the SLURM ones are two groups, on two workers, that
# share the one smoke run (``smoke_local``). Stable: the rest keep their order
FIRST = {"smoke": 0, "slurm": 1, "vllm": 2, "plan": 3}


def pytest_collection_modifyitems(config, items):
    def rank(item: pytest.Item) -> int:
        mark = item.get_closest_marker("xdist_group")
        return FIRST.get(mark.args[0] if mark else None, len(FIRST))

    items.sort(key=rank)
