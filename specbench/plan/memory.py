"""Peak memory of a ``train_group`` rank: each part traced from the real code at real shapes.

A rank of an online group job holds (bytes, per rank):

    target     ZeRO-3 shard P·s/N (s = 2 for bf16) + the gathered working set, at most
               ``stage3_max_live_parameters``·s (all of it, P·s, with ``engine: hf``)
    forward    the target forward of one micro-batch [b, L] and its features (traced)
    drafts     ⌈g/N⌉ drafts: weights, buffers, gradients, AdamW moments (traced after
               one step), plus one device copy of the target's embedding, in its dtype,
               that the rank's drafts share (``trainer.move_sharing``)
    step       one draft's forward + backward + AdamW step on a micro-batch (traced above the
               drafts and batch; the drafts of a rank step one after another)
    batch      a micro-batch of features and target log-probs on the device, while stepping
    margin     ``MARGIN`` of the traced activations for what a trace cannot see (kernel
               workspaces, the caching allocator's rounding and fragmentation) plus the CUDA
               context, ``CONTEXT``

``peak = target + drafts + max(forward, batch + step) ·(1 + MARGIN) + CONTEXT``. The traced
parts run the trainer's own ``micro_step`` and ``TargetRunner``/``compute_features`` under
``FakeTensorMode`` (:mod:`specbench.plan.trace`), with the attention kernels CUDA would pick
(:func:`~specbench.plan.trace.cuda_attention`); on CPU at small shapes the trace equals the
measured allocator peak (``tests/test_plan.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from specbench.drafts import build_draft
from specbench.drafts.align import training_k
from specbench.drafts.draft_lm import CONFIG_ONLY
from specbench.features.cache import Sequence
from specbench.features.vocab import target_to_draft_map
from specbench.losses import build as build_loss
from specbench.plan.cost import offloads
from specbench.plan.shapes import planned_config
from specbench.plan.trace import PeakMemory, tracing
from specbench.targets.featurize import compute_features
from specbench.targets.info import _info
from specbench.targets.runner import TargetRunner
from specbench.training.trainer import micro_step

GiB = 2**30
MARGIN = 0.10  # of traced activations: workspaces, allocator rounding and fragmentation
CONTEXT = 0.75 * GiB  # the CUDA context and cuBLAS handles


@dataclass
class DraftMemory:
    """One draft's resident bytes and its micro-step's peak above them and the batch."""

    resident: int  # weights, own buffers, gradients, AdamW moments
    step: int  # activations and temporaries of one micro-step (forward, backward, AdamW)
    batch: int  # the micro-batch's tensors
    shared: int  # frozen target tensors the drafts of a rank share (the embedding)
    flops_per_step: float = 0.0  # ``Draft.flops_per_step``, for the cost model
    recompute: bool = False  # TTT steps recomputed in backward (``Draft.prepare``)
    k: int = 0  # the steps it trains: K capped at what it can draft (``usable_k``)


def fake_batch(b: int, length: int, hidden: int, vocab: int, draft_vocab: int) -> dict:
    """A micro-batch as the trainer gets it (float32 features and draft-vocab log-probs)."""
    return {
        "features": torch.empty(b, length, 4, hidden),
        "input_ids": torch.zeros(b, length, dtype=torch.long),
        "attention_mask": torch.ones(b, length, dtype=torch.bool),
        "loss_mask": torch.ones(b, length, dtype=torch.bool),
        "logprobs": torch.zeros(b, length, draft_vocab),
        "target_argmax": torch.zeros(b, length, dtype=torch.long),
    }


def draft_memory(
    cfg: PretrainedConfig, arch: str, hparams: dict, draft_vocab: int, b: int, length: int,
    k: int, loss: str = "kl", autocast: torch.dtype | None = None, fake: bool = True,
    dtype: torch.dtype = torch.bfloat16, cuda: bool | None = None,
    recompute: bool | None = None,
) -> DraftMemory:  # fmt: skip
    """Trace one draft of ``arch`` for target ``cfg`` (its tensors in ``dtype``): resident
    bytes and one micro-step.

    ``fake``: under ``FakeTensorMode`` (nothing allocated); False runs it for real on the
    CPU (tests). ``cuda`` (default: ``fake``): trace CUDA's attention kernels, not the CPU's.
    ``recompute`` (default: ``cuda``): TTT steps recomputed in backward, as the trainer sets
    them on a GPU.
    """
    with tracing(fake, cuda):
        v, d = cfg.vocab_size, cfg.hidden_size
        gpu = fake if cuda is None else cuda
        draft, info, embed = planned_draft(cfg, arch, hparams, draft_vocab, dtype, fake, gpu)
        if recompute is not None:
            draft.recompute_steps = recompute
        k = training_k(draft, k)  # as ``make_member`` sets it
        params = [p for p in draft.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        t2d = target_to_draft_map(info.draft_to_target, v)
        batch = fake_batch(b, length, d, v, draft_vocab)
        loss_fn = build_loss(loss)

        def step() -> None:
            gen = torch.Generator().manual_seed(0)
            micro_step(draft, loss_fn, batch, k, t2d, gen, 1.0, autocast=autocast)
            opt.step()

        step()  # AdamW's moments exist from here on, gradients stay
        probe = PeakMemory()
        probe.track(embed, info.lm_head, t2d, info.draft_to_target)  # the target's tensors
        base = probe.now
        # the drafts of a rank share one device copy of what they alias of the target's
        shared = sum(x.untyped_storage().nbytes() for x in draft.buffers() if probe.holds(x))
        probe.track(draft, opt, [p.grad for p in params])
        resident = probe.now - base
        base = probe.now
        probe.track(batch)
        batch_bytes = probe.now - base
        base = probe.now
        with probe:
            step()
        recomputed = bool(getattr(draft, "recompute_steps", False))
        return DraftMemory(resident, probe.peak - base, batch_bytes, shared,
                           draft.flops_per_step(), recomputed, k)  # fmt: skip


def planned_draft(
    cfg: PretrainedConfig, arch: str, hparams: dict, draft_vocab: int, dtype: torch.dtype,
    fake: bool, gpu: bool,
) -> tuple[torch.nn.Module, object, torch.Tensor]:  # fmt: skip
    """(draft, its ``TargetInfo``, the target's embedding) of ``arch`` for target ``cfg``,
    prepared for a GPU (``gpu``) or the CPU as ``make_member`` prepares it; call it inside
    the trace's ``FakeTensorMode`` where ``fake``."""
    v, d = cfg.vocab_size, cfg.hidden_size
    embed = torch.empty(v, d, dtype=dtype)
    head = embed if cfg.tie_word_embeddings else torch.empty(v, d, dtype=dtype)
    info = _info(cfg, embed, head, torch.arange(draft_vocab), 0, None)
    with _values_free_init() if fake else contextlib.nullcontext(), config_only():
        # released MTP weights are not there to import: build random ones and freeze
        # the experts as ``freeze_experts`` does after importing them (the same sizes)
        frozen = arch == "mtp" and hparams.get("freeze_experts")
        built = {**hparams, "freeze_experts": False} if frozen else hparams
        draft = build_draft(arch, info, **built)
        if frozen:
            draft.block.mlp.experts.requires_grad_(False)
    draft.prepare(torch.device("cuda" if gpu else "cpu"))  # as ``make_member`` does
    return draft, info, embed


def forward_memory(
    cfg: PretrainedConfig, draft_vocab: int, b: int, length: int, dtype: torch.dtype,
    fake: bool = True, cuda: bool | None = None,
) -> int:  # fmt: skip
    """Peak bytes of one online target forward of a ``[b, length]`` micro-batch, with its
    features and log-probs built (``compute_features``), above the target's weights."""
    with tracing(fake, cuda):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
        runner = TargetRunner(model)
        seqs = [Sequence([0] * 8, [0] * (length - 8), i) for i in range(b)]
        probe = PeakMemory()
        probe.track(model)
        base = probe.now
        with probe:
            out = compute_features(runner, seqs, torch.arange(draft_vocab), batch_size=b)
        del out
        return probe.peak - base


@contextlib.contextmanager
def config_only() -> Iterator[None]:
    """Drafts built from a model (``draft_lm``) are built from its config alone: the
    planner traces shapes, and a pretrained drafter's config comes from plan/shapes.py."""
    token = CONFIG_ONLY.set(planned_config)
    try:
        yield
    finally:
        CONFIG_ONLY.reset(token)


@contextlib.contextmanager
def _values_free_init() -> Iterator[None]:
    """Initialisers that read values (``trunc_normal_`` resamples by value) leave fake
    tensors as they are: their values do not change any size."""
    with mock.patch.object(torch.nn.init, "trunc_normal_", lambda t, *a, **k: t):
        yield


def target_bytes(params: float, ranks: int, zero3: dict | None, dtype_bytes: int = 2) -> float:
    """A rank's share of the target's weights on its GPU: the ZeRO-3 shard (none where
    ``offload_param`` keeps it in host memory or on NVMe) plus the gathered working set,
    at most ``stage3_max_live_parameters``; a full replica without ZeRO-3 or on one rank
    that offloads nothing (ZeRO-3 on one rank gathers nothing)."""
    offload = offloads(zero3)
    if zero3 is None or (ranks == 1 and not offload):
        return params * dtype_bytes
    live = min(float(zero3.get("stage3_max_live_parameters", 1e9)), params) * dtype_bytes
    return live + (0.0 if offload else params * dtype_bytes / ranks)


def group_rank_bytes(
    target: float, forward: int, draft: DraftMemory, drafts_per_rank: int
) -> dict[str, float]:
    """The parts of one rank's peak and their sum (see the module doc for the formula)."""
    act = max(forward, draft.batch + draft.step)
    parts = {
        "target": target,
        "drafts": drafts_per_rank * draft.resident + draft.shared,
        "activations": act,
        "margin": MARGIN * act + CONTEXT,
    }
    parts["peak"] = sum(parts.values())
    return parts


def drafts_per_rank(group: int, ranks: int) -> int:
    return math.ceil(group / max(1, ranks))
