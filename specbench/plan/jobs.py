"""Peak GPU memory of the DAG's other GPU jobs, traced from their real code at real shapes.

``evaluate_draft`` (and ``curve_eval``, the same code), per rank (bytes)::

    target    as a training rank's (:func:`specbench.plan.memory.target_bytes`)
    draft     the draft's weights and buffers as loaded for evaluation (float32, no gradients
              or optimizer), with its device copy of the target's embedding
    expected  one expected-τ batch: the cache batch on the device and the tensor work of
              :func:`~specbench.decoding.evaluate.expected_batch` (the draft's K steps over
              every position, α), at the batch size the job picks on a GPU
              (:func:`~specbench.decoding.evaluate.expected_batch_size`)
    unbiased  the prefix prefill of one whole evaluation sequence (its KV cache,
              :func:`~specbench.targets.kv.prefill`), then one chunk of 64 anchors verified
              against it (:func:`~specbench.decoding.unbiased.verify_chunk`: a target forward
              of 64·(K−1) branch tokens, full-vocabulary log-softmax, p and q [64, K, Vd])
    peak      target + draft + max(expected, unbiased)·(1 + MARGIN) + CONTEXT

(the planner traces ``unbiased`` once per target, at its architectures' largest draft
vocabulary and K: an upper bound for the others).

The phases run one after another. Live decoding (batch 1, the target's and the draft's KV
caches of prompt + ``live_new_tokens`` ≤ the sequence) and T=0 replay (no target) hold less
than ``unbiased``'s prefill of the whole sequence and are not traced.

``responses`` / ``responses_shard`` with HF's generate (``engine_generate: hf``), per rank::

    prefill   one ``generate`` prefill of ``generation_batch_size`` prompts of
              ``max_prompt_tokens`` (``logits_to_keep=1``, as generate asks), with its cache
    kv        the KV cache at the last step: the prefill's traced cache × (L_p + L_n)/L_p (the
              bytes per token are the model's own cache layout: MLA's decompressed keys too)
    step      one decode step against the prefill's cache
    peak      target + max(prefill, kv + step)·(1 + MARGIN) + CONTEXT

With vLLM (``engine_generate: vllm``) the engine takes ``cost.MEM_UTIL`` of every GPU by
design; it fits where :func:`~specbench.plan.cost.vllm_generation_gpu_hours` finds room for
one sequence's KV cache beside the weights.

``features_eval`` (and ``features_train`` where ``train.features: cache``): the target plus
one ``compute_features`` forward of ``feature_batch_size`` sequences
(:func:`~specbench.plan.memory.forward_memory`); the prefix-KV rows of ``eval.prefix_kv``
come from one sequence's prefill, less than the batch's forward.

Every trace runs under ``FakeTensorMode`` (nothing allocated); ``fake=False`` runs the same
code for real on the CPU, which ``tests/test_plan.py`` measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, DynamicCache, PretrainedConfig

from specbench.decoding.evaluate import expected_batch
from specbench.decoding.unbiased import verify_chunk
from specbench.drafts.align import usable_k
from specbench.features.vocab import target_to_draft_map
from specbench.plan.memory import CONTEXT, MARGIN, fake_batch, planned_draft
from specbench.plan.trace import PeakMemory, tracing
from specbench.targets.kv import prefill
from specbench.targets.runner import TargetRunner

ANCHOR_BATCH = 64  # anchors per branch forward (``unbiased_tau_by_prompt``'s batch_size)


@dataclass
class EvalMemory:
    """One evaluation rank's traced parts above the target's weights (bytes)."""

    draft: int  # the draft's weights and buffers (its copy of the target's embedding too)
    expected: int  # one expected-τ batch: the batch on the device and its work
    unbiased: int  # one prefill of a sequence and one chunk of branch verification
    k: int  # the K it evaluates (capped at what the draft can draft)
    batch: int  # sequences per expected-τ batch

    @property
    def work(self) -> int:
        return max(self.expected, self.unbiased)


def eval_memory(
    cfg: PretrainedConfig, arch: str, hparams: dict, draft_vocab: int, length: int, k: int,
    batch: int | None = None, dtype: torch.dtype = torch.bfloat16, fake: bool = True,
    cuda: bool | None = None, target: bool = True,
) -> EvalMemory:  # fmt: skip
    """Trace ``evaluate_draft``'s phases for a draft of ``arch`` on target ``cfg`` (weights in
    ``dtype``) over sequences of ``length`` tokens at evaluation ``k``.

    ``batch``: sequences per expected-τ batch (default: what the job picks on a GPU).
    ``target``: trace the unbiased phase (the target's prefill and branch forward); it does
    not depend on the draft, so the planner traces it once per target (:func:`unbiased_memory`).
    """
    gpu = fake if cuda is None else cuda
    with tracing(fake, cuda):
        draft, info, embed = planned_draft(cfg, arch, hparams, draft_vocab, dtype, fake, gpu)
        draft.eval()
        k = usable_k(draft, k)
        if batch is None:
            from specbench.decoding.evaluate import expected_batch_size

            batch = expected_batch_size(length, k, draft_vocab, torch.device("cuda"))
        probe = PeakMemory()
        probe.track(draft)  # on the device: its buffers alias the target's embedding
        draft_bytes = probe.now
        t2d = target_to_draft_map(info.draft_to_target, cfg.vocab_size)
        probe.track(embed, info.lm_head, info.draft_to_target, t2d)
        base = probe.now
        with probe, torch.no_grad():
            cache_batch = fake_batch(batch, length, cfg.hidden_size, cfg.vocab_size, draft_vocab)
            cache_batch["prompt_index"] = torch.arange(batch)
            out = expected_batch(draft, cache_batch, k, t2d, 1.0)
            del out, cache_batch
        expected = probe.peak - base
    unbiased = unbiased_memory(cfg, draft_vocab, length, k, dtype, fake, cuda) if target else 0
    return EvalMemory(draft_bytes, expected, unbiased, k, batch)


def unbiased_memory(
    cfg: PretrainedConfig, draft_vocab: int, length: int, k: int,
    dtype: torch.dtype = torch.bfloat16, fake: bool = True, cuda: bool | None = None,
    anchors: int = ANCHOR_BATCH,
) -> int:  # fmt: skip
    """Peak bytes above the target's weights of the unbiased estimator on one sequence of
    ``length`` tokens: its prefix prefill, then one chunk of ``anchors`` verified at ``k``."""
    with tracing(fake, cuda), torch.no_grad():
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
        runner = TargetRunner(model)
        probe = PeakMemory()
        probe.track(model)
        base = probe.now
        anchors = min(anchors, length - k - 2)
        with probe:
            ids = torch.zeros(length, dtype=torch.long)
            cache = prefill(runner, ids)
            # the last chunk's anchors sit at the end of the sequence: the whole prefix
            chunk = torch.arange(length - anchors - k - 1, length - k - 1)
            d_ids = torch.zeros(anchors, k, dtype=torch.long)
            z = torch.zeros(anchors, k, draft_vocab)
            logp1 = torch.zeros(anchors, 1, draft_vocab)
            valid = torch.ones(anchors, k, dtype=torch.bool)
            d2t = torch.arange(draft_vocab)
            tau = verify_chunk(runner, cache if k > 1 else None, chunk, d_ids, z, logp1, d2t,
                               valid)  # fmt: skip
            del tau, cache, z, logp1
        return probe.peak - base


@dataclass
class GenerationMemory:
    """One HF-generate rank's traced parts above the target's weights (bytes)."""

    prefill: int  # the prefill forward's peak, its cache included
    kv: int  # the KV cache at the last decode step
    step: int  # one decode step's activations above the cache

    @property
    def work(self) -> int:
        return max(self.prefill, self.kv + self.step)


def generation_memory(
    cfg: PretrainedConfig, batch: int, prompt: int, new: int,
    dtype: torch.dtype = torch.bfloat16, fake: bool = True, cuda: bool | None = None,
) -> GenerationMemory:  # fmt: skip
    """Trace the forwards HF's ``generate`` runs for ``batch`` prompts of ``prompt`` tokens
    and ``new`` new tokens: the prefill and one decode step (module doc)."""
    with tracing(fake, cuda), torch.no_grad():
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
        probe = PeakMemory()
        probe.track(model)
        base = probe.now
        with probe:
            ids = torch.zeros(batch, prompt, dtype=torch.long)
            mask = torch.ones(batch, prompt, dtype=torch.long)
            cache = DynamicCache()
            out = model(input_ids=ids, attention_mask=mask, past_key_values=cache,
                        use_cache=True, logits_to_keep=1)  # fmt: skip
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1)  # the sampler's
            del out, probs
        pre = probe.peak - base
        kv = probe.now - base  # what stays: the cache of the prompts
        probe.peak = probe.now
        with probe:
            nxt = torch.zeros(batch, 1, dtype=torch.long)
            mask = torch.ones(batch, prompt + 1, dtype=torch.long)
            out = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1)
            del out, probs
        # the step's own peak above the cache, less the one token it added to the cache
        step = probe.peak - base - kv - kv // prompt
        return GenerationMemory(pre, kv * (prompt + new) // prompt, max(step, 0))


def job_peak(target: float, resident: float, work: float) -> dict[str, float]:
    """A rank's peak in parts: target, resident (the draft), work (traced activations),
    margin (``MARGIN`` of the work + ``CONTEXT``)."""
    parts = {"target": target, "draft": resident, "activations": work,
             "margin": MARGIN * work + CONTEXT}  # fmt: skip
    parts["peak"] = sum(parts.values())
    return parts
