"""Quantized hub checkpoints, dequantized to bf16: DeepSeek-V3's block FP8, gpt-oss's MXFP4.

ZeRO-3 cannot partition a quantized checkpoint while it loads (transformers loads quantized
models outside ``zero.Init``, so every rank would materialise the whole model in host
memory), so the ZeRO-3 loader converts it once, shard by shard, into a plain checkpoint
(:func:`dequantize_checkpoint`). The MTP draft's weight import dequantizes the released FP8
MTP layer with :func:`dequantize_fp8_weight`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from specbench.targets.checkpoint import tensor_index

DONE_MARKER = ".dequantized"  # written last: the converted checkpoint is complete


QUANT_METHODS = ("fp8", "mxfp4")  # what dequantize_checkpoint converts


def _quantization_config(config: Any) -> dict:
    if isinstance(config, dict):
        q = config.get("quantization_config")
    else:
        q = getattr(config, "quantization_config", None)
    if q is not None and not isinstance(q, dict):
        q = q.to_dict()
    return q or {}


def quant_method(config: Any) -> str | None:
    """``quant_method`` of a checkpoint's config (dict or ``PretrainedConfig``); None if plain."""
    method = _quantization_config(config).get("quant_method")
    return None if method is None else str(method).removeprefix("QuantizationMethod.").lower()


def fp8_block_size(config: Any) -> tuple[int, int] | None:
    """Block size of a fine-grained FP8 checkpoint (``quant_method: fp8``), else None."""
    if quant_method(config) != "fp8":
        return None
    rows, cols = _quantization_config(config).get("weight_block_size") or (128, 128)
    return int(rows), int(cols)


def dequantize_fp8_weight(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: Sequence[int],
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``w[r, c] = q[r, c] · scale_inv[r // bm, c // bn]`` (DeepSeek's ``weight_dequant``).

    The scale grid is ``ceil(rows / bm) × ceil(cols / bn)``: edge blocks may be partial
    (e.g. DeepSeek-V3's 576-row ``kv_a_proj_with_mqa`` with 128-row blocks).
    """
    bm, bn = block
    rows, cols = weight.shape[-2:]
    scale = scale_inv.float().repeat_interleave(bm, dim=-2)[..., :rows, :]
    scale = scale.repeat_interleave(bn, dim=-1)[..., :cols]
    return (weight.float() * scale).to(dtype)


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """gpt-oss MXFP4 expert weights → ``dtype``, in the layout ``GptOssExperts`` expects.

    ``blocks`` ``[E, rows, cols/32, 16]`` hold two e2m1 values per byte, ``scales``
    ``[E, rows, cols/32]`` one power-of-two exponent (biased by 127) per 32 values; the result
    is ``[E, cols, rows]``. transformers' own converter does the arithmetic, so a converted
    checkpoint equals what ``Mxfp4Config(dequantize=True)`` loads.
    """
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    return convert_moe_packed_tensors(blocks, scales, dtype=dtype)


def unquantized_numel(method: str | None, key: str, shape: Sequence[int]) -> int:
    """Parameters a checkpoint tensor stands for once dequantized (for parameter counts).

    Scale tensors stand for none; an MXFP4 ``_blocks`` byte packs two values; anything else
    (plain tensors, FP8 weights) one value per element.
    """
    numel = int(torch.Size(shape).numel())
    if method == "fp8" and key.endswith("_scale_inv"):
        return 0
    if method == "mxfp4" and key.endswith("_scales"):
        return 0
    if method == "mxfp4" and key.endswith("_blocks"):
        return 2 * numel
    return numel


def _scheme(method: str, config: dict, dtype: torch.dtype):
    """How ``method`` stores a quantized tensor: ``(scale suffix, pair, dequantize)``, where
    ``pair(key)`` names the (plain tensor, scale tensor) that ``key`` would be the quantized
    data of, and ``dequantize(data, scale)`` computes the plain tensor."""
    if method == "fp8":  # <name>.weight (e4m3) beside <name>.weight_scale_inv
        block = fp8_block_size(config)
        return (
            "_scale_inv",
            lambda key: (key, key + "_scale_inv"),
            lambda q, s: dequantize_fp8_weight(q, s, block, dtype),
        )
    if method == "mxfp4":  # <name>_blocks beside <name>_scales
        return (
            "_scales",
            lambda key: (key.removesuffix("_blocks"), key.removesuffix("_blocks") + "_scales"),
            lambda q, s: dequantize_mxfp4(q, s, dtype),
        )
    raise ValueError(f"cannot dequantize quant_method {method!r}; supported: {QUANT_METHODS}")


def dequantize_checkpoint(
    src: str | Path, dst: str | Path, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Write a plain ``dtype`` copy of the quantized checkpoint ``src`` to ``dst``, shard by shard.

    FP8: every ``<name>.weight`` with a ``<name>.weight_scale_inv`` sibling is dequantized.
    MXFP4: every ``<name>_blocks`` with a ``<name>_scales`` sibling becomes ``<name>``. Scales
    are dropped; other tensors (norms, router, embeddings, biases) are copied unchanged; so
    is every other top-level file. ``config.json`` loses its ``quantization_config``. Memory
    stays at about one shard. Idempotent: a complete ``dst`` is returned as is.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if (dst / DONE_MARKER).exists():
        return dst
    config = json.loads((src / "config.json").read_text())
    method = quant_method(config)
    if method not in QUANT_METHODS:
        raise ValueError(f"{src} is not a checkpoint in one of {QUANT_METHODS} ({method=})")
    scale_suffix, pair, dequantize = _scheme(method, config, dtype)
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shard_of = tensor_index(src)  # tensor name → shard file name
    weight_map: dict[str, str] = {}
    for shard in sorted(set(shard_of.values())):
        out = {}
        with safe_open(src / shard, "pt") as f:
            for key in f.keys():
                if key.endswith(scale_suffix):
                    continue
                tensor = f.get_tensor(key)
                name, scale_key = pair(key)
                if scale_key in shard_of:  # quantized: dequantize, store under the plain name
                    with safe_open(src / shard_of[scale_key], "pt") as g:
                        tensor = dequantize(tensor, g.get_tensor(scale_key))
                    key = name
                out[key] = tensor.contiguous()
                weight_map[key] = shard
        save_file(out, str(tmp / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for other in src.iterdir():  # tokenizer, generation config, ...; follows hub symlinks
        if other.is_file() and other.suffix != ".safetensors" and "index" not in other.name:
            if other.name != "config.json":
                shutil.copy(other, tmp / other.name)
    config.pop("quantization_config")
    for key in {"dtype"} | ({"torch_dtype"} & set(config)):
        config[key] = str(dtype).removeprefix("torch.")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / DONE_MARKER).touch()
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst
