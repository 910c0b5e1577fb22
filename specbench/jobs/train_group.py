"""Stages ``train_group`` and ``group_draft``: online training of a group of drafts.

``train_group`` loads the target (one process, or ZeRO-3 over the job's ranks), then trains
every (loss, seed) of its group on the training responses, one target forward per
micro-batch feeding all of them (:mod:`specbench.training.trainer`). It writes each draft
into the group's folder and checkpoints the group every ``train.checkpoint_every`` steps
(outside that folder, which Snakemake clears before a rerun); a rerun resumes from there.

``group_draft`` links one draft out of its group's folder to its matrix path
(``results/drafts/<target>/<arch>/<loss>/seed<N>``), where evaluation reads it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from specbench.artifacts import vocab_ids
from specbench.features.cache import read_packed
from specbench.jobs import Job
from specbench.jobs.common import start
from specbench.targets.featurize import OnlineFeatures
from specbench.targets.info import target_info_from_checkpoint
from specbench.targets.runner import TargetRunner
from specbench.training.recipe import Run, train_runs

DRAFT_FILES = ("train_log.csv", "train_status.json", "config.json", "model.safetensors")


def run(job: Job) -> None:
    if job.stage == "group_draft":
        link_draft(Path(job.params["folder"]), Path(job.output["model"]).parent)
        return
    ctx = start(job)
    cfg, arch = ctx.cfg, job.wildcards["arch"]
    out = Path(job.output["group"])
    runs = [Run(r["loss"], int(r["seed"]), out / r["folder"]) for r in job.params["runs"]]
    d2t = torch.tensor(vocab_ids(job.input["vocab"]))
    seqs = read_packed(job.input["responses"])
    source = OnlineFeatures(TargetRunner(ctx.target()), seqs, d2t)
    info = target_info_from_checkpoint(job.params["model"], d2t)
    ckpt = Path(job.params["checkpoint"])  # a folder
    train_runs(
        source, info, arch, cfg.hparams_for(job.wildcards["target"], arch), runs,
        cfg.train_for(job.wildcards["target"]),
        device=ctx.device, log=ctx.say, checkpoint=ckpt,
    )  # fmt: skip
    ctx.say(f"target forwards on rank 0: {source.forwards} for {len(runs)} drafts")
    if ctx.rank == 0:  # every rank has written its drafts (train_runs waits for them)
        shutil.rmtree(ckpt, ignore_errors=True)  # nothing left to resume


def link_draft(folder: Path, dest: Path) -> None:
    """Hard-link (else copy) a draft's files, the weights last (they mark it complete)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in DRAFT_FILES:
        target = dest / name
        target.unlink(missing_ok=True)
        try:
            os.link(folder / name, target)
        except OSError:  # another filesystem
            shutil.copy2(folder / name, target)
