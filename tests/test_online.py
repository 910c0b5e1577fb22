"""Online training of a group (``train.features: online``): the target runs inside the job.

A tiny random Llama target, 12 training sequences, a group of three drafts (kl/seed0,
tv/seed1, lk_alpha/seed0). Checked:

* the group trained online equals each draft trained alone on the feature cache, over the
  same batches (tolerance: the cache's rows come from target forwards padded to another
  width, so they differ from the online ones in the last float bits);
* the target runs once per micro-batch, not once per micro-batch and draft;
* on two ranks sharing one ZeRO-3 target (gloo), the drafts equal one process's, bitwise;
* a group job killed (SIGKILL) mid-way, or after training but before writing its drafts,
  resumes from its checkpoint to the very same drafts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from ranks import ROOT, ZERO3_MARKS, clean_env, run_group
from safetensors.torch import load_file
from tiny import tiny_llama

from specbench.config import load_config
from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.jobs import Job, launch, launcher_command
from specbench.targets.featurize import OnlineFeatures, compute_features
from specbench.targets.info import target_info_from_checkpoint
from specbench.targets.loading import load_target
from specbench.targets.runner import TargetRunner
from specbench.training.config import TrainConfig
from specbench.training.recipe import Run, train_cell, train_runs

pytestmark = pytest.mark.online

RUNS = [("kl", 0), ("tv", 1), ("lk_alpha", 0)]
D2T = list(range(0, 64, 2))  # a truncated draft vocabulary: every other target token
# cache vs online: rows differ by ~1e-6 (float32, another padding width); AdamW amplifies
# that on coordinates whose gradient is near zero (its step is ±lr whatever their size), so
# the drafts are compared by how far they moved, and absolutely against lr = 1e-2
REL_TOL, ATOL = 2e-4, 5e-4  # measured: 5.5e-5 and 1.3e-4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """The target checkpoint, its training responses and draft vocabulary, and a config."""
    root = tmp_path_factory.mktemp("online")
    model = tiny_llama(layers=2)
    model.save_pretrained(root / "target")
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(12):
        n_prompt, n_resp = 3 + i % 4, 8 + (5 * i) % 11
        ids = torch.randint(0, 64, (n_prompt + n_resp,), generator=g).tolist()
        rows.append(
            {"prompt_index": i, "prompt_ids": ids[:n_prompt], "response_ids": ids[n_prompt:]}
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "vocab.json").write_text(json.dumps({"draft_to_target": D2T}))
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["targets"] = {"tiny": {"model": str(root / "target"), "engine": "hf", "gpus": 0}}
    cfg.update(draft_archs=["eagle3"], losses=["kl", "tv", "lk_alpha"], seeds=[0, 1])
    cfg["train"].update(
        k=3, steps=6, batch_size=4, micro_batch_size=2, lr=1e-2, warmup_steps=1,
        features="online", checkpoint_every=2,
    )  # fmt: skip
    cfg["arch_hparams"] = {"eagle3": {"intermediate_size": 64}}
    load_config(cfg)  # the test's config must itself be valid
    seqs = [Sequence(r["prompt_ids"], r["response_ids"], r["prompt_index"]) for r in rows]
    return {"root": root, "cfg": cfg, "seqs": seqs, "model": str(root / "target")}


def group_job(data: dict, out: Path, engine: str = "hf", ranks: int = 1) -> Job:
    """The ``train_group`` job of the whole group, as the rule would write it."""
    cfg = json.loads(json.dumps(data["cfg"]))
    cfg["targets"]["tiny"].update(engine=engine, gpus=ranks)
    runs = [{"loss": loss, "seed": s, "folder": f"{loss}/seed{s}"} for loss, s in RUNS]
    root = data["root"]
    return Job(
        "train_group", cfg, {"target": "tiny", "arch": "eagle3", "group": "0"},
        {"responses": [str(root / "train.jsonl")], "vocab": str(root / "vocab.json")},
        {"group": str(out / "group")},
        params={"model": data["model"], "runs": runs, "checkpoint": str(out / "ckpt")},
        log=str(out / "train_group.log"), ranks=ranks, gpus=ranks,
    )  # fmt: skip


def drafts(folder: Path, runs=RUNS) -> dict[str, dict[str, torch.Tensor]]:
    """The weights of each (loss, seed) draft written under ``folder``."""
    return {
        f"{loss}/seed{s}": load_file(folder / f"{loss}/seed{s}/model.safetensors")
        for loss, s in runs
    }


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    """The group job run once, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("one")
    launch(group_job(data, out))
    assert not (out / "ckpt").exists(), "the checkpoint is removed once the drafts are out"
    return out / "group"


def test_online_group_equals_each_draft_trained_alone(data, one_process, tmp_path):
    """Online: bitwise the drafts each trains alone (same batches, same target forwards).
    Cache: the same up to the cache's float differences (another padding width)."""
    train = TrainConfig(**data["cfg"]["train"])
    target = load_target(data["model"], "hf", "float32", {})
    runner, d2t = TargetRunner(target), torch.tensor(D2T)
    hparams = data["cfg"]["arch_hparams"]["eagle3"]
    quiet = lambda *a: None  # noqa: E731

    def online(folder: str, runs: list[tuple[str, int]]) -> OnlineFeatures:
        source = OnlineFeatures(runner, data["seqs"], d2t)
        group = [Run(loss, s, tmp_path / folder / f"{loss}/seed{s}") for loss, s in runs]
        train_runs(source, data["model"], "eagle3", hparams, group, train, log=quiet)
        return source

    source = online("group", RUNS)
    # one target forward per micro-batch, shared by the three drafts
    assert source.forwards == train.steps * (train.batch_size // train.micro_batch_size) == 12
    group = drafts(tmp_path / "group")
    stage = drafts(one_process)  # the job: responses read from disk, packed
    assert all(torch.equal(group[n][k], stage[n][k]) for n in group for k in group[n])
    for loss, s in RUNS:
        assert online(f"alone-{loss}-{s}", [(loss, s)]).forwards == 12
        alone = drafts(tmp_path / f"alone-{loss}-{s}", [(loss, s)])
        name = f"{loss}/seed{s}"
        assert all(torch.equal(group[name][k], alone[name][k]) for k in group[name]), name

    cache_path = tmp_path / "cache.safetensors"
    save_cache(compute_features(runner, data["seqs"], d2t, batch_size=8), cache_path)
    cache, live = FeatureCache(cache_path), OnlineFeatures(runner, data["seqs"], d2t)
    idx = [0, 5, 11, 3]
    feature_diff = max(
        (cache.batch(idx)[key] - live.batch(idx)[key]).abs().max().item()
        for key in ("features", "logprobs")
    )
    cache_train = train.model_copy(update={"features": "cache"})
    info = target_info_from_checkpoint(data["model"], d2t)
    worst_abs, worst_rel = 0.0, 0.0
    for loss, seed in RUNS:
        out, name = tmp_path / "cache" / f"{loss}/seed{seed}", f"{loss}/seed{seed}"
        records = train_cell(
            cache_path, data["model"], "eagle3", hparams, loss, seed, cache_train, out, log=quiet
        )
        logged = pd.read_csv(tmp_path / "group" / name / "train_log.csv")
        assert logged["tokens"].tolist() == [r["tokens"] for r in records]  # the same batches
        assert logged["loss"].tolist() == pytest.approx([r["loss"] for r in records], rel=1e-5)
        torch.manual_seed(seed)
        start = build_draft("eagle3", info, **hparams).state_dict()
        trained, cached = group[name], load_file(out / "model.safetensors")
        moved = torch.cat([(trained[k] - start[k]).flatten() for k in trained]).norm()
        delta = torch.cat([(trained[k] - cached[k]).flatten() for k in trained]).norm()
        worst_abs = max(worst_abs, max_diff(trained, cached))
        worst_rel = max(worst_rel, (delta / moved).item())
    print(
        f"cache vs online rows: max |Δ| {feature_diff:.1e}; drafts after 6 steps: "
        f"max |Δw| {worst_abs:.1e}, ‖Δw‖/‖w − w0‖ {worst_rel:.1e}"
    )
    assert 0 < feature_diff <= 1e-5
    assert worst_rel <= REL_TOL and worst_abs <= ATOL


def test_the_group_stage_writes_every_draft_of_its_group(one_process):
    for loss, s in RUNS:
        folder = one_process / f"{loss}/seed{s}"
        assert json.loads((folder / "train_status.json").read_text()) == {
            "status": "complete",
            "steps": 6,
        }
        assert len(pd.read_csv(folder / "train_log.csv")) == 6
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


@ZERO3_MARKS[0]
@ZERO3_MARKS[1]
def test_two_ranks_sharing_a_zero3_target_train_the_same_drafts(data, one_process, tmp_path):
    job = group_job(data, tmp_path, engine="zero3", ranks=2)
    job_file = tmp_path / "job.json"
    job.save(job_file)
    log = run_group(launcher_command([job_file], 2), ROOT, timeout=600, what="2-rank group")
    assert "target forwards on rank 0: 6 for 3 drafts" in log, log[-3000:]  # half of 12
    one, two = drafts(one_process), drafts(tmp_path / "group")
    worst = max(max_diff(one[name], two[name]) for name in one)
    print(f"2 ranks (ZeRO-3) vs 1 process: max |Δw| = {worst:.2e}")
    assert worst == 0.0  # each rank pads its micro-batch as one process does: bitwise


KILLER = """
import os, signal, sys
from specbench.training.trainer import Checkpoint
from specbench.jobs import Job, run_stage

saves, save = [], Checkpoint.save
def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    saves.append(1)
    if len(saves) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler: a real kill
Checkpoint.save = save_then_die
run_stage(Job.load(sys.argv[1]))
"""


@pytest.mark.parametrize(("kill_after", "resume_at"), [(2, 4), (3, 6)])
def test_a_killed_group_job_resumes_to_the_same_drafts(
    data, one_process, tmp_path, capfd, kill_after, resume_at
):
    """Killed after its 2nd checkpoint (step 4 of 6), or after training but before writing
    the drafts (the final checkpoint): the rerun resumes there and redoes no finished step."""
    job = group_job(data, tmp_path)
    job.save(tmp_path / "job.json")
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(tmp_path / "job.json"), str(kill_after)],
        env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert json.loads((tmp_path / "ckpt" / "step").read_text())["step"] == resume_at
    assert not list((tmp_path / "group").rglob("model.safetensors")), "killed before any draft"
    capfd.readouterr()
    launch(job)
    log = capfd.readouterr().out
    assert f"at step {resume_at}" in log and "resumed" in log, log[-3000:]
    trained = [line for line in log.splitlines() if line.startswith("step ")]
    assert all(int(line.split()[1].split("/")[0]) >= resume_at for line in trained), trained
    one, again = drafts(one_process), drafts(tmp_path / "group")
    assert all(torch.equal(one[n][k], again[n][k]) for n in one for k in one[n])
    for loss, s in RUNS:  # the train logs, timings aside, are the uninterrupted run's
        a, b = (
            pd.read_csv(d / f"{loss}/seed{s}/train_log.csv")
            for d in (one_process, tmp_path / "group")
        )
        pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
