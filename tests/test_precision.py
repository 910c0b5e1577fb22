"""``train.autocast: auto``: bf16 where the hardware computes it natively, fp32 elsewhere.

The capability probes (``/proc/cpuinfo``'s flags, CUDA's compute capability) are stubbed
both ways; the training log says what was chosen and why.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_trainer import QUIET, settings, setup  # noqa: F401 (setup is a fixture)

from specbench.losses import build as build_loss
from specbench.training import precision
from specbench.training.precision import choose_precision
from specbench.training.trainer import train_draft

AVX2_ONLY = {"avx", "avx2", "fma", "avx512f"}  # an AVX-512 CPU without its bf16 extension
AVX512_BF16 = AVX2_ONLY | {"avx512_bf16"}
AMX = AVX2_ONLY | {"amx_bf16", "amx_tile"}


@pytest.mark.parametrize(
    ("flags", "want", "line"),
    [
        (AVX2_ONLY, None, "autocast: fp32 (no native bf16 on this CPU)"),
        (AVX512_BF16, torch.bfloat16, "autocast: bf16 (native bf16: AVX512-BF16 on this CPU)"),
        (AMX, torch.bfloat16, "autocast: bf16 (native bf16: AMX-BF16 on this CPU)"),
        (set(), None, "autocast: fp32 (no native bf16 on this CPU)"),  # no /proc/cpuinfo
    ],
)
def test_auto_on_a_cpu_takes_bf16_only_where_it_is_native(monkeypatch, flags, want, line):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    chosen = choose_precision("auto", "cpu")
    assert chosen.dtype == want and str(chosen) == line


def test_forced_settings_are_kept_and_say_whether_they_suit_the_device(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)
    forced = choose_precision("bfloat16", "cpu")
    assert forced.dtype == torch.bfloat16 and "emulated on this CPU" in str(forced)
    assert choose_precision("none", "cpu").dtype is None
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX512_BF16)
    assert "native" in str(choose_precision("bfloat16", "cpu"))
    with pytest.raises(ValueError, match="auto, bfloat16 or none"):
        choose_precision("fp16", "cpu")


@pytest.mark.parametrize(
    ("capability", "want", "why"),
    [((9, 0), torch.bfloat16, "native bf16: NVIDIA H100 80GB HBM3, compute capability 9.0"),
     ((7, 0), None, "no native bf16 on NVIDIA V100, compute capability 7.0; TF32 matmuls")],
)  # fmt: skip
def test_auto_on_cuda_takes_bf16_from_ampere_on_and_turns_tf32_on(
    monkeypatch, capability, want, why
):
    name = "NVIDIA H100 80GB HBM3" if capability[0] >= 8 else "NVIDIA V100"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        chosen = choose_precision("auto", "cuda:0")
        assert chosen.dtype == want and chosen.reason == why
        assert torch.get_float32_matmul_precision() == "high"  # TF32
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("flags", [AVX2_ONLY, AVX512_BF16])
def test_the_training_log_says_what_auto_chose(monkeypatch, setup, flags):  # noqa: F811
    """On an AVX2-only CPU the drafts train at fp32 (bitwise ``autocast: none``); with
    AVX512-BF16 under bf16 autocast (bitwise ``autocast: bfloat16``)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    cache, draft = setup
    lines: list[str] = []
    auto = train_draft(
        copy.deepcopy(draft), build_loss("kl"), cache, settings(autocast="auto"), 0,
        log=lines.append,
    )  # fmt: skip
    forced = "none" if flags is AVX2_ONLY else "bfloat16"
    same = train_draft(
        copy.deepcopy(draft), build_loss("kl"), cache, settings(autocast=forced), 0, log=QUIET
    )
    want = "fp32 (no native bf16" if flags is AVX2_ONLY else "bf16 (native bf16: AVX512-BF16"
    assert any(line.startswith(f"autocast: {want}") for line in lines), lines
    assert [r["loss"] for r in auto] == [r["loss"] for r in same]
