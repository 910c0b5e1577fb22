"""Peak tensor memory of real code, traced without allocating it.

:class:`PeakMemory` is a ``TorchDispatchMode`` that counts the bytes of every tensor storage
alive at once: each storage an op returns is counted once, until the storage is freed (a
weak reference to it dies). Under ``FakeTensorMode`` the same code runs at the real 8B or
70B shapes on a CPU, allocating nothing, and the count is what it would hold.

What it cannot see, and the planner adds a margin for: kernel workspaces (cuBLAS, cuDNN,
flash-attention), which attention kernel a GPU picks (a fused one keeps no ``[L, L]``
probabilities), the caching allocator's rounding and fragmentation, and the CUDA context.
torch's ``MemTracker`` does this per module, but refuses a module called more than once per
iteration, which EAGLE-3's test-time-training steps do.
"""

from __future__ import annotations

from typing import Any

import torch
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
