"""Process-group plumbing for multi-rank targets (DeepSpeed ZeRO-3 inference).

Launching N ranks is the job of the launcher (``deepspeed``, ``torchrun``, SLURM's ``srun``);
they export ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init_distributed` reads them, and fills in single-process defaults when they are
absent, so the same code runs as one plain ``python`` process.

The lockstep contract
---------------------
Under ZeRO-3 every forward gathers each layer's parameters from all ranks, so **every rank
must run the same number of forwards** (a rank that stops early leaves the others blocked in
a collective forever). Two tools keep ranks in step:

* work with a fixed number of forwards per item (feature caching, scoring): split the items
  with :func:`lockstep_batches`, which pads every rank's share to the same length with
  dummy items whose results are discarded;
* work with a data-dependent number of forwards (speculative decoding, generation): wrap
  the model in :class:`Lockstep` and call :meth:`Lockstep.drain` when a rank's own work is
  done; it keeps issuing dummy forwards until every rank has drained. For ``generate()``,
  pass ``synced_gpus=True`` instead.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import socket
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from specbench.io import tmp_path_for

T = TypeVar("T")
_LIVE: list[Any] = []  # engines (and configs) that must outlive the returned modules


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pg_timeout() -> timedelta:
    """How long a collective may wait: ``SPECBENCH_DIST_TIMEOUT_MINUTES``, default 4 hours.

    Ranks legitimately wait for hours: in a barrier while rank 0 reads, merges and writes a
    feature cache of hundreds of GB, or in a collective while another rank loads its share
    of a 685B model. DeepSpeed's default (10 minutes) would abort those jobs. A rank that
    dies does not leave the others waiting that long: torchrun stops the whole job.
    """
    return timedelta(minutes=float(os.environ.get("SPECBENCH_DIST_TIMEOUT_MINUTES", 240)))


def init_distributed(cpu_shm_comm: bool = False) -> tuple[int, int]:
    """Initialise DeepSpeed's process group from the launcher's env; return (rank, world).

    Without launcher variables this is a single process: rank 0 of 1 on a free local port.
    The backend is DeepSpeed's choice for the accelerator: nccl on CUDA, gloo on CPU.
    ``cpu_shm_comm``: on the CPU accelerator DeepSpeed JIT-compiles a shared-memory
    all-reduce op (about a minute of g++) that only its tensor-parallel inference uses;
    ZeRO-3 needs only all-gathers, so it is skipped unless asked for.
    """
    if dist.is_available() and dist.is_initialized():
        return rank_and_world()
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing and "OMPI_COMM_WORLD_RANK" not in os.environ:
        raise RuntimeError(f"RANK is set but {missing} are not: launch with deepspeed/torchrun")

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() == "cpu" and not cpu_shm_comm:
        # `import deepspeed.comm.torch as m` would bind torch itself (deepspeed.comm.torch is
        # also the name of an attribute holding the torch module), hence importlib
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(
        dist_backend=accel.communication_backend_name(), timeout=pg_timeout()
    )
    if accel.device_name() != "cpu":
        accel.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    atexit.register(shutdown)
    return rank_and_world()


def rank_device() -> torch.device:
    """This rank's accelerator (``cuda:LOCAL_RANK``), or the CPU where there is none."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def gather_to_rank0(obj: T, parts_dir: str | Path) -> list[T] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (``None`` on the others).

    Goes through files in ``parts_dir`` (on a filesystem all ranks see) rather than a
    collective: feature caches run to hundreds of GB at paper scale, far past what
    ``gather_object`` pickles comfortably through NCCL. Rank 0 deletes the parts once read.
    """
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    parts = Path(parts_dir)
    parts.mkdir(parents=True, exist_ok=True)
    mine = parts / f"rank{rank}.pt"
    tmp = tmp_path_for(mine)
    torch.save(obj, tmp)
    tmp.replace(mine)
    dist.barrier()
    if rank != 0:
        dist.barrier()  # rank 0 reads the parts before anyone moves on
        return None
    # mmap: tensors stay on disk until used (the merge then holds ~1×, not 2×, the cache)
    out = [torch.load(parts / f"rank{r}.pt", weights_only=False, mmap=True) for r in range(world)]
    shutil.rmtree(parts, ignore_errors=True)
    dist.barrier()
    return out


def keep_alive(*objects: Any) -> None:
    """Hold references (DeepSpeed engines) until :func:`shutdown`."""
    _LIVE.extend(objects)


def shutdown() -> None:
    """Drop live engines and destroy the process group; safe to call more than once."""
    _LIVE.clear()
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()  # no rank tears down gloo while another is still in a collective
        dist.destroy_process_group()


def lockstep_batches(
    items: Sequence[T], rank: int, world: int, pad: bool = True
) -> list[tuple[T, bool]]:
    """This rank's share of ``items`` (round robin), padded so all ranks get equally many.

    Returns ``(item, is_real)`` pairs; padding repeats ``items[0]`` with ``is_real=False``:
    run the forward on it like on any other item (that keeps the ranks in step), then
    discard its result. Every rank gets ``ceil(len(items) / world)`` pairs. ``pad=False``
    (ranks that need not stay in step, e.g. full replicas) returns the share alone.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of size {world}")
    if not items:
        return []
    share = [(item, True) for item in items[rank::world]]
    if not pad:
        return share
    per_rank = -(-len(items) // world)
    return share + [(items[0], False)] * (per_rank - len(share))


class Lockstep(nn.Module):
    """Wrap a ZeRO-3 module so ranks may run different numbers of forwards.

    Before each forward every rank all-reduces a "still working" flag; a rank that called
    :meth:`drain` answers 0 and runs a dummy one-token forward for as long as some other
    rank still works. Every rank must call :meth:`drain` once its own work is done. With a
    single rank both are plain pass-throughs. Attribute access (``config``, ...) falls
    through to the wrapped module, so :class:`TargetRunner` drives it unchanged.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def _others_working(self, working: bool) -> bool:
        _, world = rank_and_world()
        if world == 1:
            return working
        nccl = dist.get_backend() == "nccl"  # nccl reduces device tensors only
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        flag = torch.tensor([int(working)], device=device)
        dist.all_reduce(flag)
        return bool(flag.item())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._others_working(True)
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def drain(self) -> int:
        """Run dummy forwards until every rank has drained; return how many were run."""
        n = 0
        dummy = torch.zeros(1, 1, dtype=torch.long, device=next(self.module.parameters()).device)
        while rank_and_world()[1] > 1 and self._others_working(False):
            self.module(input_ids=dummy, use_cache=False)
            n += 1
        return n
