"""End to end: the smoke matrix runs the whole DAG and writes every table and plot."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from specbench.config import load_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke")]


def _snakemake(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _job_stats(text: str) -> dict[str, int]:
    """The ``Job stats`` table of a dry run: rule → number of jobs."""
    rows = text.split("Job stats:", 1)[-1].splitlines()
    return {
        parts[0]: int(parts[1])
        for parts in (line.split() for line in rows)
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total"
    }


@pytest.fixture(scope="module")
def smoke_run(smoke_local, tmp_path_factory):
    """This module's own copy of the session's smoke run (its tests change files)."""
    return smoke_local.copy(tmp_path_factory.mktemp("pipeline") / "repo")


def test_smoke_matrix_writes_tables_and_plots(smoke_run):
    cfg = yaml.safe_load((smoke_run / "configs/smoke.yaml").read_text())
    c = load_config(cfg)  # an architecture may train its own losses (arch_losses)
    tau = pd.read_csv(smoke_run / "results/tables/tau.csv")
    per_loss = len(c.domains) * len(c.temperatures) * len(c.seeds)  # cells of one loss
    cells = sum(len(c.losses_for(a)) for a in c.draft_archs) * per_loss
    assert len(tau) == cells
    for col in (
        "tau_live",
        "tau_live_se",
        "tau_expected",
        "tau_expected_se",
        "tau_unbiased",
        "tau_unbiased_se",
        "n_prompts",
        "n_rounds",
        "a_1",
        "draft_params",
        "cost_ratio",
        "mbsu",
    ):
        assert col in tau.columns, col
    assert (tau["tau_live"] >= 1).all() and (tau["tau_expected"] >= 1).all()  # bonus token counted
    assert (tau["tau_live"] <= tau["k_eval"] + 1).all()
    t1 = tau[tau["temperature"] == 1]  # the unbiased estimator runs at T=1 only
    assert (t1["tau_unbiased"] >= 1).all() and (t1["tau_unbiased"] <= t1["k_eval"] + 1).all()
    assert tau[tau["temperature"] == 0]["tau_unbiased"].isna().all()
    gains = pd.read_csv(smoke_run / "results/tables/gains.csv")
    # one row per loss but the baseline, per (arch, domain, T): seeds are pooled
    per_arch = [len(c.losses_for(a)) - 1 for a in c.draft_archs]
    assert len(gains) == sum(per_arch) * per_loss // len(c.seeds)
    assert (gains["tau_expected_ci_lo"] <= gains["tau_expected_gain_pct"]).all()
    assert "Δτ" in (smoke_run / "results/tables/gains.md").read_text()
    for png in ("gains.png", "acceptance.png"):
        assert (smoke_run / "results/plots" / png).read_bytes()[:4] == b"\x89PNG"
    logs = list((smoke_run / "results/logs").rglob("*.log"))
    assert len(logs) >= cells // 2


def test_rerun_is_a_no_op_and_a_lost_table_is_rebuilt_alone(smoke_run):
    dry = _snakemake(smoke_run, "--configfile", "configs/smoke.yaml", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    (smoke_run / "results/tables/tau.csv").unlink()
    dry = _snakemake(smoke_run, "--configfile", "configs/smoke.yaml", "-n")
    jobs = _job_stats(dry.stdout + dry.stderr)
    assert jobs.get("aggregate") == 1 and jobs.get("plots") == 1, jobs
    for upstream in ("responses", "features", "train_draft", "evaluate_draft"):
        assert upstream not in jobs, jobs
    assert _snakemake(smoke_run, "--configfile", "configs/smoke.yaml").returncode == 0


def test_paper_figures_target(smoke_run):
    # the target goes before --configfile, which takes every word after it as a file
    proc = _snakemake(smoke_run, "paper_figures", "--configfile", "configs/smoke.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = smoke_run / "paper_figures/generated"
    assert (out / "lk_gains_vs_paper.png").read_bytes()[:4] == b"\x89PNG"
    both = pd.read_csv(out / "lk_gains_vs_paper.csv")
    assert {"paper_gain_pct", "our_gain_pct"} <= set(both.columns)
    assert both["paper_gain_pct"].notna().any()  # published numbers made it in


def test_bad_config_fails_before_any_job(tmp_path):
    bad = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
    bad["losses"] = ["kl", "not_a_loss"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = _snakemake(ROOT, "--configfile", str(path), "-n", timeout=120)
    assert proc.returncode != 0
    assert "not_a_loss" in proc.stderr + proc.stdout and "lk_lambda" in proc.stderr + proc.stdout


def test_killed_run_leaves_no_partial_output_and_resumes(smoke_run):
    """SIGKILL the whole run mid-training (a crash), then unlock and rerun: it completes."""
    draft = smoke_run / "results/drafts/smollm2-135m/eagle3/kl/seed0"
    shutil.rmtree(draft)
    log = smoke_run / "results/logs/train/smollm2-135m/eagle3/kl/seed0.log"
    log.unlink(missing_ok=True)
    # Snakemake does not rebuild a lost intermediate whose downstream tables are up to date
    # (that is what makes temp() files work), so the lost draft is asked for by name
    target = str((draft / "model.safetensors").relative_to(smoke_run))
    cmd = [sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile"]
    cmd.append("configs/smoke.yaml")
    proc = subprocess.Popen(
        cmd,
        cwd=smoke_run,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and "cache:" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # a job that set up its own process group must die too: a crash takes everything
    subprocess.run(["pkill", "-9", "-f", str(smoke_run / ".snakemake/scripts")], check=False)
    time.sleep(1)
    assert log.exists() and "cache:" in log.read_text(), "the training job never started"
    assert not (draft / "model.safetensors").exists()  # written last, atomically
    assert _snakemake(smoke_run, "--unlock", "--configfile", "configs/smoke.yaml").returncode == 0
    proc = _snakemake(smoke_run, target, "--configfile", "configs/smoke.yaml", "--rerun-incomplete")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (draft / "model.safetensors").exists()
    assert pd.read_csv(smoke_run / "results/tables/tau.csv")["tau_live"].notna().all()
