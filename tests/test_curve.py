"""The learning curve: nested data subsets, the table from evaluated points, the DAG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from specbench.aggregation.curve import write_curve
from specbench.artifacts import EvalMetrics
from specbench.training.recipe import data_subset

ROOT = Path(__file__).resolve().parents[1]


def test_data_subsets_are_nested_and_mix_the_sequences():
    quarter, half, everything = data_subset(40, 0.25), data_subset(40, 0.5), data_subset(40, 1)
    assert len(quarter) == 10 and len(half) == 20 and everything == list(range(40))
    assert set(quarter) <= set(half)
    assert max(quarter) > 10  # not just the first domain's sequences
    assert data_subset(3, 0.01) != []


def _point(root: Path, steps: int, data: float, tau_sum: float) -> Path:
    d = root / f"steps{steps}_data{data:g}"
    d.mkdir(parents=True)
    meta = {"target": "t", "draft_arch": "eagle3", "loss": "kl", "seed": 0, "k_eval": 2}
    EvalMetrics(**meta, draft_params=1, trainable_params=1, cost_ratio=0.1, cells=[]).write(
        d / "metrics.json"
    )
    rows = [
        {"domain": dom, "temperature": t, "prompt_index": p, "anchors": 10,
         "tau_expected_sum": tau_sum, "rounds": 5, "accepted_sum": 3, "tokens": 8,
         "unbiased_anchors": 4 * t, "tau_unbiased_sum": 4 * t * tau_sum / 10,
         "wall_seconds": 1.0}
        for dom in ("code", "math") for t in (0, 1) for p in range(3)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(d / "per_prompt.csv", index=False)
    log = pd.DataFrame({"step": range(steps), "alpha_1": 0.3, "tokens": 100})
    log["seconds"] = 0.5 * (log["step"] + 1)  # cumulative, as the trainer logs it
    log.to_csv(d / "train_log.csv", index=False)
    return d


def test_curve_table_and_plot(tmp_path):
    points = [_point(tmp_path, 10, 1.0, 12.0), _point(tmp_path, 20, 1.0, 15.0)]
    points.append(_point(tmp_path, 20, 0.5, 13.0))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"train_response_tokens": 500}))
    out = tmp_path / "curve.csv", tmp_path / "curve.png"
    table = write_curve(points, vocab, str(out[0]), str(out[1]))
    assert len(table) == 6  # 3 points × 2 temperatures
    t1 = table[table["temperature"] == 1].set_index(["steps", "data_fraction"])
    assert t1.loc[(20, 1.0), "tau_expected"] == pytest.approx(1.5)
    assert t1.loc[(20, 1.0), "tau_unbiased"] == pytest.approx(1.5)
    assert t1.loc[(10, 1.0), "tokens_seen"] == 1000 and t1.loc[(10, 1.0), "epochs"] == 2.0
    assert t1.loc[(20, 0.5), "epochs"] == pytest.approx(2000 / 250)
    assert t1.loc[(20, 1.0), "train_seconds"] == 10.0  # the last cumulative time
    assert table[table["temperature"] == 0]["tau_unbiased"].isna().all()
    assert out[1].read_bytes()[:4] == b"\x89PNG"


def test_learning_curve_target_plans_one_draft_per_point(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "-n", "learning_curve", "--quiet", "rules"]
    plan = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr[-2000:]
    default = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    cfg, steps = default["learning_curve"], default["train"]["steps"]
    steps = steps.get(cfg["arch"], steps["default"]) if isinstance(steps, dict) else steps
    points = len(set(cfg["steps"]) | {steps}) + len(set(cfg["data_fractions"]) - {1.0})
    counts = dict(line.split() for line in plan.stdout.splitlines() if line.startswith("curve_"))
    assert counts == {"curve_train": str(points), "curve_eval": str(points)}
    smoke = [*cmd, "--configfile", "configs/smoke.yaml"]
    missing = subprocess.run(smoke, cwd=ROOT, capture_output=True, text=True)
    said = missing.stdout + missing.stderr
    assert missing.returncode != 0 and "no learning_curve section" in said, said[-2000:]
