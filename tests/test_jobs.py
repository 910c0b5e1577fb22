"""Launched jobs: N ranks (torchrun, gloo on the CPU) write exactly what one process writes.

A tiny random Llama with SmolLM2's real tokenizer stands in for a target. The three target
stages (responses at T=1, greedy and train; features; evaluation with live decoding) run
once in this process, then on two ranks with full replicas (``engine: hf``) and on two ranks
sharing one ZeRO-3 target; outputs must be identical, timings aside.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from ranks import ROOT, ZERO3_MARKS, run_group
from repo_copy import copy_repo
from safetensors.torch import load_file
from tiny import save_tiny_chat_target

from specbench.config import load_config
from specbench.data.splits import SPLITS as SPLIT_TABLE
from specbench.features.vocab import build_draft_vocab
from specbench.jobs import STAGES, Job, launch, launcher_command
from specbench.targets.loading import load_tokenizer

pytestmark = ZERO3_MARKS

SPLITS = tuple(SPLIT_TABLE)  # train, eval_t0, eval_t1
TIMING = ("wall_seconds", "target_seconds", "draft_seconds", "unbiased_seconds")
PROMPTS = {
    "train": ["Name three rivers.", "What is a list?", "Count to five.", "Say hello."],
    "eval": ["Describe the sea.", "Why is the sky blue?", "What is 2+2?", "Write a haiku."],
}


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template, saved as a checkpoint."""
    return save_tiny_chat_target(tmp_path_factory.mktemp("tiny_target") / "model", layers=2)


def config(target: Path, engine: str, ranks: int) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["targets"] = {
        "tiny": {"model": str(target), "engine": engine, "dtype": "float32", "gpus": ranks}
    }
    cfg.update(draft_archs=["eagle3"], losses=["kl"], domains=["general"], seeds=[0])
    cfg["data"].update(
        train_prompts_per_domain=4,
        eval_prompts_per_domain=4,
        train_new_tokens=12,
        eval_new_tokens=16,
        generation_batch_size=3,  # 4 prompts → batches of 3 and 1: uneven shares of 2 ranks
        feature_batch_size=1,
        draft_vocab_size=256,
    )
    cfg["eval"].update(live_prompts=3, live_new_tokens=12)
    load_config(cfg)  # the test's config must itself be valid
    return cfg


def stage_jobs(root: Path, cfg: dict, draft: Path, ranks: int) -> dict[str, list[Job]]:
    """The jobs of every target stage, writing under ``root`` (the draft is shared)."""
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    wc_eval = {"target": "tiny", "arch": "eagle3", "loss": "kl", "seed": "0"}
    common = {"config": cfg, "params": {"model": cfg["targets"]["tiny"]["model"]}, "ranks": ranks}
    resp = {s: root / "responses" / s / "general.jsonl" for s in SPLITS}
    cache = {s: root / "features" / ("train" if s == "train" else f"{s}/general") for s in SPLITS}
    jobs = {
        "responses": [
            Job("responses", wildcards={"target": "tiny", "split": s, "domain": "general"},
                input={"prompts": str(prompts)}, output={"responses": str(resp[s])}, **common)
            for s in SPLITS
        ],
        "features": [
            Job("features_train" if s == "train" else "features_eval",
                wildcards={"target": "tiny", "split": s, "domain": "general"},
                input={"responses": [str(resp[s])], "vocab": str(root.parent / "vocab.json")},
                output={"cache": f"{cache[s]}.safetensors"}, **common)
            for s in SPLITS
        ],
        "evaluate": [
            Job("evaluate_draft", wildcards=wc_eval,
                input={"draft": str(draft / "model.safetensors"),
                       "caches": [f"{cache[s]}.safetensors" for s in SPLITS[1:]]},
                output={"metrics": str(root / "eval" / "metrics.json"),
                        "per_prompt": str(root / "eval" / "per_prompt.csv")},
                **{**common, "params": {**common["params"], "loss": "kl"}})
        ],
    }  # fmt: skip
    return jobs


def write_vocab(root: Path, target: Path, one: Path) -> None:
    """The draft vocabulary, from the one-process run's training responses."""
    rows = [json.loads(x) for x in (one / "responses/train/general.jsonl").open()]
    eos = load_tokenizer(str(target)).eos_token_id
    d2t, _ = build_draft_vocab([r["response_ids"] for r in rows], 256, (eos,))
    (root / "vocab.json").write_text(json.dumps({"draft_to_target": d2t.tolist()}))


def train_tiny_draft(cfg: dict, target: Path, cache_path: Path, out: Path) -> None:
    """A 3-step EAGLE-3 draft on the one-process run's training features: the rule's job."""
    cfg = {**cfg, "train": {**cfg["train"], "steps": 3, "batch_size": 2, "k": 3}}
    cfg["arch_hparams"] = {"eagle3": {"intermediate_size": 64}}
    wc = {"target": "tiny", "arch": "eagle3", "loss": "kl", "seed": "0"}
    files = {"model": str(out / "model.safetensors"), "log_csv": str(out / "train_log.csv")}
    launch(Job("train_draft", cfg, wc, {"cache": str(cache_path)}, files,
               params={"model": str(target), "loss": "kl"}))  # fmt: skip


def run_ranks(jobs: list[Job], folder: Path, ranks: int) -> str:
    """All ``jobs`` in one torchrun launch of ``ranks`` ranks (one interpreter start)."""
    files = []
    for i, job in enumerate(jobs):
        files.append(folder / f"job{i}.json")
        job.save(files[-1])
    return run_group(launcher_command(files, ranks), ROOT, timeout=600, what="launched ranks")


@pytest.fixture(scope="module")
def runs(target, tmp_path_factory) -> dict[str, Path]:
    """Outputs of: one process (hf), two hf replicas, two ranks sharing a ZeRO-3 target."""
    root = tmp_path_factory.mktemp("jobs")
    draft = root / "draft"
    out = {m: root / m for m in ("one", "hf2", "zero3x2")}
    one = stage_jobs(out["one"], config(target, "hf", 1), draft, 1)
    for job in one["responses"]:
        launch(job)
    write_vocab(root, target, out["one"])
    for job in one["features"]:
        launch(job)
    train_tiny_draft(
        config(target, "hf", 1), target, out["one"] / "features/train.safetensors", draft
    )
    launch(one["evaluate"][0])
    for mode, engine in (("hf2", "hf"), ("zero3x2", "zero3")):
        jobs = stage_jobs(out[mode], config(target, engine, 2), draft, 2)
        log = run_ranks(jobs["responses"] + jobs["features"] + jobs["evaluate"], root, 2)
        assert log.count("2 ranks") == 6, log[-4000:]  # 3 responses + 3 features jobs
        (root / f"{mode}.log").write_text(log)
    return out


@pytest.mark.parametrize("mode", ["hf2", "zero3x2"])
def test_responses_do_not_depend_on_ranks(runs, mode):
    for split in SPLITS:
        rel = f"responses/{split}/general.jsonl"
        one, many = (runs[m] / rel for m in ("one", mode))
        assert one.read_text() == many.read_text(), rel
    rows = [json.loads(x) for x in (runs["one"] / "responses/eval_t0/general.jsonl").open()]
    assert [r["prompt_index"] for r in rows] == [0, 1, 2, 3]
    assert all(r["response_ids"] for r in rows)


@pytest.mark.parametrize("mode", ["hf2", "zero3x2"])
def test_features_do_not_depend_on_ranks(runs, mode):
    for rel in ("train", "eval_t0/general", "eval_t1/general"):
        one = load_file(runs["one"] / f"features/{rel}.safetensors")
        many = load_file(runs[mode] / f"features/{rel}.safetensors")
        assert one.keys() == many.keys()
        for key in one:
            assert torch.equal(one[key], many[key]), (rel, key)
        assert not list((runs[mode] / "features").rglob("*.parts")), "rank parts left behind"


@pytest.mark.parametrize("mode", ["hf2", "zero3x2"])
def test_evaluation_does_not_depend_on_ranks(runs, mode):
    one = pd.read_csv(runs["one"] / "eval/per_prompt.csv")
    many = pd.read_csv(runs[mode] / "eval/per_prompt.csv")
    pd.testing.assert_frame_equal(one.drop(columns=list(TIMING)), many.drop(columns=list(TIMING)))
    live = one[one["temperature"] == 1]
    assert live["rounds"].gt(0).sum() == 3, "live T=1 decoding ran on 3 prompts"
    assert one[one["temperature"] == 0]["rounds"].gt(0).all(), "T=0 replay covers every prompt"
    metrics = [json.loads((runs[m] / "eval/metrics.json").read_text()) for m in ("one", mode)]
    assert metrics[0] == metrics[1]


def test_launch_runs_ranks_under_torchrun(target, tmp_path):
    """``launch`` itself: a two-rank job through the subprocess launcher, log and all."""
    cfg = config(target, "hf", 2)
    job = stage_jobs(tmp_path, cfg, tmp_path / "draft", 2)["responses"][1]  # eval_t0
    job.log = str(tmp_path / "logs" / "responses.log")
    launch(job)
    rows = [json.loads(x) for x in Path(job.output["responses"]).open()]
    assert len(rows) == 4 and all(r["response_ids"] for r in rows)
    assert not Path(job.log).with_suffix(".job.json").exists(), "job file left behind"


def test_snakemake_rule_launches_its_gpus_as_ranks(target, tmp_path):
    """A rule whose target has ``gpus: 2`` runs two ranks; the output equals one process's."""
    work = copy_repo(tmp_path / "repo")
    cfg = config(target, "zero3", 2)
    (work / "two_ranks.yaml").write_text(yaml.safe_dump(cfg))
    out = "results/data/responses/tiny/eval_t0/general.jsonl"
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "two_ranks.yaml"]
    proc = subprocess.run([*cmd, "--", out], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (work / "results/logs/responses/tiny/eval_t0/general.log").read_text()
    assert "--nproc_per_node=2" in log and "2 ranks" in log, log[-3000:]
    # the reference: the same job on the same prompts file, in this process
    one = stage_jobs(tmp_path / "one", config(target, "hf", 1), tmp_path / "draft", 1)
    job = one["responses"][1]
    prompts = json.loads((work / "results/data/prompts/general.json").read_text())
    Path(job.input["prompts"]).write_text(json.dumps(prompts))
    launch(job)
    assert (work / out).read_text() == Path(job.output["responses"]).read_text()


def test_a_failed_rank_fails_the_launch(target, tmp_path):
    """A rank that raises (here: the prompts file is missing) makes ``launch`` raise."""
    job = stage_jobs(tmp_path, config(target, "hf", 2), tmp_path / "draft", 2)["responses"][1]
    Path(job.input["prompts"]).unlink()
    with pytest.raises(RuntimeError, match="responses: 2 ranks exited with"):
        launch(job)
    assert not Path(job.output["responses"]).exists()


def test_unknown_stage_names_the_valid_ones():
    with pytest.raises(ValueError, match=re.escape(f"valid: {list(STAGES)}")):
        Job("generate", config={}, wildcards={}, input={}, output={})
