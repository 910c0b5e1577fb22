"""What a training run sees, step by step: its batches, its learning rate, its random draws.

Everything here is a pure function of (seed, step), so that

* every draft of a group (:mod:`specbench.training.trainer`) sees identical batches in
  identical order, whatever its loss or seed: drafts are paired by construction;
* a run resumed from a checkpoint draws exactly what the uninterrupted run would have;
* N data-parallel ranks draw what one process draws (randomness is keyed by micro-batch,
  not by the rank that happens to run it).
"""

from __future__ import annotations

import math

import torch

from specbench.data.splits import name_seed


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero (the LK paper's schedule)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class BatchSchedule:
    """The sequences of each optimizer step: epochs over ``pool``, each one reshuffled.

    The stream is the concatenation of the epochs' permutations (seeded by ``data_seed`` and
    the epoch), cut into consecutive batches of ``batch_size``. A batch may straddle two
    epochs; no sequence is dropped, and within an epoch none repeats: every sequence is
    seen once per ``len(pool)`` sequences drawn, not at random with replacement.
    """

    def __init__(self, pool: list[int], batch_size: int, data_seed: int) -> None:
        if not pool:
            raise ValueError("no training sequences to draw batches from")
        self.pool, self.batch_size, self.data_seed = list(pool), batch_size, data_seed
        self._epoch: tuple[int, list[int]] = (-1, [])  # the last epoch's order (one in use)

    def epoch_order(self, epoch: int) -> list[int]:
        if self._epoch[0] != epoch:
            key = name_seed("epoch", str(self.data_seed), str(epoch))
            perm = torch.randperm(len(self.pool), generator=torch.Generator().manual_seed(key))
            self._epoch = (epoch, [self.pool[i] for i in perm.tolist()])
        return self._epoch[1]

    def __getitem__(self, step: int) -> list[int]:
        start, n = step * self.batch_size, len(self.pool)
        out: list[int] = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), n)
            out.extend(self.epoch_order(epoch)[offset : offset + self.batch_size - len(out)])
        return out


def micro_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The random stream of one draft on one micro-batch (anchor subsets, masks).

    Keyed by (draft seed, step, micro-batch index), so a draft's draws do not depend on
    which rank runs the micro-batch, on the other drafts of its group, or on a resume.
    """
    return torch.Generator().manual_seed(name_seed("draw", str(seed), str(step), str(micro)))
