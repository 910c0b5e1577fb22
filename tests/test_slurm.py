"""The SLURM path against a real SLURM: a one-node cluster on localhost (slurm-wlm + munge).

Runs the smoke matrix (every rule; one architecture's drafts) through ``snakemake --executor
slurm --workflow-profile workflow/profiles/slurm`` and checks that its ``tau.csv`` rows equal a
local ``--cores 2`` run's.
Needs root (it installs Debian's slurm-wlm and munge when missing and writes
/etc/slurm/slurm.conf); skips with the reason otherwise. Daemons are stopped by PID at the end,
pass or fail. Run alone with ``pytest -m slurm -s`` (-s shows the wall times).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from repo_copy import copy_repo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "slurm"))
import localslurm  # noqa: E402
import slurm_profile  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
PROFILE = "workflow/profiles/slurm"
SMOKE = "configs/smoke.yaml"
ARCH = "eagle3"  # the architecture the SLURM run trains and evaluates
# columns that measure this machine, not the method: decoding wall-clock time differs per run
VOLATILE = {"wall_seconds"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    reason = localslurm.unavailable_reason() or localslurm.ensure_installed()
    if reason:
        pytest.skip(reason)
    c = localslurm.LocalSlurm(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(c.stop)  # registered before start: stops whatever did come up
    try:
        c.start()
    except RuntimeError as err:  # a foreign slurm.conf: not ours to overwrite
        pytest.skip(str(err))
    return c


def run_logged(cmd: list[str], cwd: Path, timeout: float, log: Path) -> tuple[int, float]:
    """Run in its own process group (killed as a group on timeout); (returncode, wall s)."""
    # each copy imports its own specbench, not the editable install's working tree
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    t0 = time.monotonic()
    with open(log, "w") as out:
        p = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)
            rc = 124
    return rc, time.monotonic() - t0


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def slurm_job_logs(work: Path, n: int = 20) -> str:
    logs = sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    return "\n".join(f"--- {p.relative_to(work)} ---\n{tail(p, n)}" for p in logs[-5:])


def test_profile_uses_the_plugins_resource_names():
    profile = yaml.safe_load((ROOT / PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for block in slurm_profile.resource_blocks(profile):
        assert set(block) <= slurm_profile.PLUGIN_RESOURCES, set(block)
    # every rule that asks for GPUs (``gpu=`` in its resources) gets a GPU partition
    gpu_rules = [
        block.split(":", 1)[0].strip()
        for smk in sorted((ROOT / "workflow/rules").glob("*.smk"))
        for block in re.split(r"(?m)^\s*rule ", smk.read_text())[1:]
        if "gpu=" in block
    ]
    assert {"responses", "features_train", "train_draft", "train_group", "evaluate_draft"} <= set(
        gpu_rules
    )
    for rule in gpu_rules:
        res = profile["set-resources"][rule]
        assert {"slurm_partition", "mem_mb", "runtime", "cpus_per_gpu"} <= set(res), rule
        assert "gpu" not in res and "cpus_per_task" not in res, rule  # from the config / wins


def test_srun_and_sbatch(cluster, tmp_path):
    assert cluster.run(["srun", "-n1", "hostname"], timeout=120).stdout.strip() == cluster.host
    out = tmp_path / "job.out"
    cluster.run(
        [
            "sbatch",
            "--wait",
            "-o",
            str(out),
            "--wrap",
            "echo job $SLURM_JOB_ID on $(hostname -s); test -r /etc/slurm/slurm.conf",
        ],
        timeout=180,
    )
    assert out.read_text().startswith("job "), out.read_text()


def test_snakemake_submits_through_the_plugin(cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(
        "rule all:\n    input: 'b.txt'\n"
        "rule a:\n    output: 'a.txt'\n    resources: gpu=0\n"
        "    shell: 'echo $SLURM_JOB_ID > {output}'\n"
        "rule b:\n    input: 'a.txt'\n    output: 'b.txt'\n    shell: 'cat {input} > {output}'\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--executor",
        "slurm",
        "--jobs",
        "2",
        "--slurm-status-command",
        "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--latency-wait",
        "10",
        "--default-resources",
        f"slurm_partition={cluster.partition}",
        "mem_mb=500",
        "runtime=10",
    ]
    rc, _ = run_logged(cmd, tmp_path, 600, tmp_path / "snakemake.log")
    assert rc == 0, f"{tail(tmp_path / 'snakemake.log')}\n{cluster.diagnostics()}"
    assert (tmp_path / "b.txt").read_text().strip().isdigit()  # ran inside a SLURM job


# Snakemake with the plugin's status checks every 5 s. The plugin adds 10 s to the interval
# after every check that sees no job finish, up to 180 s (a courtesy to a shared slurmctld):
# on a one-node test cluster that only adds up to minutes of idle lag along the smoke
# matrix's chain of dependent jobs. Nothing else about the plugin changes.
STEADY_POLLING = (
    "import sys, snakemake_executor_plugin_slurm as slurm\n"
    "slurm.Executor.next_seconds_between_status_checks = property("
    "lambda self: 5, lambda self, value: None)\n"
    "from snakemake.cli import main\n"
    "sys.argv[0] = 'snakemake'\n"
    "main()\n"
)


def test_smoke_matrix_through_slurm_equals_local(cluster, request, tmp_path_factory):
    via_slurm = copy_repo(tmp_path_factory.mktemp("via_slurm"))
    slurm_profile.localize(
        ROOT / PROFILE / "config.yaml",
        via_slurm / PROFILE / "config.yaml",
        partition=cluster.partition,
        mem_mb=4000,
    )
    snakemake = [sys.executable, "-c", STEADY_POLLING]
    # every rule of the smoke DAG, with one architecture's drafts (ARCH): the others' train
    # and evaluation jobs are the same rules again, and would double the test's time
    cmd = [*snakemake, "--executor", "slurm", "--workflow-profile", PROFILE, "--configfile", SMOKE,
           "--config", f"draft_archs=[{ARCH}]"]  # fmt: skip
    rc, t_slurm = run_logged(cmd, via_slurm, 3000, via_slurm / "snakemake.log")
    # the session's local run (read only), asked for only now: under xdist another worker runs
    # it (conftest.smoke_local) while this one's SLURM run goes on, mostly waiting on SLURM
    smoke_local = request.getfixturevalue("smoke_local")
    local, t_local = smoke_local.path, smoke_local.seconds
    print(f"\nsmoke matrix wall time: local --cores 2 {t_local:.0f}s, SLURM {t_slurm:.0f}s")
    assert rc == 0, (
        f"SLURM smoke run failed ({rc}):\n{tail(via_slurm / 'snakemake.log')}\n"
        f"{slurm_job_logs(via_slurm)}\n{cluster.diagnostics()}"
    )
    jobs = cluster.run(["squeue", "-h", "-t", "all", "-o", "%i"]).stdout.split()
    assert jobs, "no job went through SLURM"

    keys = ["target", "draft_arch", "loss", "domain", "temperature", "seed"]

    def rows(work: Path, table: str) -> pd.DataFrame:
        df = pd.read_csv(work / "results/tables" / table)
        df = df[df["draft_arch"] == ARCH]
        return df.sort_values([k for k in keys if k in df.columns], ignore_index=True)

    tables = []
    for work in (local, via_slurm):
        tau = rows(work, "tau.csv")
        assert VOLATILE <= set(tau.columns), "the volatile columns changed: update VOLATILE"
        tables.append(tau.drop(columns=sorted(VOLATILE)))
    archs = set(pd.read_csv(via_slurm / "results/tables/tau.csv")["draft_arch"])
    assert archs == {ARCH}, archs
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    gains = [rows(w, "gains.csv") for w in (local, via_slurm)]
    pd.testing.assert_frame_equal(gains[0], gains[1], check_exact=True)


# the shipped rule's name and wildcard, so the profile's train_group resources (expressions
# of wildcards.target) apply as they do to the real rule
PREEMPT_SNAKEFILE = """
rule all:
    input: "spread/group"

rule train_group:
    output: directory("{{target}}/group")
    resources: gpu=0
    shell: "{python} -c {script!r} job.json"
"""
LAUNCH = (
    "import sys; from specbench.jobs import Job, exit_on_preemption, launch\n"
    "with exit_on_preemption(): launch(Job.load(sys.argv[1]))"
)


def test_a_group_job_warned_by_slurm_checkpoints_and_its_retry_resumes(cluster, tmp_path):
    """A ``train_group`` job submitted with the shipped profile's settings for that rule
    (``retries``, ``slurm_extra: --signal=TERM@600``) gets, mid-run, the signal SLURM sends
    600 s before the time limit (``scancel --signal=TERM``: every step's processes, not the
    batch shell). It checkpoints and fails; Snakemake resubmits it; the retry resumes to
    the drafts of an uninterrupted run, bitwise."""
    from groups import drafts, group_data, group_job

    from specbench.jobs import launch

    runs = [("kl", 0), ("lk_lambda", 1)]
    data = group_data(tmp_path / "data", [loss for loss, _ in runs])
    data["cfg"]["train"].update(batch_size=6, micro_batch_size=1, steps=60)
    launch(group_job(data, tmp_path / "one", runs))  # the uninterrupted run
    work = tmp_path / "work"
    work.mkdir()
    group_job(data, work / "spread", runs).save(work / "job.json")
    (work / "Snakefile").write_text(PREEMPT_SNAKEFILE.format(python=sys.executable, script=LAUNCH))
    profile = slurm_profile.localize(
        ROOT / PROFILE / "config.yaml", work / "profile" / "config.yaml",
        partition=cluster.partition, mem_mb=2000,
    )  # fmt: skip
    assert profile["retries"] >= 1
    assert profile["set-resources"]["train_group"]["slurm_extra"] == "'--signal=TERM@600'"
    cmd = [sys.executable, "-m", "snakemake", "--executor", "slurm", "--workflow-profile",
           "profile", "--latency-wait", "5", "--slurm-keep-successful-logs"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    record = work / "spread" / "ckpt" / "step"
    with open(work / "snakemake.log", "w") as out:
        smk = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while not (record.is_file() and json.loads(record.read_text())["step"] >= 4):
                assert smk.poll() is None and time.monotonic() < deadline, tail(
                    work / "snakemake.log"
                )
                time.sleep(0.5)
            first = cluster.run(["squeue", "-h", "-t", "running", "-o", "%i"]).stdout.split()
            cluster.run(["scancel", "--signal=TERM", *first])
            rc = smk.wait(timeout=900)
        finally:
            if smk.poll() is None:
                smk.kill()
    logs = sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"), key=lambda p: int(p.stem))
    text = [p.read_text(errors="replace") for p in logs]
    assert rc == 0, f"{tail(work / 'snakemake.log')}\n{slurm_job_logs(work)}"
    assert len(first) == 1 and len(logs) == 2, (first, logs)  # the job, then its retry
    said = [line for line in text[0].splitlines() if "preempted: stopped by SIGTERM" in line]
    assert said and "(checkpoint written)" in said[0], text[0][-3000:]
    step = int(said[0].split("after step ")[1].split()[0])
    assert f"resumed from {work / 'spread' / 'ckpt'} at step {step}" in text[1], text[1][-3000:]
    print(f"\nSLURM: SIGTERM at step {step} of 60, the retry resumed there")
    one, retried = drafts(tmp_path / "one" / "group", runs), drafts(work / "spread" / "group", runs)
    assert all(torch.equal(one[n][k], retried[n][k]) for n in one for k in one[n])
