"""Drafts spread over ranks train exactly as alone; a hung rank group fails its test.

An online group job puts draft ``i`` on rank ``i mod N`` (``runs[rank::world]``) and shares
one ZeRO-3 target. A loss that pools a batch statistic (LK^λ's ᾱ, TVD++'s μ,
``lk_alpha(reduce=batch)``) must pool it over its own draft's micro-batches only: never
over the other ranks, which hold other drafts (issues 18 and 22). Checked on 2 and 3 gloo
ranks, each launch under a hard timeout, against the same drafts in one process, bitwise:

* a group of **every registered loss** (each base loss, each weighting or term on ``ce``,
  and ``lk_alpha(reduce=batch)``), so that the pooling losses sit on some ranks and not
  on others, in unequal numbers;
* a group where every rank holds a different seed of ``lk_lambda``;
* issue 22's two groups: ``lk_lambda`` seeds 0 and 1, and ``{kl, lk_lambda}``, on 2 ranks.

And the guard: a job built to hang in a collective fails within its timeout plus a few
seconds, leaving no process behind. And preemption on ranks: SIGTERM to every process of a
2-rank group job checkpoints it, and the rerun resumes to the uninterrupted drafts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from groups import drafts, folder_of, group_data, group_job, max_diff
from ranks import ROOT, TAG_VAR, ZERO3_MARKS, clean_env, kill_tagged, run_group, tagged

from specbench.jobs import launch, launcher_command
from specbench.losses import LOSSES

pytestmark = pytest.mark.ranks


def every_loss() -> list[str]:
    """One spec per registered loss, from the registry (a new loss joins by itself)."""
    specs = [n for n, d in LOSSES.items() if d.kind == "base"]
    specs += [f"ce+{n}" for n, d in LOSSES.items() if d.kind != "base"]
    return [*specs, "lk_alpha(reduce=batch)"]


EVERY = [(spec, 0) for spec in every_loss()]
LAMBDA_SEEDS = {2: [("lk_lambda", 0), ("lk_lambda", 1)], 3: [("lk_lambda", s) for s in range(3)]}
ISSUE_22 = [("kl", 0), ("lk_lambda", 0)]  # only one of the two ranks pools
GROUPS = {2: {"every": EVERY, "lambda": LAMBDA_SEEDS[2], "kl_lambda": ISSUE_22}}
GROUPS[3] = {"every": EVERY, "lambda": LAMBDA_SEEDS[3]}
POOLING = {"lk_lambda", "tvdpp", "lk_alpha(reduce=batch)"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """6 micro-batches of 1 per step: an even share for 1, 2 and 3 ranks."""
    data = group_data(tmp_path_factory.mktemp("ranks"), every_loss())
    data["cfg"]["train"].update(batch_size=6, micro_batch_size=1)
    return data


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> dict[str, Path]:
    """Each group's job in one process: the drafts as each trains alone (no pooling there)."""
    out = {}
    for name, runs in {"every": EVERY, "lambda": LAMBDA_SEEDS[3]}.items():
        folder = tmp_path_factory.mktemp(f"one-{name}")
        launch(group_job(data, folder, runs))
        out[name] = folder / "group"
    return out


def test_the_groups_mix_pooling_and_local_losses_unevenly_over_ranks():
    """What the launches below exercise: on each rank count, some ranks pool and others
    do not, so a collective over the default group would be unmatched (a hang)."""
    for world in (2, 3):
        pooling = [sum(s in POOLING for s, _ in EVERY[r::world]) for r in range(world)]
        assert len(set(pooling)) > 1 and min(pooling) < max(pooling), (world, pooling)


def test_a_draft_alone_equals_its_copy_in_the_one_process_group(data, one_process, tmp_path):
    """The one-process group is the reference: each pooling draft in it is the draft
    trained by itself (a group of one)."""
    for run in [("lk_lambda", 1), ("tvdpp", 0), ("lk_alpha(reduce=batch)", 0)]:
        launch(group_job(data, tmp_path / run[0], [run]))
        key = "lambda" if run[0] == "lk_lambda" else "every"
        alone, group = drafts(tmp_path / run[0] / "group", [run]), drafts(one_process[key], [run])
        assert max_diff(*alone.values(), *group.values()) == 0.0, run


@ZERO3_MARKS[0]
@ZERO3_MARKS[1]
@pytest.mark.parametrize("world", [2, 3])
def test_drafts_spread_over_ranks_equal_the_same_drafts_in_one_process(
    data, one_process, tmp_path, world
):
    """Every group of ``GROUPS[world]`` in one torchrun launch (one interpreter start), on
    ``world`` ranks sharing a ZeRO-3 target; each draft bitwise its one-process twin."""
    files = []
    for name, runs in GROUPS[world].items():
        files.append(tmp_path / f"{name}.json")
        group_job(data, tmp_path / name, runs, engine="zero3", ranks=world).save(files[-1])
    log = run_group(launcher_command(files, world), ROOT, 900, f"{world}-rank groups")
    assert f"target forwards on rank 0: {6 * 6 // world} for {len(EVERY)} drafts" in log
    for name, runs in GROUPS[world].items():
        one = drafts(one_process["lambda" if name == "lambda" else "every"], runs)
        spread = drafts(tmp_path / name / "group", runs)
        worst = {n: max_diff(one[n], spread[n]) for n in one}
        print(f"{world} ranks, group {name!r}: max |Δw| vs one process {max(worst.values())}")
        assert all(w == 0.0 for w in worst.values()), worst
        for loss, seed in runs:  # the records say every step trained
            folder = tmp_path / name / "group" / folder_of(loss, seed)
            assert json.loads((folder / "train_status.json").read_text())["status"] == "complete"


LAUNCH = """
import sys
from specbench.jobs import Job, exit_on_preemption, launch
with exit_on_preemption():  # what the rule script runs (run_rule)
    launch(Job.load(sys.argv[1]))
"""


@ZERO3_MARKS[0]
@ZERO3_MARKS[1]
def test_sigterm_to_every_process_of_a_2_rank_job_checkpoints_and_it_resumes(data, tmp_path):
    """SIGTERM to the rule's process, torchrun and both ranks at once (what SLURM's
    ``--signal=TERM@600`` or a preemption does): the launcher waits instead of killing the
    ranks, they finish the step, write the checkpoint and exit non-zero; the job rerun on
    one process resumes there, to the drafts of an uninterrupted run, bitwise."""
    runs = [("kl", 0), ("lk_lambda", 1)]
    cfg_train = data["cfg"]["train"]
    long = {**data, "cfg": {**data["cfg"], "train": {**cfg_train, "steps": 60}}}
    uninterrupted = tmp_path / "one"
    launch(group_job(long, uninterrupted, runs))
    job = group_job(long, tmp_path / "spread", runs, engine="zero3", ranks=2)
    job.save(tmp_path / "job.json")
    tag, record = uuid.uuid4().hex, tmp_path / "spread" / "ckpt" / "step"
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(tmp_path / "job.json")], cwd=ROOT,
        env=clean_env() | {TAG_VAR: tag}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (record.is_file() and json.loads(record.read_text())["step"] >= 4):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint came"
            time.sleep(0.2)
        pids = tagged(tag)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=120)
    finally:
        kill_tagged(tag)
    stopped_at = json.loads(record.read_text())["step"]
    print(f"SIGTERM to {len(pids)} processes; checkpoint at step {stopped_at} of 60")
    assert len(pids) >= 4, pids  # the rule's process, torchrun, 2 ranks
    assert proc.returncode != 0 and 4 < stopped_at < 60, log[-3000:]
    assert f"stopped by SIGTERM after step {stopped_at} (checkpoint written)" in log, log[-3000:]
    assert not list((tmp_path / "spread" / "group").rglob("model.safetensors"))
    launch(group_job(long, tmp_path / "spread", runs))  # rerun: 1 process, same checkpoint
    one = drafts(uninterrupted / "group", runs)
    resumed = drafts(tmp_path / "spread" / "group", runs)
    assert all(max_diff(one[n], resumed[n]) == 0.0 for n in one)


HANG = """
import os, time
import torch.distributed as dist
dist.init_process_group("gloo")
if int(os.environ["RANK"]) == 0:
    dist.barrier()  # waits for rank 1, which never comes
else:
    time.sleep(3600)
"""


def test_a_hung_rank_group_fails_within_its_timeout_and_leaves_no_process(tmp_path):
    """The guard itself: torchrun's ranks live in sessions of their own, so killing the
    launcher's process group alone would leave them holding the output pipe (issue 22)."""
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    tag, timeout = uuid.uuid4().hex, 12.0
    seen: list[int] = []  # the group's processes, counted while it hangs
    peek = threading.Timer(timeout - 3, lambda: seen.extend(tagged(tag)))
    t0 = time.perf_counter()
    peek.start()
    with pytest.raises(pytest.fail.Exception, match="timed out after 12s"):
        run_group([*cmd, str(script)], ROOT, timeout, "a hanging group", tag=tag)
    elapsed = time.perf_counter() - t0
    print(f"hung group failed after {elapsed:.1f}s (timeout {timeout:.0f}s)")
    assert len(seen) >= 3, f"expected the launcher and 2 ranks hanging, saw {seen}"
    assert elapsed < timeout + 10
    assert tagged(tag) == [], "processes of the hung group are still alive"
