"""Step time and peak memory of every loss relative to ``kl``, measured side by side.

    python -m benchmarks.loss_bench [--vocab 32768 --tokens 512 --k 6] [--vocab 131072 ...]

Options before the first ``--vocab`` apply to every case: ``--losses`` (comma-separated
specs; default: every registered loss, see :func:`default_losses`), ``--repeats``,
``--dtype`` (of the draft and target logits), ``--device``, ``--threads``, ``--chunk-rows``.
Each ``--vocab V [--tokens N] [--k K]`` group is one case: ``N`` tokens × ``K`` draft
positions of ``V``-way draft logits, the target a log-softmax over ``V + V/4`` tokens sliced
to ``V`` (a truncated draft vocabulary).

What is measured, per loss, for one forward + backward of the loss alone (building the
loss, computing it from given logits, and back-propagating to the draft logits):

- time: wall clock and process CPU time (user + system, all threads), repeats interleaved
  across losses (the order rotates each repeat); ``×kl`` is the median over repeats of
  (this loss / kl in the same repeat). The target column judges CUDA by wall time and CPU by
  CPU time, which other processes on a shared machine do not inflate;
- peak: the most bytes of tensors alive at once during the step beyond those alive before
  it (inputs excluded; the returned gradient of the draft logits included). On CUDA that is
  ``torch.cuda.max_memory_allocated``; on CPU it is replayed from the allocation and free
  events of ``torch.profiler`` (``profile_memory=True``) in a separate untimed step. This is
  allocator-level tensor memory, not process RSS;
- work: peak minus the gradient buffer: the loss's own transient memory (chunk buffers).

``--hidden d`` makes the logits the output of a trainable LM head ``h[N, K, d] @ W[V, d]ᵀ``
so that a step is the smallest realistic training step (projection + loss, both backward).

``--targets rows`` measures every loss twice on the targets of a training batch as ``align``
makes them: ``N + K`` positions of target log-probs, row ``(n, k)`` reading position
``n + k + 1``. ``spec`` gathers the ``[N, K, V]`` copy inside the step and computes the loss
on it (what ``align`` did before :class:`~specbench.losses.rows.IndexedRows`); ``spec @rows``
passes the rows by index, which the loss gathers a chunk at a time. The last lines give the
paired ratio ``@rows / gathered`` per loss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from specbench.losses import LOSSES as REGISTRY
from specbench.losses import IndexedRows, build


def default_losses() -> str:
    """Every registered loss: each base loss, the two reductions the LK paper compares
    (``reduce=batch``, ``lambda_scope=token``), each weighting on ``kl``, and ``ce`` with
    every weighting at once (one position weighting)."""
    bases = [n for n, ld in REGISTRY.items() if ld.kind == "base"]
    rest = [n for n, ld in REGISTRY.items() if ld.kind != "base"]
    positions = [n for n in rest if REGISTRY[n].kind == "position"]
    together = "+".join(["ce", *positions[:1], *(n for n in rest if n not in positions)])
    specs = bases + ["lk_alpha(reduce=batch)", "lk_lambda(lambda_scope=token)"]
    return ",".join(specs + [f"kl+{n}" for n in rest] + [together])


LOSSES = default_losses()
MAIN = {"tv", "lk_alpha", "lk_lambda"}  # targets: time ≤ 1.10× kl, peak ≤ 1.25× kl
DEFAULT_CASES = [["--vocab", "32768", "--tokens", "512"], ["--vocab", "131072", "--tokens", "128"]]
MB = 2**20


def make_inputs(n: int, k: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    extra = v // 4
    target = 3.0 * torch.randn(n, k, v + extra, generator=g)
    t = target.log_softmax(-1)[..., :v].contiguous()
    z = target[..., :v] + 2.0 * torch.randn(n, k, v, generator=g)  # a half-trained draft
    del target
    mask = torch.rand(n, k, generator=g) < 0.95
    labels = torch.randint(0, v, (n, k), generator=g)
    labels[torch.rand(n, k, generator=g) < 0.05] = -100
    z = z.to(device=device, dtype=dtype).requires_grad_()
    return z, t.to(device=device, dtype=dtype), mask.to(device), labels.to(device)


def indexed_targets(n: int, k: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Targets as ``align`` makes them (``--targets rows``): ``IndexedRows`` over ``n + k``
    positions, row ``(i, j)`` reading position ``i + j + 1`` (each position read ~K times)."""
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    source = (3.0 * torch.randn(n + k, v + v // 4, generator=g)).log_softmax(-1)[:, :v]
    index = torch.arange(n)[:, None] + torch.arange(1, k + 1)[None, :]  # [N, K]
    return IndexedRows(source.contiguous().to(device=device, dtype=dtype), index.to(device))


def step(fn, z, t, mask, labels, head=None) -> None:
    """One forward + backward. With ``head = (h, w)`` the logits are ``h @ wᵀ`` (a draft's LM
    head, both ``h`` and ``w`` trainable), else ``z`` itself is the trainable leaf. ``t``
    may be a function that makes the targets (inside the step: a gather is timed with it)."""
    t = t() if callable(t) else t
    if head is None:
        z.grad = None
    else:
        h, w = head
        h.grad = w.grad = None
        z = h @ w.T
    fn(draft_logits=z, target_logits=t, mask=mask, labels=labels).backward()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(fn, z, t, mask, labels, device: str, head=None) -> int:
    """Peak bytes of tensors allocated during one step, above what was alive before it."""
    z.grad = None
    if head is not None:
        head[0].grad = head[1].grad = None
    if device == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, z, t, mask, labels, head)
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    from specbench.plan.trace import profiled_peak

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(fn, z, t, mask, labels, head)
    return profiled_peak(prof)


def run_case(argv: list[str], opts: argparse.Namespace) -> None:
    p = argparse.ArgumentParser(prog="--vocab group")
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--k", type=int, default=6)
    case = p.parse_args(argv)
    dtype = getattr(torch, opts.dtype)
    z, t, mask, labels = make_inputs(case.tokens, case.k, case.vocab, dtype, opts.device)
    specs = _split_specs(opts.losses)
    fns = {s: build(s, chunk_rows=opts.chunk_rows) for s in specs}
    targets = {s: t for s in specs}
    if opts.targets == "rows":  # each loss on the gathered copy, then on the rows by index
        rows_t = indexed_targets(case.tokens, case.k, case.vocab, dtype, opts.device)
        targets = {s: rows_t.materialize for s in specs}
        targets |= {f"{s} @rows": rows_t for s in specs}
        fns |= {f"{s} @rows": fns[s] for s in specs}
        specs = [x for s in specs for x in (s, f"{s} @rows")]
    rows = case.tokens * case.k
    head = None
    if opts.hidden:
        g = torch.Generator(device="cpu").manual_seed(1)
        h = torch.randn(case.tokens, case.k, opts.hidden, generator=g).to(opts.device, dtype)
        w = torch.randn(case.vocab, opts.hidden, generator=g) / opts.hidden**0.5
        head = (h.requires_grad_(), w.to(opts.device, dtype).requires_grad_())
        z = z.detach()
    chunk = opts.chunk_rows or _default_chunk(case.vocab)
    print(
        f"\n## vocab {case.vocab}, {case.tokens} tokens × K={case.k} = {rows} rows, "
        f"{opts.dtype} logits, chunk {chunk} rows "
        f"(one full-vocab fp32 buffer of all rows = {rows * case.vocab * 4 / MB:.0f} MB)"
    )
    for s in specs:  # warm-up
        step(fns[s], z, targets[s], mask, labels, head)
    times: dict[str, list[float]] = {s: [] for s in specs}
    cpu: dict[str, list[float]] = {s: [] for s in specs}
    for r in range(opts.repeats):
        order = specs[r % len(specs) :] + specs[: r % len(specs)]
        for s in order:
            sync(opts.device)
            t0, c0 = time.perf_counter(), time.process_time()
            step(fns[s], z, targets[s], mask, labels, head)
            sync(opts.device)
            times[s].append(time.perf_counter() - t0)
            cpu[s].append(time.process_time() - c0)
    peaks = {s: peak_bytes(fns[s], z, targets[s], mask, labels, opts.device, head) for s in specs}
    grad_bytes = z.numel() * z.element_size()
    kl = "kl" if "kl" in specs else specs[0]
    print(
        f"| loss | wall ms | wall ×{kl} | cpu ms | cpu ×{kl} | peak MB | peak ×{kl} | work MB "
        "| target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    judge = times if opts.device == "cuda" else cpu  # CPU time is robust to other processes
    for s in specs:
        mem = peaks[s] / peaks[kl]
        target = ""
        if s.removesuffix(" @rows") in MAIN:
            target = "ok" if _paired(judge[s], judge[kl]) <= 1.10 and mem <= 1.25 else "MISSED"
        work = "-" if head else f"{(peaks[s] - grad_bytes) / MB:.1f}"
        label = fns[s].spec + (" @rows" if s.endswith(" @rows") else "")
        print(
            f"| {label} | {statistics.median(times[s]) * 1e3:.0f} | "
            f"{_paired(times[s], times[kl]):.3f} | {statistics.median(cpu[s]) * 1e3:.0f} | "
            f"{_paired(cpu[s], cpu[kl]):.3f} | {peaks[s] / MB:.0f} | {mem:.3f} | {work} | "
            f"{target} |"
        )
    if opts.targets == "rows":
        which = "wall" if opts.device == "cuda" else "cpu"
        print(f"\n@rows / gathered, paired median {which} time and peak:")
        for s in specs[::2]:
            ratio = _paired(judge[f"{s} @rows"], judge[s])
            print(f"- {fns[s].spec}: {ratio:.3f}, peak {peaks[f'{s} @rows'] / peaks[s]:.3f}")


def _paired(xs: list[float], ref: list[float]) -> float:
    """Median over repeats of the ratio to the reference measured in the same repeat."""
    return statistics.median(a / b for a, b in zip(xs, ref, strict=True))


def _split_specs(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + [cur.strip()] if cur.strip() else out


def _default_chunk(vocab: int) -> int:
    from specbench.losses.rowstats import default_chunk_rows

    return default_chunk_rows(vocab)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    starts = [i for i, a in enumerate(argv) if a == "--vocab"]
    head = argv[: starts[0]] if starts else argv
    cases = [argv[i:j] for i, j in zip(starts, starts[1:] + [len(argv)], strict=True)]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--losses", default=LOSSES)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--hidden", type=int, default=0, help="add a draft LM head of this width")
    p.add_argument("--targets", default="tensor", choices=["tensor", "rows"],
                   help="rows: also each loss on the rows by index (IndexedRows)")  # fmt: skip
    opts = p.parse_args(head)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dev = torch.cuda.get_device_name() if opts.device == "cuda" else "cpu"
    print(
        f"# loss_bench: torch {torch.__version__}, {dev}, {torch.get_num_threads()} threads, "
        f"{opts.repeats} interleaved repeats; forward+backward of "
        + (f"an LM head (hidden {opts.hidden}) and the loss" if opts.hidden else "the loss alone")
    )
    for case in cases or DEFAULT_CASES:
        run_case(case, opts)


if __name__ == "__main__":
    main()
