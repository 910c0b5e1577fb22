"""Grouped-query attention with a mask on this CPU: ``enable_gqa`` vs K/V heads repeated out.

    python -m benchmarks.gqa_bench [--repeats 5] [--threads 1]

The drafts' attention (``specbench/drafts/layers.py``) repeats K/V heads on CUDA, where a
mask with ``enable_gqa`` leaves only the math kernel, and keeps ``enable_gqa`` on a CPU. This
measures that choice on a CPU: forward + backward of ``scaled_dot_product_attention`` at an
EAGLE-3 TTT shape of the embedded default (9 query heads, 3 KV heads, head width 64, 256
queries over 3 × 256 keys, a random mask). Repeats alternate the two; the ratio
is the median of per-repeat ratios, from one run (machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

B, H, HKV, T, HD = 2, 9, 3, 256, 64


def seconds(repeat_kv: bool, calls: int = 20) -> float:
    """Wall time of ``calls`` forward + backward passes of one attention call."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, T, HD, generator=g, requires_grad=True)
    k = torch.randn(B, HKV, 3 * T, HD, generator=g, requires_grad=True)
    v = torch.randn(B, HKV, 3 * T, HD, generator=g, requires_grad=True)
    mask = torch.rand(B, 1, T, 3 * T, generator=g) > 0.3
    t0 = time.perf_counter()
    for _ in range(calls):
        if repeat_kv:
            kk, vv = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
            out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        out.sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ratios, gqa, rep = [], [], []
    for _ in range(args.repeats):
        a, b = seconds(False), seconds(True)
        gqa.append(a)
        rep.append(b)
        ratios.append(b / a)
    print(f"B={B} H={H} Hkv={HKV} T={T} S={3 * T} hd={HD}, 20 calls, {args.repeats} repeats, "
          f"{args.threads} thread(s)")  # fmt: skip
    print(
        f"enable_gqa {statistics.median(gqa):.3f} s | repeated K/V {statistics.median(rep):.3f} s"
        f" | repeated/enable_gqa {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
