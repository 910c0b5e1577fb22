"""The pipeline's jobs: every Snakemake rule is one stage here, launchable on N ranks.

Every rule script is the one line ``run_rule(snakemake)``: it sends the process's output to
the rule's log, turns the ``snakemake`` object into a :class:`Job` and calls :func:`launch`.
A rule that runs the target (``responses``, ``features_*``, ``evaluate_draft``) asks for
``resources: gpu=N`` (the target's ``gpus``); :func:`launch`

* runs the stage in the script's own process when ``N <= 1`` (the embedded default), or
* writes the job to a JSON file next to the rule's log and starts ``N`` ranks on this node
  with torchrun (``python -m torch.distributed.run --standalone --nproc_per_node N -m
  specbench.jobs JOB.json``). Each rank takes a share of the prompts (by whole batches, so
  results do not depend on N), rank 0 gathers and writes the outputs atomically; a job
  whose engine starts its own workers (vLLM's responses, :func:`starts_own_workers`) runs as
  one process holding the N GPUs.

Under ZeRO-3 the N ranks hold one partitioned target and run their forwards in lockstep
(:mod:`specbench.dist`); with ``engine: hf`` each rank holds a full replica.
Without a GPU the ranks run on the CPU with gloo, which is how the tests run this path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specbench.training.preemption import SIGNALS

# rule name -> stage module under specbench.jobs (a module's ``run(job)`` does the work)
STAGES = {
    "convert_target": "convert_target",
    "prompts": "prompts",
    "responses": "responses",
    "responses_shard": "responses",
    "responses_gather": "responses_gather",
    "train_completions": "train_completions",
    "draft_vocab": "draft_vocab",
    "features_train": "features",
    "features_eval": "features",
    "train_draft": "train_draft",
    "train_group": "train_group",
    "group_draft": "train_group",
    "evaluate_draft": "evaluate_draft",
    "serve_draft": "serve_draft",
    "served_plot": "served_plot",
    "aggregate": "aggregate",
    "plots": "plots",
    "paper_figures": "paper_figures",
    "external_vocab": "formats",
    "import_draft": "formats",
    "export_draft": "formats",
    "curve_train": "train_draft",
    "curve_eval": "evaluate_draft",
    "learning_curve": "learning_curve",
}


@dataclass
class Job:
    """Everything a stage reads: the raw config and the rule's wildcards, files and params."""

    stage: str  # the rule's name (a key of STAGES)
    config: dict[str, Any]
    wildcards: dict[str, str]
    input: dict[str, Any]
    output: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    threads: int = 1
    ranks: int = 1
    gpus: int = 0  # GPUs the scheduler granted (0: a CPU job); ranks = max(1, gpus)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown job stage {self.stage!r}; valid: {list(STAGES)}")

    @classmethod
    def from_snakemake(cls, smk: Any) -> Job:
        """The job of a ``script:`` rule; ``resources.gpu`` sets the number of ranks."""
        gpus = int(getattr(smk.resources, "gpu", 0) or 0)
        named = lambda nl: {k: (list(v) if isinstance(v, list) else v) for k, v in nl.items()}  # noqa: E731
        return cls(
            stage=smk.rule,
            config=dict(smk.config),
            wildcards=dict(smk.wildcards.items()),
            input=named(smk.input),
            output=named(smk.output),
            params={k: v for k, v in smk.params.items() if k != "config_digest"},
            log=str(smk.log[0]) if smk.log else "",
            threads=int(smk.threads),
            ranks=max(1, gpus),
            gpus=gpus,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Job:
        return cls(**json.loads(Path(path).read_text()))


def run_stage(job: Job) -> None:
    """Run ``job`` in this process (one rank of however many the launcher started)."""
    import importlib

    importlib.import_module(f"specbench.jobs.{STAGES[job.stage]}").run(job)


def run_rule(smk: Any) -> None:
    """The whole body of every rule script: log to the rule's ``log:``, then run its stage."""
    from specbench.io import log_to

    if smk.log:
        log_to(smk.log[0])
    job = Job.from_snakemake(smk)
    print(f"rule {job.stage} wildcards={job.wildcards} threads={job.threads}", flush=True)
    with exit_on_preemption():
        launch(job)


@contextlib.contextmanager
def exit_on_preemption() -> Iterator[None]:
    """A training job stopped by a signal (its checkpoint written) exits 128 + the signal's
    number with one line, not a traceback: Snakemake retries it (``retries``)."""
    from specbench.training.preemption import Preempted

    try:
        yield
    except Preempted as stop:
        print(f"preempted: {stop}", flush=True)
        raise SystemExit(128 + stop.signum) from None


def launcher_command(job_files: list[Path], ranks: int) -> list[str]:
    """torchrun on this node: ``ranks`` processes, each running the jobs one after another.

    torchrun handles SIGINT only: on SIGTERM it would give its ranks 30 s and then SIGKILL
    them (``torch.distributed.elastic``), too little for a group to write its checkpoint.
    A scheduler's SIGTERM reaches every process of the job anyway, the ranks included; see
    :func:`_launch` for how the launcher then waits for them.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a private rendezvous on a free local port: jobs may share a node
        f"--nproc_per_node={ranks}",
        "--signals-to-handle=SIGINT",
        "-m",
        "specbench.jobs",
        *map(str, job_files),
    ]


def launch(job: Job) -> None:
    """Run ``job`` here (one rank) or under torchrun on ``job.ranks`` ranks; raise if it fails.

    Without a scheduler, the job first claims ``job.gpus`` free GPUs of the machine
    (:func:`specbench.jobs.gpus.claim_gpus`), so that jobs running side by side do not all
    land on ``cuda:0``.
    """
    from specbench.jobs.gpus import claim_gpus

    with claim_gpus(job.gpus) as claimed:
        if claimed:
            print(f"GPUs {','.join(claimed)} (CUDA_VISIBLE_DEVICES)", flush=True)
        _launch(job)


STOP_SIGNALS = SIGNALS  # the trainer's (specbench.training.preemption)


def ignore_stop_signals() -> None:
    """In a child before it starts (``preexec_fn``): SIGTERM and SIGUSR1 are ignored."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def ignoring(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """Ignore ``signals`` in this process for the block (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def starts_own_workers(job: Job) -> bool:
    """A job whose engine starts one worker per GPU itself: responses regenerated by vLLM
    (``engine_generate: vllm``, tensor parallel over the job's GPUs). It runs as one process
    holding all the job's GPUs, never under torchrun."""
    if STAGES.get(job.stage) != "responses":
        return False
    target = (job.config.get("targets") or {}).get(job.wildcards.get("target"), {})
    return target.get("engine_generate", "hf") == "vllm"


def _launch(job: Job) -> None:
    if job.ranks <= 1 or starts_own_workers(job):
        run_stage(job)
        return
    job_file = Path(job.log or job.output[next(iter(job.output))]).with_suffix(".job.json")
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job.save(job_file)
    cmd = launcher_command([job_file], job.ranks)
    print("launching:", " ".join(cmd), flush=True)
    # the ranks inherit this process's stdout/stderr, which is the rule's log
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, job.threads // job.ranks))}
    # SIGTERM/SIGUSR1 (a scheduler's warning) reach this process, torchrun and the ranks
    # alike: this process and torchrun ignore them and wait, so that the ranks can write
    # their checkpoint and exit (python -m specbench.jobs restores the default in each rank)
    with ignoring(STOP_SIGNALS):
        done = subprocess.run(cmd, env=env, check=False, preexec_fn=ignore_stop_signals)
    if done.returncode != 0:
        raise RuntimeError(f"{job.stage}: {job.ranks} ranks exited with {done.returncode}")
    job_file.unlink(missing_ok=True)
