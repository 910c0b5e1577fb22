"""GPU claims for jobs sharing one machine: disjoint, waiting, released, env restored."""

from __future__ import annotations

import os
import threading
import time

import pytest

from specbench.jobs.gpus import claim_gpus

POOL = ["0", "1", "2", "3"]


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_side_by_side_jobs_get_disjoint_gpus(tmp_path):
    with claim_gpus(2, POOL, tmp_path) as a:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(a)
        with claim_gpus(2, POOL, tmp_path) as b:
            assert len(a) == len(b) == 2 and not set(a) & set(b)
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(b)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # restored on the way out


def test_a_job_waits_for_enough_free_gpus(tmp_path):
    got: list = []
    second = claim_gpus(2, POOL, tmp_path, poll_seconds=0.02)
    with claim_gpus(3, POOL, tmp_path):
        waiter = threading.Thread(target=lambda: got.append(second.__enter__()))
        waiter.start()
        time.sleep(0.3)
        assert not got, "only one GPU was free: the second job must wait, holding none"
    waiter.join(timeout=5)
    assert got and len(got[0]) == 2 and set(got[0]) <= set(POOL)
    second.__exit__(None, None, None)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_nothing_is_claimed_without_gpus_or_under_slurm(tmp_path, monkeypatch):
    with claim_gpus(0, POOL, tmp_path) as none:  # a CPU job sees no GPU at all
        assert none is None and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with claim_gpus(2, [], tmp_path) as none:
        assert none is None
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with claim_gpus(2, POOL, tmp_path) as none:
        assert none is None and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_more_gpus_than_the_machine_has_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="asks for 5 GPUs, the machine has 4"):
        with claim_gpus(5, POOL, tmp_path):
            pass
