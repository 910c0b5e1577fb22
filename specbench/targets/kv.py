"""The target's KV cache as data: prefill, rows per position, and back.

Branch scoring (:mod:`specbench.decoding.unbiased`) runs the target against the KV cache of
a response's prefix; with ``eval.prefix_kv`` the features job stores that cache once, as
rows ``[T, layers, 2, kv_heads, head_dim]`` (keys after RoPE, then values), in the T=1
evaluation cache. Both sides use these functions, so the stored rows are the prefill the
estimator would run itself. Custom 4D masks (eager / SDPA) with explicit position ids; a
config-less ``DynamicCache`` keeps every layer's full past, sliding-window layers included
(their window is applied in the mask).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

if TYPE_CHECKING:
    from specbench.targets.runner import TargetRunner


def attention_masks(config, allowed: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, dtype):
    """Additive ``[1, 1, Q, KV]`` mask(s) from boolean ``allowed`` [Q, KV].

    transformers returns a 4D ``attention_mask`` as is (eager adds it, so it must be
    additive; SDPA takes it too). Models with sliding-window layers (gpt-oss) take a dict by
    layer type; their window ``q − k < w`` is applied here since the mask bypasses it.
    """
    impl = getattr(config, "_attn_implementation", "eager")
    if impl not in ("eager", "sdpa"):
        raise ValueError(f"branch scoring needs custom 4D masks: eager or sdpa, not {impl!r}")

    def additive(ok: torch.Tensor) -> torch.Tensor:
        neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=ok.device)
        return torch.where(ok, torch.zeros((), dtype=dtype, device=ok.device), neg)[None, None]

    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or ())
    near = (q_pos[:, None] - k_pos[None, :]) < (window or 0)
    if "sliding_attention" in types and window:
        return {"full_attention": additive(allowed), "sliding_attention": additive(allowed & near)}
    return additive(allowed & near if window and not types else allowed)


def model_dtype(model) -> torch.dtype:
    """The dtype the model computes in."""
    return getattr(model, "dtype", None) or next(model.parameters()).dtype


@torch.no_grad()
def prefill(runner: TargetRunner, prefix_ids: torch.Tensor) -> DynamicCache:
    """KV cache of ``prefix_ids`` [n] (a config-less cache keeps every layer's full past)."""
    model, dev = runner.model, runner.device
    n = prefix_ids.numel()
    pos = torch.arange(n, device=dev)
    mask = attention_masks(model.config, pos[None, :] <= pos[:, None], pos, pos, model_dtype(model))
    cache = DynamicCache()
    ids = prefix_ids.to(dev).view(1, -1)
    model(input_ids=ids, attention_mask=mask, position_ids=pos[None], past_key_values=cache,
          use_cache=True, logits_to_keep=1)  # fmt: skip
    return cache


def kv_rows(cache: DynamicCache) -> torch.Tensor:
    """The layers of a one-sequence cache as per-position rows ``[T, L, 2, H, D]`` (keys
    after RoPE, as the cache holds them, then values; the cache's dtype and device)."""
    layers = []
    for i, layer in enumerate(cache.layers):
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if k is None or v is None or k.shape != v.shape or k.shape[0] != 1:
            raise ValueError(
                f"prefix_kv: layer {i} caches keys {None if k is None else tuple(k.shape)}, "
                f"values {None if v is None else tuple(v.shape)}; rows need one sequence "
                "of equal key and value shapes (MLA's differ)"
            )
        layers.append(torch.stack([k[0], v[0]]))  # [2, H, T, D]
    if len({x.shape for x in layers}) > 1:
        raise ValueError("prefix_kv: the layers cache different numbers of heads or dims")
    return torch.stack(layers).permute(3, 0, 1, 2, 4)  # [L, 2, H, T, D] -> [T, L, 2, H, D]


@torch.no_grad()
def sequence_kv(runner: TargetRunner, ids: torch.Tensor) -> torch.Tensor:
    """The target's KV cache over a whole sequence ``ids`` [T] as rows ``[T, L, 2, H, D]``:
    what the unbiased estimator's ``prefix_cache`` crops when a sequence has no stored rows
    (one forward)."""
    return kv_rows(prefill(runner, ids.long()))


def cache_from_kv(kv: torch.Tensor, n: int, device: torch.device | str) -> DynamicCache:
    """A config-less cache (every layer keeps its full past, like :func:`prefill`'s) holding
    the first ``n`` positions of the rows ``kv`` [T, L, 2, H, D]."""
    per_layer = kv[:n].to(device).permute(1, 2, 3, 0, 4)  # [L, 2, H, n, D]
    cache = DynamicCache()
    for layer, (k, v) in enumerate(per_layer):
        cache.update(k[None], v[None], layer)  # [1, H, n, D] each
    return cache
