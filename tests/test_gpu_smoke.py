"""``make gpu-smoke`` on a machine without a GPU, and the parts of it a CPU can run.

The script is written for the first hour on a real GPU; here it must say there is no GPU
and exit 0, and its paper-group step (the ``train_group`` job of a paper config's first
group, for 2 steps on synthetic responses) must run as is on a tiny twin.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from groups import group_data
from ranks import ROOT, clean_env

sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of scripts beside the package
from benchmarks import gpu_smoke  # noqa: E402


@pytest.mark.skipif(sys.platform != "linux", reason="the no-GPU path is checked on Linux CI")
def test_without_a_gpu_it_reports_the_environment_and_exits_0():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_smoke"], cwd=ROOT, env=clean_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA GPU on this machine" in done.stdout
    assert "train.autocast: auto -> autocast:" in done.stdout and "torch" in done.stdout


def test_the_paper_group_step_runs_the_real_job_for_two_steps(tmp_path):
    """The first group of (target, eagle3) with the config's group size: every draft of it
    trains 2 steps and is written, from synthetic responses of the asked length."""
    data = group_data(tmp_path / "data", ["kl", "lk_lambda", "lk_alpha(reduce=batch)"])
    raw = data["cfg"]
    raw["targets"]["tiny"]["group_size"] = 2
    work = tmp_path / "work"
    gpu_smoke.group_steps(raw, "tiny", "eagle3", data["model"], work, response_tokens=40)
    rows = [json.loads(line) for line in (work / "train.jsonl").read_text().splitlines()]
    assert len(rows) == raw["train"]["batch_size"] and len(rows[0]["response_ids"]) == 40
    for folder in ("d0", "d1"):  # the first group: kl and lk_lambda
        status = json.loads((work / "group" / folder / "train_status.json").read_text())
        assert status == {"status": "complete", "steps": 2}
    assert not (work / "group" / "d2").exists()
