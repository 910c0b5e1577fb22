"""DeepSpeed ZeRO-3 inference for big targets (the paper config: 8B → 685B).

:func:`load_zero3_target` partitions the parameters across ranks (optionally offloaded to CPU
or NVMe) and returns a module that :class:`~specbench.targets.runner.TargetRunner` drives
exactly like a plain transformers model; the KV cache works through the ZeRO hooks (they
gather parameters, the cache holds activations). The traps, and how they are handled:

* ``HfDeepSpeedConfig`` must exist, and stay referenced, while ``from_pretrained`` runs
  (transformers keeps only a weakref); it is unset right after, so that later models built
  in the same process (drafts, plain targets) are not silently partitioned by ``zero.Init``;
* MoE blocks are made ZeRO-3 *leaf* modules (:data:`MOE_LEAF_CLASSES`): their parameters are
  gathered at once on entry rather than per expert submodule, in whatever order routing
  calls them;
* every rank must run the same number of forwards: see :mod:`specbench.dist`
  (``lockstep_batches``, ``Lockstep``); with ``generate()`` pass ``synced_gpus=True``;
* quantized checkpoints (DeepSeek-V3's FP8, gpt-oss's MXFP4 experts) are dequantized to bf16
  once, shard by shard, into a plain checkpoint (:func:`dequantize_checkpoint`) that then
  loads like any other. transformers' own ``dequantize=True`` configs are not used: they bypass
  ``zero.Init``, so every rank would first materialise the whole 685B model in host memory;
* ZeRO-3 modules hold empty placeholders for parameters: use :func:`zero3_target_info`, not
  ``target_info_from_model``, to hand a draft the target's embedding and LM head.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specbench.dist import init_distributed, keep_alive, lockstep_batches, shutdown
from specbench.targets.quantized import (
    DONE_MARKER,
    QUANT_METHODS,
    dequantize_checkpoint,
    dequantize_fp8_weight,
    quant_method,
)

__all__ = [
    "MOE_LEAF_CLASSES",
    "build_ds_config",
    "dequantize_checkpoint",
    "dequantize_fp8_weight",
    "load_zero3_target",
    "lockstep_batches",
    "shutdown",
    "zero3_target_info",
]

# MoE blocks whose experts are dispatched data-dependently: ZeRO-3 leaf modules
MOE_LEAF_CLASSES = (
    "Qwen3MoeSparseMoeBlock",
    "GptOssMLP",
    "DeepseekV3MoE",
    "MixtralSparseMoeBlock",
    "Qwen2MoeSparseMoeBlock",
)
# keys of the `zero3` settings that map 1:1 onto `zero_optimization`
_STAGE3_KEYS = (
    "stage3_prefetch_bucket_size",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
    "stage3_param_persistence_threshold",
)
ZERO3_KEYS = frozenset(
    _STAGE3_KEYS + ("offload_param", "nvme_path", "cpu_shm_comm", "dequantized_dir")
)


def build_ds_config(dtype: torch.dtype, zero3: dict[str, Any]) -> dict[str, Any]:
    """DeepSpeed config for ZeRO-3 inference from the ``zero3`` settings of a target.

    ``offload_param``: ``none`` (partition on the accelerators), ``cpu`` or ``nvme`` (then
    ``nvme_path`` is required; DeepSpeed JIT-compiles its async-io op, which needs libaio).
    """
    unknown = sorted(set(zero3) - ZERO3_KEYS)
    if unknown:
        raise ValueError(f"unknown zero3 settings {unknown}; valid: {sorted(ZERO3_KEYS)}")
    offload = str(zero3.get("offload_param", "none"))
    if offload not in ("none", "cpu", "nvme"):
        raise ValueError(f"offload_param must be none, cpu or nvme, not {offload!r}")
    opt: dict[str, Any] = {"stage": 3, **{k: zero3[k] for k in _STAGE3_KEYS if k in zero3}}
    if offload != "none":
        opt["offload_param"] = {"device": offload, "pin_memory": torch.cuda.is_available()}
        if offload == "nvme":
            if not zero3.get("nvme_path"):
                raise ValueError("offload_param: nvme needs nvme_path")
            opt["offload_param"]["nvme_path"] = str(zero3["nvme_path"])
    return {
        "train_micro_batch_size_per_gpu": 1,  # required by DeepSpeed; no training happens
        "zero_optimization": opt,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 2**31 - 1,
    }


def moe_leaf_classes(model: nn.Module) -> list[str]:
    """The :data:`MOE_LEAF_CLASSES` that occur in ``model``."""
    present = {type(m).__name__ for m in model.modules()}
    return [name for name in MOE_LEAF_CLASSES if name in present]


def load_zero3_target(
    name_or_path: str, dtype: torch.dtype = torch.bfloat16, zero3: dict[str, Any] | None = None
) -> nn.Module:
    """Load a causal LM partitioned with ZeRO-3; return the engine's module in eval mode.

    Initialises the process group from the launcher's env first (single-process defaults
    without one). Call :func:`shutdown` when done (also registered with ``atexit``).
    """
    zero3 = dict(zero3 or {})
    ds_config = build_ds_config(dtype, zero3)  # validates before anything starts
    import deepspeed
    from deepspeed.utils import set_z3_leaf_modules
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    rank, _ = init_distributed(cpu_shm_comm=bool(zero3.get("cpu_shm_comm", False)))
    path = _dequantized_if_quantized(name_or_path, zero3.get("dequantized_dir"), rank)
    hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841 (referenced while loading)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    finally:
        unset_hf_deepspeed_config()
    model.requires_grad_(False)
    leaves = moe_leaf_classes(model)
    if leaves:  # before initialize: the ZeRO-3 hooks are registered there
        set_z3_leaf_modules(model, leaves)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    keep_alive(engine)
    return engine.module.eval()


def zero3_target_info(model: nn.Module, draft_to_target: torch.Tensor | None = None):
    """``target_info_from_model`` for a ZeRO-3 module: gathers embedding and head, copies them.

    ZeRO-3 parameters are empty placeholders outside a gather, so the frozen tensors a draft
    shares with its target are cloned while gathered; the parameter count uses ``ds_numel``.
    """
    import deepspeed

    from specbench.targets.info import target_info_from_model

    params = {id(p): p for p in (model.get_input_embeddings().weight,)}
    params[id(model.get_output_embeddings().weight)] = model.get_output_embeddings().weight
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        info = target_info_from_model(model, draft_to_target)
        info = dataclasses.replace(
            info,
            embed_tokens=info.embed_tokens.clone(),
            lm_head=info.lm_head.clone(),
            # its state dict is partitioned: draft_lm's init target_layers needs the folder
            # (the jobs build drafts from target_info_from_checkpoint, which sets it)
            read_tensors=None,
        )
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    info.target_flops_per_token = 2.0 * n_params
    return info


def _dequantized_if_quantized(name_or_path: str, dequantized_dir: str | None, rank: int) -> str:
    """The checkpoint to load: ``name_or_path``, or its bf16 copy if it is FP8 or MXFP4.

    Rank 0 converts once; the other ranks wait for the completion marker (a file, not a
    collective, because converting 685B takes longer than any collective timeout). A
    shared filesystem is assumed; convert ahead of time with the CLI below otherwise.
    """
    from transformers import AutoConfig

    method = quant_method(AutoConfig.from_pretrained(name_or_path))
    if method is None:
        return name_or_path
    if method not in QUANT_METHODS:  # before rank 0 downloads hundreds of GB for nothing
        raise ValueError(
            f"{name_or_path}: ZeRO-3 needs a plain or {QUANT_METHODS} checkpoint, not {method!r}"
        )
    local = Path(name_or_path)
    if dequantized_dir:
        dst = Path(dequantized_dir)
    elif local.is_dir():
        dst = local.with_name(local.name + "-bf16")
    else:
        dst = Path("results/targets") / (name_or_path.replace("/", "--") + "-bf16")
    if rank == 0:
        if not local.is_dir():
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(name_or_path))
        dequantize_checkpoint(local, dst)
    while not (dst / DONE_MARKER).exists():
        time.sleep(5)
    return str(dst)


if __name__ == "__main__":  # python -m specbench.targets.zero3 SRC DST: convert a checkpoint
    import sys

    if len(sys.argv) != 3:
        sys.exit(
            "usage: python -m specbench.targets.zero3 QUANTIZED_CHECKPOINT_DIR BF16_OUTPUT_DIR"
        )
    print(dequantize_checkpoint(sys.argv[1], sys.argv[2]))
