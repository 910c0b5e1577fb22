"""What the paper matrix costs on H100s: job counts and GPU-hours, from stated formulas.

    python docs/paper_cost.py [--config configs/paper.yaml] [--tokens-per-sequence 650]

Reads the matrix (targets, GPUs, architectures, group sizes, losses × seeds, epochs, batch
and micro-batch, generation settings) from the config and prints the tables of
``docs/cluster.md``. Nothing here is measured on a GPU: the per-forward times and the
utilisation are assumptions, named below, and every figure follows from them.

Online training of one group job (N GPUs, g drafts spread over them, ⌈g/N⌉ per GPU):

    S      = ⌈epochs · n / B⌉                  optimizer steps (n training sequences)
    m      = B / b                              micro-batches per step
    t_f    = max(2·P_active·b·L / (F·u), t_g)   one target forward of a micro-batch on one
                                                GPU: compute, or ZeRO-3's weight gathering
    t_d    = 6·C_draft·b·L·steps_d / (F·u)      one draft's forward + backward on it
    wall   = S · (m/N · t_f + m · ⌈g/N⌉ · t_d)  each GPU runs the target on m/N micro-batches
                                                and trains its drafts on all m of them
    GPU-h  = N · wall / 3600

Regenerated training responses (targets without released completions), sharded over jobs:

    forwards = ⌈n / (N · batch_gen)⌉ · (new_tokens + 1)   decode steps per rank, all ranks
    GPU-h    = N · forwards · t_g / 3600                  in step (ZeRO-3 is bandwidth-bound)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

# H100 SXM dense bf16 and the utilisation assumed for training-sized matmuls
FLOPS, UTIL = 989e12, 0.4
# Per target: total and active parameters, and t_g, the time of one ZeRO-3 forward spent
# gathering weights (NVLink all-gather of (N−1)/N × bf16 size at ~300 GB/s per GPU, plus the
# PCIe reads of an offloaded shard at ~40 GB/s): docs/cluster.md, "What it costs".
TARGETS = {
    "llama31-8b": (8.0e9, 8.0e9, 0.04),
    "llama33-70b": (70.6e9, 70.6e9, 0.35),
    "gpt-oss-20b": (21e9, 3.6e9, 0.05),
    "gpt-oss-120b": (117e9, 5.1e9, 0.6),
    "qwen3-235b-a22b": (235e9, 22e9, 2.5),
    "deepseek-v3": (671e9, 37e9, 6.0),
}
# Per (target, arch): C_draft, the parameters a draft multiplies per position and step
# (trainable ones, minus embedding lookups; MTP adds its 8 active frozen experts), and
# steps_d, how many times it runs per position (K recurrent steps; MEDUSA's heads run once).
# Trainable counts measured with build_draft on the real configs (meta device).
DRAFTS = {
    ("llama31-8b", "eagle3"): (425e6, 6),
    ("llama31-8b", "medusa"): (3253e6, 1),
    ("llama31-8b", "mlp_speculator"): (3200e6, 1),  # 6.4e9 trainable, half of it lookups
    ("llama33-70b", "eagle3"): (1403e6, 6),
    ("gpt-oss-20b", "eagle3"): (258e6, 6),
    ("gpt-oss-120b", "eagle3"): (258e6, 6),
    ("qwen3-235b-a22b", "eagle3"): (441e6, 6),
    ("deepseek-v3", "eagle3"): (1147e6, 6),
    ("deepseek-v3", "mtp"): (700e6, 6),  # 0.35e9 trainable + 8 of 256 experts
}


def training_rows(cfg: dict, n: int, tokens: int) -> list[dict]:
    """One row per (target, arch): its group jobs and their cost."""
    train, runs = cfg["train"], len(cfg["losses"]) * len(cfg["seeds"])
    batch, micro = train["batch_size"], train.get("micro_batch_size") or train["batch_size"]
    m = batch // micro
    rows = []
    for name, t in cfg["targets"].items():
        p_total, p_active, t_gather = TARGETS[name]
        gpus = max(1, t.get("gpus", 1))
        for arch in t.get("draft_archs") or cfg["draft_archs"]:
            size = t.get("group_size")
            size = size.get(arch, size["default"]) if isinstance(size, dict) else size
            g = size or runs
            epochs = train["epochs"]
            epochs = epochs.get(arch, epochs["default"]) if isinstance(epochs, dict) else epochs
            steps = math.ceil(epochs * n / batch)
            t_f = max(2 * p_active * micro * tokens / (FLOPS * UTIL), t_gather)
            c, reps = DRAFTS[(name, arch)]
            t_d = 6 * c * micro * tokens * reps / (FLOPS * UTIL)
            per_gpu = math.ceil(g / gpus)
            target_s, draft_s = steps * m / gpus * t_f, steps * m * per_gpu * t_d
            jobs = math.ceil(runs / g)
            wall_h = (target_s + draft_s) / 3600
            rows.append(
                dict(target=name, arch=arch, gpus=gpus, group=g, jobs=jobs, steps=steps,
                     t_f=t_f, t_d=t_d, wall_h=wall_h, gpu_h=jobs * gpus * wall_h,
                     target_gpu_h=jobs * gpus * target_s / 3600,
                     unshared_target_gpu_h=runs * gpus * target_s / 3600)
            )  # fmt: skip
    return rows


def regeneration_rows(cfg: dict, n: int) -> list[dict]:
    """GPU-hours of regenerating the training responses, per target that has to."""
    data, rows = cfg["data"], []
    for name, t in cfg["targets"].items():
        if t.get("train_completions"):
            continue  # released completions: read, not generated
        gpus, t_gather = max(1, t.get("gpus", 1)), TARGETS[name][2]
        forwards = math.ceil(n / (gpus * data["generation_batch_size"])) * (
            data["train_new_tokens"] + 1
        )
        shards = math.ceil(n / data["response_shard_prompts"])
        rows.append(
            dict(target=name, gpus=gpus, shards=shards, forwards=forwards,
                 gpu_h=gpus * forwards * t_gather / 3600)
        )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/paper.yaml")
    ap.add_argument("--tokens-per-sequence", type=int, default=650, help="L: prompt + response")
    ap.add_argument("--sequences", type=int, help="n (default: the config's general prompts)")
    args = ap.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    per_domain = cfg["data"]["train_prompts_per_domain"]
    n = args.sequences or (
        sum(per_domain.values()) if isinstance(per_domain, dict) else 3 * per_domain
    )
    tokens = args.tokens_per_sequence
    print(f"n = {n:,} training sequences of L = {tokens} tokens; F·u = {FLOPS * UTIL:.3g} FLOP/s")
    print()
    print("| target | arch | GPUs/job | drafts/job | jobs | steps | t_f s | t_d s | "
          "wall/job h | GPU-h | of which target | target GPU-h if unshared |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = training_rows(cfg, n, tokens)
    for r in rows:
        print(
            f"| {r['target']} | {r['arch']} | {r['gpus']} | {r['group']} | {r['jobs']} | "
            f"{r['steps']:,} | {r['t_f']:.2f} | {r['t_d']:.3f} | {r['wall_h']:,.0f} | "
            f"{r['gpu_h']:,.0f} | {r['target_gpu_h']:,.0f} | {r['unshared_target_gpu_h']:,.0f} |"
        )
    total = sum(r["gpu_h"] for r in rows)
    target = sum(r["target_gpu_h"] for r in rows)
    unshared = sum(r["unshared_target_gpu_h"] for r in rows)
    print(
        f"\ntraining: {sum(r['jobs'] for r in rows)} group jobs, {total:,.0f} GPU-h "
        f"({target:,.0f} of them target forwards; {unshared:,.0f} if every draft ran its own)"
    )
    print("\n| target | GPUs/job | shards | decode forwards per rank | GPU-h |")
    print("|---|---:|---:|---:|---:|")
    regen = regeneration_rows(cfg, n)
    for r in regen:
        print(
            f"| {r['target']} | {r['gpus']} | {r['shards']} | {r['forwards']:,} | "
            f"{r['gpu_h']:,.0f} |"
        )
    print(f"\nregenerated responses: {sum(r['gpu_h'] for r in regen):,.0f} GPU-h")


if __name__ == "__main__":
    main()
