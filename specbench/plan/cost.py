"""GPU-hours of the online training jobs and of regenerating responses, from stated formulas.

Nothing here is measured on a GPU: the throughput constants are assumptions, named below,
and every figure follows from them and from the shapes (parameters counted on the real
configs, :mod:`specbench.plan.shapes`; draft FLOPs from ``Draft.flops_per_step``).

One online group job (N GPUs, g drafts, ⌈g/N⌉ per GPU, micro-batches of b sequences of L
tokens; :mod:`specbench.training.trainer`)::

    S      = ⌈epochs · n / B⌉                   optimizer steps (n training sequences)
    m      = B / b                               micro-batches per step
    t_f    = max(2·P_active·b·L / (F·u), t_g, FLOOR)   one target forward of a micro-batch on
                                                 one GPU: compute, or ZeRO-3's gathering
    t_g    = (N−1)/N · 2P / NVLINK + [offload] 2P/N / PCIE
    t_d    = (3 + r)·K·f·b·L / (F·u)             one draft's forward + backward; f = FLOPs of
                                                 one draft step per token, r = 1 where the
                                                 TTT steps are recomputed (CUDA), else 0
    wall   = S · (m/N · t_f + m · ⌈g/N⌉ · t_d)   each GPU runs the target on m/N micro-batches
                                                 and trains its drafts on all m of them
    GPU-h  = N · wall / 3600

Regenerated training responses (targets without released completions), sharded over jobs::

    forwards = ⌈n / (N · batch_gen)⌉ · (new_tokens + 1)   decode steps per rank
    GPU-h    = N · forwards · t' / 3600         t' = max(t_g, 2P_active/HBM, FLOOR)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

# H100 SXM dense bf16 FLOP/s and the utilisation assumed for training-sized matmuls
FLOPS, UTIL = 989e12, 0.4
NVLINK = 300e9  # B/s a GPU receives in a ZeRO-3 all-gather
PCIE = 40e9  # B/s a GPU reads its offloaded shard from pinned host memory
HBM = 3.35e12  # B/s: a decode step at batch 64 reads the active weights once
TOKENS = 650  # L: mean padded tokens of a training sequence (prompt + response)
# seconds a target forward takes at least: kernel launches and ZeRO-3's hooks on hundreds of
# submodules (the floor of a small model's decode step)
FLOOR = 0.03


def target_params(shape: PretrainedConfig) -> tuple[float, float]:
    """(total, active per token) parameters of a target, counted on the meta device; routed
    experts count at ``experts_per_token / experts`` in the active ones."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape)
    total = float(sum(p.numel() for p in model.parameters()))
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    n_exp = (
        getattr(shape, "num_local_experts", None)
        or getattr(shape, "num_experts", None)
        or getattr(shape, "n_routed_experts", None)
    )
    top_k = getattr(shape, "num_experts_per_tok", None) or 0
    active = total - experts * (1 - top_k / n_exp) if n_exp else total
    return total, active


def offloads(zero3: dict | None) -> bool:
    """Whether a target's ZeRO-3 settings keep its partitions off the GPUs (cpu, nvme)."""
    return zero3 is not None and zero3.get("offload_param", "none") not in ("none", None)


def gather_seconds(total: float, ranks: int, zero3: dict | None) -> float:
    """``t_g``: one forward's worth of ZeRO-3 weight traffic into one GPU."""
    if zero3 is None:
        return 0.0
    nvlink = (ranks - 1) / ranks * 2 * total / NVLINK
    return nvlink + (2 * total / ranks / PCIE if offloads(zero3) else 0.0)


@dataclass
class JobCost:
    steps: int
    t_f: float  # seconds, one target forward of a micro-batch
    t_d: float  # seconds, one draft's forward + backward of a micro-batch
    wall_h: float  # hours, one group job
    gpu_h: float  # GPU-hours, all the jobs of the row
    target_gpu_h: float  # of which target forwards


def group_cost(
    active: float, t_gather: float, flops_per_step: float, k: int, recompute: bool,
    steps: int, batch: int, micro: int, ranks: int, per_rank: int, jobs: int,
    tokens: int = TOKENS,
) -> JobCost:  # fmt: skip
    """The formulas of the module doc for one (target, architecture) row."""
    m = batch // micro
    t_f = max(2 * active * micro * tokens / (FLOPS * UTIL), t_gather, FLOOR)
    t_d = (3 + recompute) * k * flops_per_step * micro * tokens / (FLOPS * UTIL)
    target_s, draft_s = steps * m / ranks * t_f, steps * m * per_rank * t_d
    wall_h = (target_s + draft_s) / 3600
    return JobCost(steps, t_f, t_d, wall_h, jobs * ranks * wall_h,
                   jobs * ranks * target_s / 3600)  # fmt: skip


def regeneration_gpu_hours(
    total: float, active: float, t_gather: float, ranks: int, n: int, batch_gen: int,
    new_tokens: int,
) -> tuple[int, float]:  # fmt: skip
    """(decode forwards per rank, GPU-hours) of regenerating ``n`` responses."""
    forwards = math.ceil(n / (ranks * batch_gen)) * (new_tokens + 1)
    step = max(t_gather, 2 * active / HBM, FLOOR)  # every rank runs the whole forward
    return forwards, ranks * forwards * step / 3600
