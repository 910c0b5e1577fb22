"""The precision the drafts train in, chosen by the hardware (``train.autocast: auto``).

bf16 autocast pays only where the device computes bf16 natively: a CUDA GPU of compute
capability ≥ 8.0, or a CPU with AVX512-BF16 or AMX-BF16. Elsewhere it is emulated: on an
AVX2-only CPU an EAGLE-3 step under bf16 autocast took 12.4× the fp32 step (issue 18,
``python -m benchmarks.train_step_bench``), where an AVX512-BF16 CPU took 0.61×. So
``auto`` chooses bf16 where it is native and fp32 elsewhere, and on CUDA it also lets fp32
matmuls use TF32 (the cost model's throughput assumes tensor cores). The choice and the
reason go to the job's log, as ``autocast: <dtype> (<why>)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 units


@dataclass(frozen=True)
class Precision:
    """The draft forward's autocast dtype (None: plain fp32) and why it was chosen."""

    dtype: torch.dtype | None
    reason: str

    def __str__(self) -> str:
        name = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        return f"autocast: {name} ({self.reason})"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and what says so (for the log)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        return major >= 8, f"{name}, compute capability {major}.{minor}"
    if device.type == "cpu":
        found = [f for f in CPU_BF16_FLAGS if f in cpu_flags()]
        return bool(found), " and ".join(f.upper().replace("_", "-") for f in found)
    return False, device.type


def choose_precision(setting: str, device: torch.device | str) -> Precision:
    """The precision for ``train.autocast`` = ``setting`` (``auto``, ``bfloat16``, ``none``).

    ``bfloat16`` and ``none`` are kept as asked; the reason then says whether that fits
    this device. With ``auto`` on CUDA, TF32 matmuls are switched on (see the module doc).
    """
    device = torch.device(device)
    native, what = native_bf16(device)
    where = "this CPU" if device.type == "cpu" else what
    if setting == "none":
        return Precision(None, "train.autocast: none")
    if setting == "bfloat16":
        note = "native" if native else f"emulated on {where}: expect several times fp32's step"
        return Precision(torch.bfloat16, f"train.autocast: bfloat16, {note}")
    if setting != "auto":
        raise ValueError(f"train.autocast must be auto, bfloat16 or none, got {setting!r}")
    if device.type == "cuda":  # TF32 matmuls (cuDNN convolutions use TF32 by default)
        torch.set_float32_matmul_precision("high")
    if native:
        on = f"{what} on this CPU" if device.type == "cpu" else what
        return Precision(torch.bfloat16, f"native bf16: {on}")
    tf32 = "; TF32 matmuls" if device.type == "cuda" else ""
    return Precision(None, f"no native bf16 on {where}{tf32}")
