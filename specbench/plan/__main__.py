"""``python -m specbench.plan --configfile configs/paper.yaml``: does every GPU job fit?

For every ``train_group`` job (online training, ``train.features: online``) of a dense
target whose shape is known (:mod:`specbench.plan.shapes`), it prints the peak GPU memory
per rank, in parts (:mod:`specbench.plan.memory`), against the memory of the GPU the job
asks for (``targets.<name>.gpu_model``, :data:`GPU_GIB`; any GPU: 80 GB, or ``--gpu-gib``).
A job that does not fit is one line naming the job, the estimate, the limit and the knobs
that change it; the exit status is then 1. Everything else is listed as not modelled yet.
Nothing here needs a GPU or the weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import yaml

from specbench.config import load_config
from specbench.losses.rowstats import default_chunk_rows
from specbench.plan.memory import (
    GiB,
    draft_memory,
    drafts_per_rank,
    forward_memory,
    group_rank_bytes,
    target_bytes,
)
from specbench.plan.shapes import target_config

PROMPT_TOKENS = 128  # a planned micro-batch: b sequences of prompt + train_new_tokens
# usable memory (GiB) of a GPU type, as ``torch.cuda.mem_get_info`` reports it on an idle
# card (less than the marketing GB: ECC, the driver's reservations)
GPU_GIB = {"a100": 78.0, "h100": 78.0, "h200": 139.0, "b200": 178.0}


def plan(config: dict, gpu_gib: float, log=print) -> list[str]:
    """Print the table; return the one-line refusals of the jobs that do not fit.
    ``gpu_gib``: the memory of a job that names no ``gpu_model``."""
    cfg = load_config(config)
    refusals = []
    length = PROMPT_TOKENS + cfg.data.train_new_tokens
    head = "target/arch        GPUs drafts/rank micro  target  drafts  activ.  margin  peak GiB"
    head += "  limit"
    log(f"train_group jobs, per rank; micro-batches of {length} tokens\n{head}")
    for name, t in cfg.targets.items():
        train = cfg.train_for(name)
        b = train.micro_batch_size or train.batch_size
        shape = target_config(t.model)
        for arch in cfg.archs_for(name):
            label = f"{name}/{arch}"
            if shape is None or arch not in ("eagle3", "medusa", "mlp_speculator"):
                log(f"{label:18s} not modelled yet (shape or architecture)")
                continue
            ranks = max(1, t.gpus)
            group = len(cfg.train_groups(name, arch)[0])
            vocab = shape.vocab_size if cfg.vocab_for(arch) == "full" else cfg.data.draft_vocab_size
            os.environ.pop("SPECBENCH_LOSS_CHUNK_ROWS", None)
            rows = default_chunk_rows(vocab, "cuda")  # the chunks a GPU run takes
            os.environ["SPECBENCH_LOSS_CHUNK_ROWS"] = str(rows)
            autocast = torch.bfloat16  # train.autocast: auto on GPUs of capability >= 8.0
            draft = draft_memory(shape, arch, cfg.arch_hparams.get(arch, {}), vocab, b, length,
                                 train.k_for(arch), autocast=autocast)  # fmt: skip
            forward = forward_memory(shape, vocab, b, length, torch.bfloat16)
            params = sum(  # the target's parameters, from its shape
                p.numel() for p in _meta_model(shape).parameters()
            )
            zero3 = t.zero3 if t.engine == "zero3" else None
            per = drafts_per_rank(group, ranks)
            parts = group_rank_bytes(target_bytes(params, ranks, zero3), forward, draft, per)
            model = t.gpu_model_for(arch)
            limit = GPU_GIB.get(model, gpu_gib)  # a model not in the table: --gpu-gib
            fits = parts["peak"] <= limit * GiB
            cells = " ".join(
                f"{parts[k] / GiB:7.1f}" for k in ("target", "drafts", "activations", "margin")
            )
            verdict = "" if fits else "  DOES NOT FIT"
            peak = f"{parts['peak'] / GiB:9.1f}  {limit:.0f} {model or 'any'}{verdict}"
            log(f"{label:18s} {ranks:4d} {per:11d} {b:5d} {cells} {peak}")
            if not fits:
                knobs = [f"targets.{name}.group_size ({group})"] if per > 1 else []
                knobs += [f"arch_hparams.{arch}.train_anchors"] if arch == "eagle3" else []
                knobs += [f"targets.{name}.micro_batch_size ({b})"]
                refusals.append(
                    f"train_group {label}: {parts['peak'] / GiB:.1f} GiB per rank > {limit:.0f} "
                    f"GiB; lower {', '.join(knobs)}, or ask for a bigger GPU "
                    f"(targets.{name}.gpu_model: one of {', '.join(GPU_GIB)})"
                )
    os.environ.pop("SPECBENCH_LOSS_CHUNK_ROWS", None)
    return refusals


def _meta_model(shape):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(shape)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configfile", type=Path, required=True)
    p.add_argument("--gpu-gib", type=float, default=GPU_GIB["h100"],
                   help="usable GiB of a job's GPU where its gpu_model does not say")  # fmt: skip
    args = p.parse_args(argv)
    refusals = plan(yaml.safe_load(args.configfile.read_text()), args.gpu_gib)
    for line in refusals:
        print(line, file=sys.stderr)
    return 1 if refusals else 0


if __name__ == "__main__":
    raise SystemExit(main())
