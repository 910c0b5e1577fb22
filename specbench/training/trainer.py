"""Train a group of drafts, each with its own loss and seed, on one stream of target features.

A *group* is every (loss, seed) of one (target, architecture) that a job trains together.
Each optimizer step draws one batch (:class:`~specbench.training.schedule.BatchSchedule`),
gets its target features once from the *source*, and steps every draft of the group on
them:

* the source is a :class:`~specbench.features.cache.FeatureCache` (features read from
  disk) or :class:`~specbench.targets.featurize.OnlineFeatures` (the target runs here, one
  forward per micro-batch, shared by every draft: target work does not grow with the
  group);
* a group of one draft is what ``train_draft`` (one matrix cell) runs, and it trains that
  draft exactly as the group would (same batches, same random draws);
* on N ranks (a job whose target is partitioned over N GPUs), the drafts are spread over
  the ranks, not replicated: draft i lives on rank i mod N. Each rank runs the target on
  every N-th micro-batch and broadcasts its features to the others, so every draft still
  sees every micro-batch. A group then holds N GPUs' worth of drafts, and no gradient
  crosses ranks (see docs/cluster.md for why, not data-parallel replicas);
* a draft whose loss or gradient turns non-finite stops, keeping its last finite weights,
  and says at which step; the others go on;
* every ``checkpoint_every`` steps each rank saves its drafts, then rank 0 records the
  step, atomically; a restarted job resumes from the last recorded step (the batches and
  draws are functions of the step, so a resumed run equals an uninterrupted one).

The trainer aligns each anchor and draft step with the target's distribution and token
(:func:`specbench.drafts.align.align`), then hands the ``[N, K, V]`` draft logits and the
target log-probs (the batch's rows by index, not an ``[N, K, V]`` copy) to the loss.

The collective order
--------------------
On N ranks every collective must be made by every rank, in the same order, or the job hangs
until the process group's timeout. This is the whole list, in the order :func:`train_group`
makes them (``tests/test_ranks.py`` runs groups on 2 and 3 ranks under a hard timeout):

1. once: the drafts' names (``all_gather_object``), for the checkpoint's fingerprint;
2. per step: whether any rank still has a draft training (``all_gather_object``);
3. per N micro-batches (online source only; a cache is read by each rank for itself): one
   target forward on every rank (ZeRO-3 all-gathers each layer's
   parameters: the same sequence everywhere, as every rank runs the same model once), then
   for each source rank in turn, the ``[B, L]`` shape and the 7 batch tensors
   (``broadcast``); ranks then step their own drafts, **with no collective**: a loss that
   pools a batch statistic (LK^λ's ᾱ, TVD++'s μ, ``lk_alpha(reduce=batch)``) pools it over
   its own draft's micro-batch, exactly as alone (it is built without a process group,
   :func:`specbench.losses.build`), however the pooling losses are spread over the ranks;
4. per step: the log lines (``all_gather_object``);
5. per checkpoint: ``barrier``, rank 0 records the step, ``barrier``; and once more after
   the last step; then, in the recipe, one ``barrier`` once every rank has written its drafts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from specbench.acceptance import alpha
from specbench.artifacts import GroupCheckpoint, TrainStatus
from specbench.dist import rank_and_world
from specbench.drafts.align import StepTargets, align, training_k
from specbench.drafts.base import Draft
from specbench.features.vocab import target_to_draft_map
from specbench.io import progress, tmp_path_for
from specbench.losses.rows import row_chunk
from specbench.losses.rowstats import default_chunk_rows
from specbench.training.config import TrainConfig
from specbench.training.precision import choose_precision
from specbench.training.preemption import Preempted, StopSignals
from specbench.training.schedule import BatchSchedule, cosine_lr, micro_generator


class FeatureSource(Protocol):
    """Where batches of target features come from: a cache file, or the target itself."""

    draft_to_target: torch.Tensor

    def __len__(self) -> int: ...
    def response_tokens(self) -> torch.Tensor: ...
    def batch(self, indices: list[int], device: torch.device | str | None = None) -> dict: ...


@dataclass
class Member:
    """One draft of a group: its loss, seed, optimizer, log, and whether it stopped early."""

    name: str  # "<loss>/seed<seed>", for logs
    draft: Draft
    loss_fn: Callable[..., torch.Tensor]
    seed: int
    opt: torch.optim.Optimizer
    k: int
    lr: float  # peak learning rate (train.lr for the draft's architecture)
    records: list[dict] = field(default_factory=list)
    stopped: str | None = None  # why it stopped before the last step (None: it did not)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.draft.parameters() if p.requires_grad]

    @property
    def status(self) -> TrainStatus:
        """What ``train_status.json`` says: ``complete``, or ``stopped`` with the reason."""
        done = len(self.records)
        if self.stopped is None:
            return TrainStatus("complete", done)
        return TrainStatus("stopped", done, self.stopped)


def move_sharing(draft: Draft, device, shared: dict[tuple, torch.Tensor]) -> None:
    """``draft.to(device)``, where a frozen buffer that aliases a host tensor another draft
    holds too (the target's embedding, ``register_vocab``) is copied to the device once and
    shared: ``Module.to`` would give every draft of a group its own copy (2 GB in bf16 on
    Llama-3.3-70B). ``shared`` maps a host tensor's identity to its device copy."""
    device = torch.device(device)
    for module in draft.modules():
        for name, buf in module._buffers.items():
            if buf is None or buf.device == device or buf.requires_grad:
                continue
            key = (buf.untyped_storage().data_ptr(), buf.storage_offset(), buf.shape, buf.dtype)
            if key not in shared:
                shared[key] = buf.to(device)
            module._buffers[name] = shared[key]
    draft.to(device)


def make_member(
    name: str,
    draft: Draft,
    loss_fn: Callable,
    seed: int,
    train: TrainConfig,
    device,
    shared: dict[tuple, torch.Tensor] | None = None,
) -> Member:
    """A draft ready to train: on ``device`` (sharing the device copies of ``shared``, see
    :func:`move_sharing`), in train mode, with AdamW over its trainables."""
    move_sharing(draft, device, {} if shared is None else shared)
    draft.train()
    draft.prepare(torch.device(device))  # e.g. TTT steps recomputed on CUDA (Draft.prepare)
    params = [p for p in draft.parameters() if p.requires_grad]
    lr = train.lr_for(draft.arch)
    # fused on CUDA: one kernel over all parameters, no parameter-sized foreach temporaries
    # (12 GB for MEDUSA on Llama-3.1-8B); on a CPU the foreach path, as the measured runs had
    fused = torch.device(device).type == "cuda"
    opt = torch.optim.AdamW(
        params, lr=lr, betas=train.betas, weight_decay=train.weight_decay, fused=fused or None
    )
    return Member(name, draft, loss_fn, seed, opt, training_k(draft, train.k_for(draft.arch)), lr)


@torch.no_grad()
def acceptance_by_position(st: StepTargets) -> torch.Tensor:
    """Mean α_k = Σ_v min(p, q) per draft position over valid rows (a training diagnostic).

    In chunks of rows, as the loss: whole, its float32 temporaries would be three
    [N, K, V] tensors (40 GiB for MEDUSA on Llama-3.1-8B's 128k vocabulary); the target
    log-probs are gathered a chunk at a time too (``row_chunk``)."""
    n, k, v = st.logits.shape
    rows = max(1, default_chunk_rows(v, st.logits.device) // k)
    total = st.logits.new_zeros(k, dtype=torch.float32)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        q = torch.softmax(st.logits[lo:hi].float(), -1)  # [hi − lo, K, V]
        p = row_chunk(st.target_logprobs, lo * k, hi * k).view(hi - lo, k, v).exp()
        total += (alpha(p, q) * st.mask[lo:hi]).sum(0)
    return total / st.mask.sum(0).clamp(min=1)


def micro_step(
    draft: Draft,
    loss_fn: Callable,
    batch: dict,
    k: int,
    t2d: torch.Tensor,
    gen: torch.Generator,
    share: float,
    drop_out_of_vocab: bool = False,
    autocast: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward one micro-batch, its loss scaled by ``share``; return (loss, α by step · share).

    Both are detached device tensors: nothing here waits for the device (no ``.item()``);
    the trainer reads them once per step. The loss returned is the micro-batch's own, unscaled.

    ``share`` is the micro-batch's fraction of the step's batch, so the accumulated gradient
    is the mean of the micro-batch gradients. Per-position means and batch statistics
    (LK^λ's ᾱ, TVD++'s μ) are then taken per micro-batch, never across ranks.
    ``drop_out_of_vocab``: leave out of the loss the rows whose target argmax has no draft
    id (``train.out_of_vocab: drop``, SpecForge's choice); by default they stay.
    ``autocast``: run the draft's forward under ``torch.autocast`` in that dtype.
    """
    device = batch["input_ids"].device
    with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=bool(autocast)):
        st = align(draft, batch, k, t2d, gen)
    mask = st.mask & (t2d[st.target_argmax] >= 0) if drop_out_of_vocab else st.mask
    loss = loss_fn(
        draft_logits=st.logits, target_logits=st.target_logprobs, mask=mask, labels=st.labels
    )
    (loss * share).backward()
    return loss.detach(), acceptance_by_position(st) * share


BATCH_KEYS = ("features", "logprobs", "target_argmax", "input_ids", "loss_mask")
BATCH_KEYS += ("attention_mask", "prompt_index")


def broadcast_batch(batch: dict | None, src: int, like: dict) -> dict:
    """Rank ``src``'s batch on every rank (``batch`` is None elsewhere).

    ``like``: a batch of this rank's (the dtypes, trailing shapes and device to use). The
    ``[B, L]`` shape goes first, then each tensor; bool tensors travel as uint8 (gloo).
    """
    rank, _ = rank_and_world()
    device = like["input_ids"].device
    shape = torch.tensor(batch["input_ids"].shape if rank == src else (0, 0), device=device)
    dist.broadcast(shape, src)
    b, width = shape.tolist()
    out = {}
    for key in BATCH_KEYS:
        ref = like[key]
        lead = (b,) if key == "prompt_index" else (b, width)
        wire = torch.uint8 if ref.dtype == torch.bool else ref.dtype
        t = batch[key].to(wire) if rank == src else torch.empty(
            (*lead, *ref.shape[len(lead):]), dtype=wire, device=device
        )  # fmt: skip
        dist.broadcast(t, src)
        out[key] = t.bool() if ref.dtype == torch.bool else t
    return out


def step_batches(source: FeatureSource, parts: list[list[int]], device) -> Iterator[dict]:
    """The batches of one step's micro-batches, in order, on every rank.

    A cache is read by each rank for itself. The online target is run by each rank on every
    N-th micro-batch only (N forwards in parallel, as ZeRO-3 wants them: the same number
    on every rank); each result is then broadcast from the rank that computed it.
    """
    rank, world = rank_and_world()
    if world == 1 or not getattr(source, "runs_target", False):
        for seqs in parts:
            yield source.batch(seqs, device)
        return
    for first in range(0, len(parts), world):
        mine = source.batch(parts[first + rank], device)
        for src in range(world):  # the source rank sends; it keeps its own copy
            shared = broadcast_batch(mine if src == rank else None, src, mine)
            yield mine if src == rank else shared
        del mine


class Checkpoint:
    """A group's checkpoint folder: one file per draft and step, and a ``step`` record.

    Each rank writes the drafts it holds (``<draft>.step<N>.pt``); once all have, rank 0
    writes ``step`` (atomically) and the older files go. A kill at any moment leaves a
    ``step`` whose files all exist, so a restart resumes from it, on any number of ranks.
    """

    def __init__(self, folder: str | Path, fingerprint: dict) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint

    def _file(self, m: Member, step: int) -> Path:
        return self.folder / f"{m.name.replace('/', '__')}.step{step}.pt"

    def save(self, step: int, mine: list[Member]) -> None:
        rank, world = rank_and_world()
        self.folder.mkdir(parents=True, exist_ok=True)
        for m in mine:
            state = {"draft": m.draft.state_dict(), "opt": m.opt.state_dict()}
            state |= {"records": m.records, "stopped": m.stopped}
            tmp = tmp_path_for(self._file(m, step))
            torch.save(state, tmp)
            tmp.replace(self._file(m, step))
        if world > 1:
            dist.barrier()
        if rank == 0:
            GroupCheckpoint(step, self.fingerprint).write(self.folder)
        if world > 1:
            dist.barrier()
        for m in mine:
            for old in self.folder.glob(f"{m.name.replace('/', '__')}.step*.pt"):
                if old != self._file(m, step):
                    old.unlink(missing_ok=True)

    def load(self, mine: list[Member], log) -> int:
        """Restore this rank's drafts if the folder holds this run; the step to go on from."""
        saved = GroupCheckpoint.read(self.folder)
        if saved is None:
            return 0
        if saved.fingerprint != self.fingerprint:
            log(f"checkpoint {self.folder} is from another run ({saved.fingerprint}): ignored")
            return 0
        step = saved.step
        for m in mine:
            state = torch.load(self._file(m, step), map_location=m.draft.device, weights_only=False)
            m.draft.load_state_dict(state["draft"])
            m.opt.load_state_dict(state["opt"])
            m.records, m.stopped = state["records"], state["stopped"]
        log(f"resumed from {self.folder} at step {step}")
        return step


def run_fingerprint(
    members: list[Member], names: list[str], train: TrainConfig, steps: int, pool: list[int]
) -> dict:
    """What a group checkpoint must match to be resumed: the drafts (names, architecture and
    hparams), the training settings and the data pool. A rerun after any of them changed
    (Snakemake reruns the job; the checkpoint folder outlives it) starts afresh instead of
    resuming another run's weights. The same on every rank (a rank may hold no draft)."""
    mine = {
        json.dumps([m.draft.arch, m.draft.hparams], sort_keys=True, default=str) for m in members
    }
    drafts = sorted(set(gather_lists(sorted(mine))))
    setup = {"drafts": drafts, "train": train.model_dump(mode="json"), "pool": pool}
    digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()
    return {"drafts": sorted(names), "steps": steps, "pool": len(pool), "setup": digest[:16]}


def train_group(
    members: list[Member],
    source: FeatureSource,
    train: TrainConfig,
    steps: int,
    log=print,
    device: torch.device | str | None = None,
    sequences: list[int] | None = None,
    checkpoint: str | Path | None = None,
) -> None:
    """Train ``members`` (this rank's drafts of the group) for ``steps`` optimizer steps.

    ``sequences``: the source rows batches are drawn from (default all; a learning curve
    trains on subsets). ``checkpoint``: the folder the group is saved to every
    ``train.checkpoint_every`` steps and resumed from. Each member's ``records`` get one row
    per step it trained (the train log); ``tokens`` counts the response tokens of the batch.
    ``log`` is called on every rank (pass a rank-0 printer); the lines about the drafts of
    the other ranks are gathered into it. The batch stream lives on the CPU, so a seed
    draws the same batches on every device.
    """
    rank, world = rank_and_world()
    device = torch.device(device) if device is not None else members[0].draft.device
    pool = list(range(len(source))) if sequences is None else list(sequences)
    schedule = BatchSchedule(pool, train.batch_size, train.data_seed)
    size = train.micro_batch_size or train.batch_size
    n_parts = train.batch_size // size
    if n_parts % world:
        raise ValueError(
            f"{n_parts} micro-batches per step (train.batch_size {train.batch_size} / "
            f"micro_batch_size {size}) cannot be shared evenly by {world} ranks"
        )
    vocab = source.draft_to_target
    t2d = (
        target_to_draft_map(vocab, members[0].draft.info.vocab_size).to(device) if members else None
    )
    response_tokens = source.response_tokens()
    precision = choose_precision(train.autocast, device)
    log(str(precision))
    autocast = precision.dtype
    names = gather_lists([m.name for m in members])
    ckpt = Checkpoint(checkpoint, run_fingerprint(members, names, train, steps, pool)) if (
        checkpoint
    ) else None  # fmt: skip
    first = ckpt.load(members, log) if ckpt else 0
    with StopSignals() as stop:  # a signal: checkpoint at the end of the step, stop
        t0 = time.perf_counter()
        for step in range(first, steps):
            active = [m for m in members if m.stopped is None]
            if not any_rank(bool(active)):
                break
            idx = schedule[step]
            parts = [idx[p * size : (p + 1) * size] for p in range(n_parts)]
            # per draft: the micro-batches' (loss, share) and Σ α·share, read once per step
            parts_loss: dict[str, list[tuple[torch.Tensor, float]]] = {m.name: [] for m in active}
            alphas: dict[str, Any] = {m.name: 0.0 for m in active}
            for m in active:
                m.opt.zero_grad(set_to_none=True)
            for p, batch in enumerate(step_batches(source, parts, device)):
                for m in active:  # the one target pass every draft shares
                    share = len(parts[p]) / len(idx)
                    loss, a = micro_step(
                        m.draft, m.loss_fn, batch, m.k, t2d, micro_generator(m.seed, step, p),
                        share, train.out_of_vocab == "drop", autocast,
                    )  # fmt: skip
                    parts_loss[m.name].append((loss, share))
                    alphas[m.name] = alphas[m.name] + a
                del batch
            lines, tokens = [], int(response_tokens[idx].sum())
            for m in active:
                loss = sum(float(x) * share for x, share in parts_loss[m.name])  # one sync a step
                lr = cosine_lr(step, steps, train.warmup_steps, m.lr)
                record = {"step": step, "loss": loss, "lr": lr, "tokens": tokens}
                if stopped := optimizer_step(m, alphas[m.name], record, train.grad_clip, t0):
                    lines.append(stopped)
            if step % max(1, steps // 10) == 0 or step == steps - 1:
                done = progress(step + 1 - first, steps - first, time.perf_counter() - t0, "steps")
                for m in active:
                    if m.stopped is None:
                        r = m.records[-1]
                        lines.append(
                            f"  {m.name:24s} loss {r['loss']:.4f} alpha_1 {r['alpha_1']:.3f} "
                            f"alpha_K {r[f'alpha_{m.k}']:.3f}"
                        )
                lines = [f"step {step:5d}/{steps} [{done}]", *lines]
            signals = []  # a signal any rank received, with the log lines (no extra collective)
            for rank_lines, received in gather_lists([(lines, stop.received)]):
                for line in rank_lines:
                    log(line)
                signals.append(received)
            if signame := next(filter(None, signals), None):
                if ckpt:
                    ckpt.save(step + 1, members)
                raise Preempted(signame, step + 1, saved=ckpt is not None)
            every = train.checkpoint_every
            if ckpt and every and (step + 1) % every == 0 and step + 1 < steps:
                ckpt.save(step + 1, members)
    if ckpt:  # the whole group trained: a restart goes straight to writing the drafts
        ckpt.save(steps, members)
    for m in members:
        m.draft.eval()


def optimizer_step(m: Member, alpha: Any, record: dict, grad_clip: float, t0: float) -> str | None:
    """Clip, step and log ``m`` (``record`` holds the step, loss, lr and tokens); or stop it.

    A non-finite loss or gradient stops the draft instead: the step is not taken, so it
    keeps its last finite weights. Returns the log line saying so, else None.
    """
    step, loss = record["step"], record["loss"]
    grad_norm = torch.nn.utils.clip_grad_norm_(m.params, grad_clip)
    finite = torch.isfinite(torch.tensor(loss)), torch.isfinite(grad_norm)
    if not all(finite):
        m.stopped = f"non-finite {'loss' if not finite[0] else 'gradient'} at step {step}"
        m.opt.zero_grad(set_to_none=True)
        return f"  {m.name}: stopped, {m.stopped} (the other drafts go on)"
    for g in m.opt.param_groups:
        g["lr"] = record["lr"]
    m.opt.step()
    alphas = {f"alpha_{j + 1}": float(x) for j, x in enumerate(alpha)}
    seconds = time.perf_counter() - t0
    m.records.append(  # the train log's columns, in this order
        {"step": step, "loss": loss, "lr": record["lr"], "grad_norm": float(grad_norm),
         "tokens": record["tokens"], "seconds": seconds, **alphas}
    )  # fmt: skip
    return None


def gather_lists(items: list) -> list:
    """Every rank's ``items``, concatenated in rank order (on every rank)."""
    _, world = rank_and_world()
    if world == 1:
        return items
    out: list = [None] * world
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on some rank (every rank gets the answer)."""
    _, world = rank_and_world()
    if world == 1:
        return flag
    return any(gather_lists([flag]))


def train_draft(
    draft: Draft,
    loss_fn,
    source: FeatureSource,
    train: TrainConfig,
    seed: int,
    log=print,
    device: torch.device | str | None = None,
    sequences: list[int] | None = None,
) -> list[dict]:
    """Train one draft (a group of one) for its ``train.steps``; return its train log."""
    device = torch.device(device) if device is not None else draft.device
    member = make_member(f"seed{seed}", draft, loss_fn, seed, train, device)
    steps = train.steps_for(draft.arch, len(source) if sequences is None else len(sequences))
    train_group([member], source, train, steps, log, device, sequences)
    return member.records
