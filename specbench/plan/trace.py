"""Peak tensor memory of real code, traced without allocating it.

:class:`PeakMemory` is a ``TorchDispatchMode`` that counts the bytes of every tensor storage
alive at once: each storage an op returns is counted once, until the storage is freed (a
weak reference to it dies). Under ``FakeTensorMode`` the same code runs at the real 8B or
70B shapes on a CPU, allocating nothing, and the count is what it would hold.

What it cannot see, and the planner adds a margin for: kernel workspaces (cuBLAS, cuDNN,
flash-attention), the caching allocator's rounding and fragmentation, and the CUDA context.
Which attention kernel a GPU picks (a fused one keeps no ``[T, S]`` probabilities) is
modelled by :func:`cuda_attention`.
torch's ``MemTracker`` does this per module, but refuses a module called more than once per
iteration, which EAGLE-3's test-time-training steps do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary, weakref


class PeakMemory(TorchDispatchMode):
    """``with PeakMemory() as m: ...`` — ``m.peak``: most bytes of storage alive at once.

    Storages created before the block count only if passed to :meth:`track` (parameters,
    optimizer states, inputs); ``m.now`` is what is alive, ``m.peak`` its maximum.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = 0
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: list[weakref.ref] = []

    def track(self, *objects: Any) -> None:
        """Count the storages of every tensor in ``objects`` (nested containers, modules)."""
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                obj = [*obj.parameters(), *obj.buffers()]
            elif isinstance(obj, torch.optim.Optimizer):
                obj = list(obj.state.values())
            for leaf in tree_flatten(obj)[0]:
                if isinstance(leaf, torch.Tensor):
                    self._add(leaf)

    def holds(self, t: torch.Tensor) -> bool:
        """Whether ``t``'s storage is one this tracker counts."""
        return t.untyped_storage() in self._live

    def _add(self, t: torch.Tensor) -> None:
        try:
            st = t.untyped_storage()
        except (NotImplementedError, RuntimeError):  # sparse, or no storage
            return
        if st in self._live:
            return
        n = st.nbytes()
        self._live[st] = n
        self.now += n
        self.peak = max(self.peak, self.now)
        self._refs.append(weakref.ref(st, lambda _, n=n: self._free(n)))

    def _free(self, n: int) -> None:
        self.now -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        return out


def profiled_peak(prof: torch.profiler.profile) -> int:
    """The most bytes a finished ``torch.profiler`` run (``profile_memory=True``) saw the
    CPU allocator hold at once above where it started: the measurement the trace is checked
    against (allocator-level tensor memory, not process RSS)."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def cuda_attention() -> Iterator[None]:
    """Trace ``scaled_dot_product_attention`` with the memory of the kernel CUDA would run.

    PyTorch's CUDA dispatch (``sdp_utils``), as far as memory goes: flash attention takes no
    mask; the memory-efficient kernel takes a mask but not ``enable_gqa``; so GQA with a mask
    falls back to the math kernel, which materialises the probabilities. The fused kernels
    keep the output and a log-sum-exp row per query for backward; their fake (meta)
    implementation allocates exactly that. The drafts' attention repeats K/V on the devices
    of ``REPEAT_KV_DEVICES`` to stay on the fused kernel, so the trace counts them as CUDA.
    """
    from specbench.drafts import layers

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):  # fmt: skip
        if enable_gqa and q.shape[-3] != k.shape[-3] and attn_mask is not None:
            return torch.ops.aten._scaled_dot_product_attention_math(
                q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=True
            )[0]
        if q.shape[-3] != k.shape[-3]:  # flash attention: GQA without a mask
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        bias = attn_mask
        if bias is not None and bias.dtype == torch.bool:  # as torch converts a boolean mask
            bias = torch.zeros(bias.shape, dtype=q.dtype).masked_fill_(~bias, float("-inf"))
        if bias is not None:
            bias = bias.expand(*q.shape[:-1], k.shape[-2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, True, dropout_p, is_causal, scale=scale
        )[0]

    with (
        mock.patch.object(F, "scaled_dot_product_attention", sdpa),
        mock.patch.object(layers, "REPEAT_KV_DEVICES", layers.REPEAT_KV_DEVICES | {"cpu"}),
    ):
        yield


@contextlib.contextmanager
def tracing(fake: bool, cuda: bool | None = None) -> Iterator[None]:
    """Where a planner trace runs: under ``FakeTensorMode`` where ``fake`` (nothing
    allocated; its cache off, since cached outputs would keep storages alive), else for real
    (the tests' measurements); with CUDA's attention kernels (:func:`cuda_attention`) where
    ``cuda`` (default: ``fake``), else the CPU's."""
    with contextlib.ExitStack() as stack:
        if fake:
            mode = stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
            mode.cache_enabled = False
        if fake if cuda is None else cuda:
            stack.enter_context(cuda_attention())
        yield
