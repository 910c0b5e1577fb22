"""What online training costs against the feature cache, per draft-step (issue #10 §3).

    python -m benchmarks.online_bench [--steps 4] [--drafts 8] [--device cpu] [--threads 1]
    make bench-online

Defaults run in about a minute on one CPU thread; ``--device`` defaults to cuda if present.

A random Llama target (hidden 512, 8 layers, a 4,096-token vocabulary; 27M parameters: on
CPU its forward costs about twice a draft's forward + backward on the same micro-batch),
``steps × batch`` random sequences of 128-256 tokens (one epoch; ``--sequences`` changes
that), a 1,024-token draft vocabulary, EAGLE-3 drafts with the default's ``arch_hparams``,
and one ``TrainConfig`` for every mode (batch 8, micro-batch 4, K = 6). A *draft-step* is
one optimizer step of one draft, so a group of N drafts makes N draft-steps per step.
Three ways to train:

- **cache**: the target runs once over every sequence (``compute_features``, in batches of
  the micro-batch size), the features are written (``save_cache``) and read back
  (``FeatureCache``); one draft then trains on them, as a matrix cell does. The one-off
  caching is reported apart, and amortised over ``--drafts`` drafts (each a job of its own
  reading the same cache): ``caching / (drafts × steps) + training per draft-step``;
- **online-1**: one draft trains on ``OnlineFeatures`` (one target forward per micro-batch);
- **online-N**: a group of ``--drafts`` drafts (losses kl, tv, lk_alpha, lk_lambda × seeds
  0, 1, …) shares those forwards: target work does not grow with the group.

Printed: target forwards (``OnlineFeatures.forwards``, or the caching batches) and wall
time per draft-step, as absolute numbers and as ratios (to cache, and online-N against N ×
online-1), plus the *features share*: the share of wall time spent getting features, i.e.
inside ``source.batch`` (the target forward and the slicing of its outputs, online; reading
and padding, cache) plus, for the amortised cache row, the caching; the rest is draft work
(align, loss, backward, AdamW). On CPU, process CPU time is printed too: with one thread it
is robust to other processes on a shared machine. Online-1 and cache train ``kl/seed0``;
the group's other losses differ from it only in the loss, a small part of a draft step.
One run, after a warm-up step; no assertions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.losses import LOSSES
from specbench.losses import build as build_loss
from specbench.targets.featurize import OnlineFeatures, compute_features
from specbench.targets.info import target_info_from_model
from specbench.targets.runner import TargetRunner
from specbench.training.config import TrainConfig
from specbench.training.trainer import make_member, train_group

HPARAMS = {"intermediate_size": 512, "train_anchors": 16}  # configs/default.yaml's eagle3
GROUP_LOSSES = [name for name in ("kl", "tv", "lk_alpha", "lk_lambda") if name in LOSSES]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timed:
    """A feature source that adds up the wall time spent inside its ``batch``."""

    def __init__(self, source, device: torch.device) -> None:
        self.source, self.device = source, device
        self.draft_to_target = source.draft_to_target
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.source)

    def response_tokens(self) -> torch.Tensor:
        return self.source.response_tokens()

    def batch(self, indices: list[int], device=None) -> dict:
        sync(self.device)
        t0 = time.perf_counter()
        out = self.source.batch(indices, device)
        sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


def target_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1408,
                      num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                      max_position_embeddings=512)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def sequences(n: int, vocab: int) -> list[Sequence]:
    """``n`` random sequences: a 16-31-token prompt and a response, 128-256 tokens in all."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        length = int(torch.randint(128, 257, (1,), generator=g))
        prompt = int(torch.randint(16, 32, (1,), generator=g))
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        out.append(Sequence(ids[:prompt], ids[prompt:], i))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per mode")
    ap.add_argument("--drafts", type=int, default=8, help="drafts of the online group")
    ap.add_argument("--sequences", type=int, default=None, help="default: steps × batch")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU only)")
    args = ap.parse_args(argv)
    if args.drafts < 2:
        ap.error("--drafts must be at least 2 (online-1 is measured anyway)")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model = target_model()
    vocab = model.config.vocab_size
    d2t = torch.arange(0, vocab, 4)  # 1,024 draft ids
    info = target_info_from_model(model, d2t)  # on the CPU, as target_info_from_checkpoint's
    runner = TargetRunner(model.to(device))
    seqs = sequences(args.sequences or args.steps * args.batch, vocab)
    train = TrainConfig(k=6, steps=args.steps, batch_size=args.batch,
                        micro_batch_size=args.micro_batch, lr=4e-4, warmup_steps=1,
                        grad_clip=1.0)  # fmt: skip
    runs = [
        (GROUP_LOSSES[i % len(GROUP_LOSSES)], i // len(GROUP_LOSSES)) for i in range(args.drafts)
    ]
    quiet = lambda *a: None  # noqa: E731

    def members(group: list[tuple[str, int]]):
        out = []
        for loss, seed in group:
            torch.manual_seed(seed)
            draft = build_draft("eagle3", info, **HPARAMS)
            out.append(
                make_member(f"{loss}/seed{seed}", draft, build_loss(loss), seed, train, device)
            )
        return out

    def timed_train(source, group: list[tuple[str, int]], steps: int) -> tuple[float, float, Timed]:
        timed, ms = Timed(source, device), members(group)
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        train_group(ms, timed, train, steps, quiet, device)
        sync(device)
        return time.perf_counter() - t0, time.process_time() - c0, timed

    # warm-up: a target forward and a draft step of every loss (first-call costs)
    timed_train(OnlineFeatures(runner, seqs, d2t), [(name, 0) for name in GROUP_LOSSES], 1)

    # cache: the one-off caching, then one draft trained on the cache
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.safetensors"
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        save_cache(compute_features(runner, seqs, d2t, batch_size=args.micro_batch), path)
        cache = FeatureCache(path)
        caching_wall, caching_cpu = time.perf_counter() - t0, time.process_time() - c0
        cache_forwards = -(-len(seqs) // args.micro_batch)
        cache_mb = path.stat().st_size / 2**20
        cache_wall, cache_cpu, cache_src = timed_train(cache, [("kl", 0)], args.steps)

    online = {}
    for name, group in (("online-1", [("kl", 0)]), (f"online-{args.drafts}", runs)):
        source = OnlineFeatures(runner, seqs, d2t)
        wall, cpu, timed = timed_train(source, group, args.steps)
        online[name] = (len(group), source.forwards, wall, cpu, timed.seconds)

    n, steps = args.drafts, args.steps
    base = cache_wall / steps  # cache: wall per draft-step, training only
    amortised = caching_wall / (n * steps) + base
    rows = [
        ("cache (train)", 1, steps, 0, cache_wall, cache_cpu, cache_src.seconds),
        (f"cache + caching / {n} drafts", n, n * steps, cache_forwards,
         caching_wall + n * cache_wall, caching_cpu + n * cache_cpu,
         caching_wall + n * cache_src.seconds),
    ]  # fmt: skip
    for name, (size, forwards, wall, cpu, inside) in online.items():
        rows.append((name, size, size * steps, forwards, wall, cpu, inside))

    dev = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    )
    target_params = sum(p.numel() for p in model.parameters())
    draft_params = members([("kl", 0)])[0].draft.num_trainable_parameters()
    print(
        f"# online_bench: torch {torch.__version__}, {dev}; target {target_params / 1e6:.1f}M "
        f"params, EAGLE-3 draft {draft_params / 1e6:.1f}M trainable; {len(seqs)} sequences "
        f"({sum(len(s.ids) for s in seqs)} tokens), {steps} steps of {args.batch} "
        f"(micro-batch {args.micro_batch}), K = 6"
    )
    print(
        f"caching (one-off): {cache_forwards} target forwards, {caching_wall:.2f} s wall "
        f"({caching_cpu:.2f} s cpu), {cache_mb:.0f} MB on disk; amortised over {n} drafts × "
        f"{steps} steps: {caching_wall / (n * steps) * 1e3:.0f} ms per draft-step"
    )
    cpu_col = device.type == "cpu"
    print(
        "| mode | drafts | draft-steps | target fwd | fwd / draft-step | wall s | "
        + ("cpu s | " if cpu_col else "")
        + "wall ms / draft-step | × cache | × cache amortised | features share |"
    )
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if cpu_col else "") + "---:|---:|---:|---:|")
    for name, _size, dsteps, forwards, wall, cpu, inside in rows:
        per = wall / dsteps
        print(
            f"| {name} | {_size} | {dsteps} | {forwards} | {forwards / dsteps:.3g} | {wall:.2f} | "
            + (f"{cpu:.2f} | " if cpu_col else "")
            + f"{per * 1e3:.0f} | {per / base:.2f} | {per / amortised:.2f} | "
            f"{inside / wall:.0%} |"
        )
    _, f1, w1, c1, in1 = online["online-1"]
    _, fn, wn, cn, inn = online[f"online-{n}"]
    print(
        f"online-{n} vs {n} × online-1: target forwards {fn / (n * f1):.3f}, wall "
        f"{wn / (n * w1):.2f}" + (f", cpu {cn / (n * c1):.2f}" if cpu_col else "")
    )
    print(
        f"online wall split, target (inside source.batch) / draft work: online-1 "
        f"{in1:.2f} s / {w1 - in1:.2f} s; online-{n} {inn:.2f} s / {wn - inn:.2f} s "
        f"({(wn - inn) / (w1 - in1):.1f}× the draft work of online-1 for {n}× the drafts)"
    )


if __name__ == "__main__":
    main()
