"""Train one draft with one loss on the cached target features.

The target never runs here: every (architecture, loss, seed) reads the same cache. The
trainer aligns each anchor and draft step with the target's distribution and token
(:func:`specbench.drafts.align.align`), then hands ``[N, K, V]`` tensors to the loss.
"""

from __future__ import annotations

import math
import time

import torch

from specbench.acceptance import alpha
from specbench.drafts.align import StepTargets, align, usable_k
from specbench.drafts.base import Draft
from specbench.features.cache import FeatureCache
from specbench.features.vocab import target_to_draft_map
from specbench.io import progress
from specbench.training.config import TrainConfig


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero (the LK paper's schedule)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def acceptance_by_position(st: StepTargets) -> torch.Tensor:
    """Mean α_k = Σ_v min(p, q) per draft position over valid rows (a training diagnostic)."""
    q = torch.softmax(st.logits.float(), -1)
    a = alpha(st.target_logprobs.exp(), q)
    m = st.mask.float()
    return (a * m).sum(0) / m.sum(0).clamp(min=1)


def accumulate_gradients(
    draft: Draft,
    loss_fn,
    cache: FeatureCache,
    idx: list[int],
    k: int,
    micro_batch_size: int | None,
    t2d: torch.Tensor,
    gen: torch.Generator,
    device: torch.device,
    drop_out_of_vocab: bool = False,
    autocast: torch.dtype | None = None,
) -> tuple[float, torch.Tensor]:
    """Backward one batch (the sequences ``idx``) in micro-batches; return (loss, α by step).

    ``drop_out_of_vocab``: leave out of the loss the rows whose target argmax has no draft
    id (``train.out_of_vocab: drop``, SpecForge's choice); by default they stay.
    ``autocast``: run the draft's forward under ``torch.autocast`` in that dtype.

    Each micro-batch's loss is scaled by its share of the batch, so the accumulated gradient
    is the mean of the micro-batch gradients. As across data-parallel ranks, per-position
    means and batch statistics (LK^λ's ᾱ, TVD++'s μ) are then taken per micro-batch; with
    ``micro_batch_size`` unset the whole batch is one micro-batch and nothing changes.
    """
    size = micro_batch_size or len(idx)
    loss_sum, alpha_sum = 0.0, 0.0
    for start in range(0, len(idx), size):
        part = idx[start : start + size]
        batch = cache.batch(part, device)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=bool(autocast)):
            st = align(draft, batch, k, t2d, gen)
        mask = st.mask & (t2d[st.target_argmax] >= 0) if drop_out_of_vocab else st.mask
        loss = loss_fn(
            draft_logits=st.logits,
            target_logits=st.target_logprobs,
            mask=mask,
            labels=st.labels,
        )
        share = len(part) / len(idx)
        (loss * share).backward()
        loss_sum += loss.item() * share
        alpha_sum = alpha_sum + acceptance_by_position(st) * share
    return loss_sum, alpha_sum


def train_draft(
    draft: Draft,
    loss_fn,
    cache: FeatureCache,
    train: TrainConfig,
    seed: int,
    log=print,
    device: torch.device | str | None = None,
    sequences: list[int] | None = None,
) -> list[dict]:
    """Optimise ``draft`` for ``train.steps`` steps; returns per-step records (the train log).

    ``seed`` drives the batch and anchor sampling; ``K = train.k``, capped at what the
    architecture can draft (:func:`usable_k`). ``sequences``: the cache rows batches are
    drawn from (default all; a learning curve trains on subsets). Each record counts the
    response tokens its batch covered (``tokens``), so a log says how much data was seen.

    ``device``: where the draft and its batches go (the cache stays in host memory and each
    batch is copied over); default the draft's own device. The batch sampling stream lives
    on the CPU, so a seed draws the same sequences and anchors on every device.
    """
    device = torch.device(device) if device is not None else draft.device
    draft.to(device)
    s, k = train, usable_k(draft, train.k_for(draft.arch))
    gen = torch.Generator().manual_seed(seed)
    t2d = target_to_draft_map(cache.draft_to_target, draft.info.vocab_size).to(device)
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    pool = torch.tensor(list(range(len(cache))) if sequences is None else sequences)
    if pool.numel() == 0:
        raise ValueError("no training sequences to draw batches from")
    response_tokens = cache.t["loss_mask"].long().cumsum(0)[torch.tensor(cache.offsets[1:]) - 1]
    response_tokens = response_tokens.diff(prepend=torch.zeros(1, dtype=torch.long))
    records, t0 = [], time.perf_counter()
    draft.train()
    for step in range(s.steps):
        lr = cosine_lr(step, s.steps, s.warmup_steps, s.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = pool[torch.randint(len(pool), (s.batch_size,), generator=gen)].tolist()
        opt.zero_grad(set_to_none=True)
        loss, alpha = accumulate_gradients(
            draft,
            loss_fn,
            cache,
            idx,
            k,
            s.micro_batch_size,
            t2d,
            gen,
            device,
            drop_out_of_vocab=s.out_of_vocab == "drop",
            autocast=None if s.autocast == "none" else getattr(torch, s.autocast),
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        rec = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": int(response_tokens[idx].sum()),
            "seconds": time.perf_counter() - t0,
            **{f"alpha_{k + 1}": float(a) for k, a in enumerate(alpha)},
        }
        records.append(rec)
        if step % max(1, s.steps // 10) == 0 or step == s.steps - 1:
            log(
                f"step {step:5d}/{s.steps} loss {rec['loss']:.4f} "
                f"alpha_1 {rec['alpha_1']:.3f} alpha_K {rec[f'alpha_{k}']:.3f} "
                f"[{progress(step + 1, s.steps, rec['seconds'], 'steps')}]"
            )
    draft.eval()
    return records
