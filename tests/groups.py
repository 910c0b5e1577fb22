"""Shared by the tests of online group jobs: a tiny target, its data, and the group's job.

A tiny random Llama target (2 layers), 12 training sequences of random ids, a truncated
draft vocabulary (every other target token), and a config that trains EAGLE-3 drafts online
for 6 steps of 2 micro-batches. :func:`group_job` writes the ``train_group`` job of a group
of (loss, seed) runs as the rule would, on one process or on ZeRO-3 ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from ranks import ROOT
from safetensors.torch import load_file
from tiny import tiny_llama

from specbench.artifacts import loss_slug
from specbench.config import load_config
from specbench.features.cache import Sequence
from specbench.jobs import Job

D2T = list(range(0, 64, 2))  # a truncated draft vocabulary: every other target token


def group_data(root: Path, losses: list[str]) -> dict:
    """The target checkpoint, its training responses and draft vocabulary, and a config
    whose loss axis is ``losses`` (every loss a group of the test trains)."""
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
    cfg.update(draft_archs=["eagle3"], losses=losses, seeds=[0, 1, 2])
    cfg["train"].update(
        k=3, steps=6, batch_size=4, micro_batch_size=2, lr=1e-2, warmup_steps=1,
        features="online", checkpoint_every=2, autocast="none",
    )  # fmt: skip
    cfg["arch_hparams"] = {"eagle3": {"intermediate_size": 64}}
    load_config(cfg)  # the test's config must itself be valid
    seqs = [Sequence(r["prompt_ids"], r["response_ids"], r["prompt_index"]) for r in rows]
    return {"root": root, "cfg": cfg, "seqs": seqs, "model": str(root / "target")}


def folder_of(loss: str, seed: int) -> str:
    """A run's folder in the group, named as the matrix names it."""
    return f"{loss_slug(loss)}/seed{seed}"


def group_job(
    data: dict, out: Path, runs: list[tuple[str, int]], engine: str = "hf", ranks: int = 1
) -> Job:
    """The ``train_group`` job of ``runs``, as the rule would write it."""
    cfg = json.loads(json.dumps(data["cfg"]))
    cfg["targets"]["tiny"].update(engine=engine, gpus=ranks)
    spec = [{"loss": loss, "seed": s, "folder": folder_of(loss, s)} for loss, s in runs]
    root = data["root"]
    return Job(
        "train_group", cfg, {"target": "tiny", "arch": "eagle3", "group": "0"},
        {"responses": [str(root / "train.jsonl")], "vocab": str(root / "vocab.json")},
        {"group": str(out / "group")},
        params={"model": data["model"], "runs": spec, "checkpoint": str(out / "ckpt")},
        log=str(out / "train_group.log"), ranks=ranks, gpus=ranks,
    )  # fmt: skip


def drafts(folder: Path, runs: list[tuple[str, int]]) -> dict[str, dict[str, torch.Tensor]]:
    """The weights of each (loss, seed) draft written under ``folder``."""
    return {
        f"{loss}/seed{s}": load_file(folder / folder_of(loss, s) / "model.safetensors")
        for loss, s in runs
    }


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)
