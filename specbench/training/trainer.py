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
* on N data-parallel ranks, each rank takes every N-th micro-batch of a step and the
  drafts' gradients are summed over the ranks (each rank holds every draft of the group);
* a draft whose loss or gradient turns non-finite stops, keeping its last finite weights,
  and says at which step; the others go on;
* every ``checkpoint_every`` steps the whole group is saved atomically, and a restarted
  job resumes from there (the batches and draws are functions of the step, so a resumed
  run equals an uninterrupted one).

The trainer aligns each anchor and draft step with the target's distribution and token
(:func:`specbench.drafts.align.align`), then hands ``[N, K, V]`` tensors to the loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from specbench.acceptance import alpha
from specbench.dist import rank_and_world
from specbench.drafts.align import StepTargets, align, usable_k
from specbench.drafts.base import Draft
from specbench.features.vocab import target_to_draft_map
from specbench.io import progress, tmp_path_for
from specbench.training.config import TrainConfig
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
    records: list[dict] = field(default_factory=list)
    stopped: str | None = None  # why it stopped before the last step (None: it did not)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.draft.parameters() if p.requires_grad]

    @property
    def status(self) -> dict[str, Any]:
        """What ``train_status.json`` says: ``complete``, or ``stopped`` with the reason."""
        done = len(self.records)
        if self.stopped is None:
            return {"status": "complete", "steps": done}
        return {"status": "stopped", "steps": done, "reason": self.stopped}


def make_member(
    name: str, draft: Draft, loss_fn: Callable, seed: int, train: TrainConfig, device
) -> Member:
    """A draft ready to train: on ``device``, in train mode, with AdamW over its trainables."""
    draft.to(device).train()
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)
    return Member(name, draft, loss_fn, seed, opt, usable_k(draft, train.k_for(draft.arch)))


@torch.no_grad()
def acceptance_by_position(st: StepTargets) -> torch.Tensor:
    """Mean α_k = Σ_v min(p, q) per draft position over valid rows (a training diagnostic)."""
    q = torch.softmax(st.logits.float(), -1)
    a = alpha(st.target_logprobs.exp(), q)
    m = st.mask.float()
    return (a * m).sum(0) / m.sum(0).clamp(min=1)


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
) -> tuple[float, torch.Tensor]:
    """Backward one micro-batch, its loss scaled by ``share``; return (loss, α by step).

    ``share`` is the micro-batch's fraction of the step's batch, so the accumulated gradient
    is the mean of the micro-batch gradients. Per-position means and batch statistics
    (LK^λ's ᾱ, TVD++'s μ) are then taken per micro-batch, as across data-parallel ranks.
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
    return loss.item() * share, acceptance_by_position(st) * share


def sum_over_ranks(member: Member, loss: float, alpha_sum: torch.Tensor) -> tuple[float, Any]:
    """All-reduce a draft's gradients, loss and α over the data-parallel ranks (sum)."""
    _, world = rank_and_world()
    if world == 1:
        return loss, alpha_sum
    params = member.params
    for p in params:
        if p.grad is None:  # no gradient on this rank's micro-batches: a zero one
            p.grad = torch.zeros_like(p)
    stats = torch.cat([torch.tensor([loss], device=alpha_sum.device), alpha_sum.float()])
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [stats.to(params[0].grad)])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
    stats = flat[offset:].to(alpha_sum.device)
    return float(stats[0]), stats[1:]


def save_checkpoint(path: Path, step: int, members: list[Member], fingerprint: dict) -> None:
    """The group after ``step`` steps, atomically (a kill mid-write leaves the previous one)."""
    state = {
        "step": step,
        "fingerprint": fingerprint,
        "members": {
            m.name: {
                "draft": m.draft.state_dict(),
                "opt": m.opt.state_dict(),
                "records": m.records,
                "stopped": m.stopped,
            }
            for m in members
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, members: list[Member], fingerprint: dict, log) -> int:
    """Restore the group from ``path`` if it is this run's; return the step to go on from."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["fingerprint"] != fingerprint:
        log(f"checkpoint {path} is from another run ({state['fingerprint']}): starting over")
        return 0
    for m in members:
        saved = state["members"][m.name]
        m.draft.load_state_dict(saved["draft"])
        m.opt.load_state_dict(saved["opt"])
        m.records, m.stopped = saved["records"], saved["stopped"]
    log(f"resumed from {path} at step {state['step']}")
    return int(state["step"])


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
    """Train every member for ``steps`` optimizer steps on one stream of batches.

    ``sequences``: the source rows batches are drawn from (default all; a learning curve
    trains on subsets). ``checkpoint``: where the group is saved every
    ``train.checkpoint_every`` steps and resumed from. Each member's ``records`` get one row
    per step it trained (the train log); ``tokens`` counts the response tokens of the batch.
    The batch stream lives on the CPU, so a seed draws the same batches on every device.
    """
    rank, world = rank_and_world()
    device = torch.device(device) if device is not None else members[0].draft.device
    s = train
    pool = list(range(len(source))) if sequences is None else list(sequences)
    schedule = BatchSchedule(pool, s.batch_size, s.data_seed)
    size = s.micro_batch_size or s.batch_size
    parts = s.batch_size // size  # micro-batches per step, dealt round robin to the ranks
    if parts % world:
        raise ValueError(
            f"{parts} micro-batches per step (train.batch_size {s.batch_size} / "
            f"micro_batch_size {size}) cannot be shared evenly by {world} ranks"
        )
    t2d = target_to_draft_map(source.draft_to_target, members[0].draft.info.vocab_size).to(device)
    response_tokens = source.response_tokens()
    autocast = None if s.autocast == "none" else getattr(torch, s.autocast)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    fingerprint = {"members": [m.name for m in members], "steps": steps, "pool": len(pool)}
    first = load_checkpoint(ckpt, members, fingerprint, log) if ckpt else 0
    t0 = time.perf_counter()
    for step in range(first, steps):
        active = [m for m in members if m.stopped is None]
        if not active:
            break
        lr = cosine_lr(step, steps, s.warmup_steps, s.lr)
        idx = schedule[step]
        sums: dict[str, tuple[float, Any]] = {m.name: (0.0, 0.0) for m in active}
        for m in active:
            m.opt.zero_grad(set_to_none=True)
        for part in range(rank, parts, world):
            seqs = idx[part * size : (part + 1) * size]
            batch = source.batch(seqs, device)  # the one target pass every draft shares
            for m in active:
                loss, a = micro_step(
                    m.draft, m.loss_fn, batch, m.k, t2d, micro_generator(m.seed, step, part),
                    len(seqs) / len(idx), s.out_of_vocab == "drop", autocast,
                )  # fmt: skip
                sums[m.name] = (sums[m.name][0] + loss, sums[m.name][1] + a)
            del batch
        for m in active:
            loss, a = sum_over_ranks(m, *sums[m.name])
            grad_norm = torch.nn.utils.clip_grad_norm_(m.params, s.grad_clip)
            if not (torch.isfinite(torch.tensor(loss)) and torch.isfinite(grad_norm)):
                what = "loss" if not torch.isfinite(torch.tensor(loss)) else "gradient"
                m.stopped = f"non-finite {what} at step {step}"
                m.opt.zero_grad(set_to_none=True)  # the step is not taken: last finite weights
                log(f"{m.name}: stopped, {m.stopped} (the other drafts go on)")
                continue
            for g in m.opt.param_groups:
                g["lr"] = lr
            m.opt.step()
            m.records.append(
                {
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens": int(response_tokens[idx].sum()),
                    "seconds": time.perf_counter() - t0,
                    **{f"alpha_{j + 1}": float(x) for j, x in enumerate(a)},
                }
            )
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            done = progress(step + 1 - first, steps - first, time.perf_counter() - t0, "steps")
            log(f"step {step:5d}/{steps} [{done}]")
            for m in active:
                if m.stopped is None:
                    r = m.records[-1]
                    log(
                        f"  {m.name:24s} loss {r['loss']:.4f} alpha_1 {r['alpha_1']:.3f} "
                        f"alpha_K {r[f'alpha_{m.k}']:.3f}"
                    )
        every = s.checkpoint_every
        if ckpt and rank == 0 and every and (step + 1) % every == 0 and step + 1 < steps:
            save_checkpoint(ckpt, step + 1, members, fingerprint)
    if ckpt and rank == 0:  # the whole group done: a restart goes straight to the outputs
        save_checkpoint(ckpt, steps, members, fingerprint)
    for m in members:
        m.draft.eval()


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
    """Train one draft (a group of one) for ``train.steps`` steps; return its train log."""
    device = torch.device(device) if device is not None else draft.device
    member = make_member(f"seed{seed}", draft, loss_fn, seed, train, device)
    train_group([member], source, train, train.steps, log, device, sequences)
    return member.records
