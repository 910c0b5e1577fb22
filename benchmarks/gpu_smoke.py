"""The first command on a new cluster: does specbench run right on this machine's GPU?

    make gpu-smoke      # python -m benchmarks.gpu_smoke [--work gpu-smoke] [--skip-matrix]

About 10 minutes on one 80 GB GPU; written for the first hour on a real GPU, and run so far
only on CPU, where it reports that there is no GPU and exits 0 (the parts it drives are
tested on CPU: ``tests/test_gpu_smoke.py``). In order:

1. the environment: GPUs, torch / CUDA / DeepSpeed / transformers versions, and what
   ``train.autocast: auto`` chooses here;
2. the smoke matrix on CUDA (``configs/gpu-smoke.yaml``: a ZeRO-3 target, online groups
   with ``lk_lambda`` and ``lk_alpha(reduce=batch)``, micro-batches, checkpoints), in
   ``--work`` with its own ``results/``;
3. ``benchmarks/loss_bench.py`` on CUDA at 32k and 128k vocabularies, with the chunks sized
   for CUDA (the default there) and, for comparison, sized for a CPU cache;
4. two optimizer steps of the first Llama-3.1-8B EAGLE-3 group of ``configs/paper.yaml``
   (the ``train_group`` job itself, on random ids of 1,024-token responses), if the weights
   are in the Hugging Face cache, with the peak GPU memory measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER_TARGET, PAPER_ARCH = "llama31-8b", "eagle3"


def environment() -> None:
    """What this machine is (step 1)."""
    from specbench.training.precision import choose_precision

    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    print(f"python {platform.python_version()}, {versions}")
    for pkg in ("transformers", "deepspeed"):
        try:
            print(f"{pkg} {__import__(pkg).__version__}")
        except ImportError:
            print(f"{pkg}: not installed")
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {props.name}, {props.total_memory / 2**30:.1f} GiB")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"train.autocast: auto -> {choose_precision('auto', device)}")


def smoke_matrix(work: Path) -> None:
    """The gpu-smoke matrix through Snakemake, in ``work`` (step 2)."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(work), "--cores", "4",
           "--configfile", str(ROOT / "configs" / "gpu-smoke.yaml")]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    state = "ok" if done.returncode == 0 else f"FAILED ({done.returncode})"
    print(f"smoke matrix on CUDA: {state} in {time.perf_counter() - t0:.0f} s ({work})")


def loss_bench() -> None:
    """The loss benchmark on CUDA, CUDA-sized chunks vs CPU-sized ones (step 3)."""
    from specbench.losses.rowstats import CHUNK_ELEMENTS

    for vocab, tokens in ((32768, 512), (131072, 128)):
        for label, rows in (("CUDA chunks", None), ("CPU chunks", CHUNK_ELEMENTS // vocab)):
            print(f"--- loss_bench, V={vocab}, {label}", flush=True)
            extra = [] if rows is None else ["--chunk-rows", str(rows)]
            case = ["--vocab", str(vocab), "--tokens", str(tokens)]
            cmd = [sys.executable, "-m", "benchmarks.loss_bench", "--device", "cuda",
                   "--repeats", "3", *extra, *case]  # fmt: skip
            subprocess.run(cmd, cwd=ROOT, check=False)


def synthetic_responses(path: Path, n: int, prompt: int, response: int, vocab: int) -> None:
    """``n`` rows of random ids, as the responses stage writes them (lengths of the paper's
    longest responses: training memory grows with the padded length)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(0, vocab, (prompt + response,), generator=g).tolist()
        rows.append({"prompt_index": i, "prompt_ids": ids[:prompt], "response_ids": ids[prompt:]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def group_steps(
    raw: dict, target: str, arch: str, model: str, work: Path, steps: int = 2,
    response_tokens: int = 1024, vocab_size: int | None = None,
) -> None:  # fmt: skip
    """Run the first ``train_group`` job of (``target``, ``arch``) of config ``raw`` for
    ``steps`` optimizer steps on synthetic responses, in this process (step 4).

    The job is the one the rule writes: same config, same stage code; only the data (random
    ids), the step count and the draft vocabulary (its first ids: the memory is the same)
    are stand-ins.
    """
    from transformers import AutoConfig

    from specbench.config import load_config
    from specbench.jobs import Job, launch

    cfg = load_config(raw)
    vocab = vocab_size or AutoConfig.from_pretrained(model).vocab_size
    work.mkdir(parents=True, exist_ok=True)
    b = cfg.train.batch_size
    synthetic_responses(work / "train.jsonl", b, 128, response_tokens, vocab)
    size = vocab if cfg.vocab_for(arch) == "full" else min(cfg.data.draft_vocab_size, vocab)
    (work / "vocab.json").write_text(json.dumps({"draft_to_target": list(range(size))}))
    raw = json.loads(json.dumps(raw))
    raw["train"].update(steps=steps, checkpoint_every=0)
    raw["train"].pop("epochs", None)
    group = cfg.train_groups(target, arch)[0]
    runs = [{"loss": loss, "seed": s, "folder": f"d{i}"} for i, (loss, s) in enumerate(group)]
    launch(
        Job(
            "train_group", raw, {"target": target, "arch": arch, "group": "0"},
            {"responses": [str(work / "train.jsonl")], "vocab": str(work / "vocab.json")},
            {"group": str(work / "group")},
            params={"model": model, "runs": runs, "checkpoint": str(work / "ckpt")},
            ranks=1, gpus=1 if torch.cuda.is_available() else 0,
        )
    )  # fmt: skip


def paper_group_steps(work: Path) -> None:
    """Two steps of the first Llama-3.1-8B EAGLE-3 group, peak GPU memory measured."""
    raw = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    model = raw["targets"][PAPER_TARGET]["model"]
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model, local_files_only=True)
    except Exception as err:  # noqa: BLE001 (any miss: not in the cache)
        print(f"{model} is not in the Hugging Face cache ({type(err).__name__}): step 4 skipped")
        return
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    group_steps(raw, PAPER_TARGET, PAPER_ARCH, model, work / "paper-8b")
    peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    print(
        f"{PAPER_TARGET} {PAPER_ARCH} group, 2 steps in {time.perf_counter() - t0:.0f} s: "
        f"peak GPU memory {peak / 2**30:.1f} GiB allocated, {reserved / 2**30:.1f} GiB reserved"
    )
    from specbench.plan.__main__ import plan

    print("the planner's prediction for the same job (python -m specbench.plan):")
    row = {**raw, "targets": {PAPER_TARGET: raw["targets"][PAPER_TARGET]}}
    plan({**row, "draft_archs": [PAPER_ARCH]}, torch.cuda.mem_get_info()[1] / 2**30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "gpu-smoke")
    p.add_argument("--skip-matrix", action="store_true", help="steps 1, 3 and 4 only")
    args = p.parse_args()
    environment()
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to test")
        return
    if not args.skip_matrix:
        smoke_matrix(args.work)
    loss_bench()
    paper_group_steps(args.work)


if __name__ == "__main__":
    main()
