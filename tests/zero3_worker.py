"""One rank of the ZeRO-3 equality checks; driven by tests/test_zero3.py in a subprocess.

Usage: ``python tests/zero3_worker.py SPEC.json`` (single process: no launcher env needed)
or under ``torch.distributed.run --nproc_per_node N``. ``SPEC.json`` holds ``models``
(name -> checkpoint dir), optional ``fp8`` ({src, dequantized_dir}), ``offload`` (names to
load with ``offload_param: cpu``) and ``out`` (a folder). Each rank writes
``out/rank<R>.json``: per model, the max abs differences between the ZeRO-3 target and plain
transformers, so that the test process asserts and reports them. All models share one
process (one interpreter start and one process group for all of them).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from specbench.dist import Lockstep, lockstep_batches, rank_and_world
from specbench.drafts.base import DraftSession
from specbench.targets.loading import load_target
from specbench.targets.runner import TargetRunner
from specbench.targets.zero3 import shutdown, zero3_target_info


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _batches(vocab: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (ids [2, L], mask) batches, identical on every rank; row 1 is left-padded."""
    gen = torch.Generator().manual_seed(1234)
    out = []
    for i in range(n):
        length = 6 + 2 * i
        ids = torch.randint(0, vocab, (2, length), generator=gen)
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, : i + 1] = 0
        out.append((ids, mask))
    return out


def check_forward(zr: TargetRunner, pr: TargetRunner, rank: int, world: int) -> dict:
    """Batched forwards (with padding masks) over this rank's lockstep share of the items."""
    res = {"logits": 0.0, "features": 0.0, "real": 0, "padded": 0}
    for (ids, mask), real in lockstep_batches(_batches(zr.vocab_size, 2 * world + 1), rank, world):
        z = zr.forward(ids, attention_mask=mask, use_cache=False)
        if not real:
            res["padded"] += 1
            continue
        p = pr.forward(ids, attention_mask=mask, use_cache=False)
        keep = mask.bool()  # positions of padding are not compared
        res["logits"] = max(res["logits"], _max_diff(z.logits[keep], p.logits[keep]))
        res["features"] = max(res["features"], _max_diff(z.features[keep], p.features[keep]))
        res["real"] += 1
    return res


def check_kv_cache(zmod: torch.nn.Module, pr: TargetRunner, rank: int) -> dict:
    """Prefill + cached chunks through the ZeRO-3 module vs one full plain forward.

    The number of chunks depends on the rank, so the ranks run different numbers of
    forwards: :class:`Lockstep` with ``drain`` must keep them in step.
    """
    lock = Lockstep(zmod)
    zr = TargetRunner(lock)
    chunks = [3, 1, 2, 1][: 2 + rank % 3]  # verification-like chunks (k+1 tokens), then 1s
    gen = torch.Generator().manual_seed(99 + rank)
    seq = torch.randint(0, zr.vocab_size, (1, 5 + sum(chunks)), generator=gen)
    step = zr.forward(seq[:, :5])
    logits, feats, cache, pos = [step.logits], [step.features], step.past_key_values, 5
    for n in chunks:
        step = zr.forward(seq[:, pos : pos + n], past_key_values=cache)
        logits.append(step.logits)
        feats.append(step.features)
        cache, pos = step.past_key_values, pos + n
    full = pr.forward(seq, use_cache=False)
    return {
        "logits": _max_diff(torch.cat(logits, 1), full.logits),
        "features": _max_diff(torch.cat(feats, 1), full.features),
        "forwards": 1 + len(chunks),
        "drained": lock.drain(),
    }


class NoisyOracleSession(DraftSession):
    """Test draft with partial acceptance: greedy continuation of a plain copy of the target,
    with every third drafted position (by absolute index) replaced by a wrong token."""

    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor) -> None:
        self.model, self.tokens = model, prompt[:1].tolist()

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.tokens += next_tokens.tolist()

    @torch.no_grad()
    def propose(self, k: int, sample_fn) -> tuple[torch.Tensor, torch.Tensor]:
        seq = list(self.tokens)
        for _ in range(k):
            nxt = int(self.model(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append((nxt + 1) % self.model.config.vocab_size if len(seq) % 3 == 0 else nxt)
        ids = torch.tensor(seq[len(self.tokens) :])
        return ids, 10.0 * torch.nn.functional.one_hot(ids, self.model.config.vocab_size)


def check_speculative(zmod, plain, rank: int) -> dict:
    """T=0 decoding through the ZeRO-3 target and the plain one: same tokens, same τ.

    Drafts: MEDUSA from :mod:`specbench.drafts` (built from :func:`zero3_target_info` vs
    ``target_info_from_model``), and a noisy oracle that gets some rounds partly accepted.
    The prompt length depends on the rank, so ranks run different numbers of forwards.
    """
    try:
        from specbench.decoding.speculative import speculative_decode
        from specbench.drafts import build_draft
        from specbench.targets.info import target_info_from_model
    except ImportError as err:  # the decoding/draft modules are not there yet
        return {"skipped": f"{type(err).__name__}: {err}"}
    zinfo, pinfo = zero3_target_info(zmod), target_info_from_model(plain)
    out: dict = {
        "info": max(
            _max_diff(zinfo.embed_tokens, pinfo.embed_tokens),
            _max_diff(zinfo.lm_head, pinfo.lm_head),
        )
    }
    lock = Lockstep(zmod)
    gen = torch.Generator().manual_seed(rank)
    prompt = torch.randint(0, pinfo.vocab_size, (4 + 3 * rank,), generator=gen)
    for draft_name in ("medusa", "oracle"):
        for target, info, runner in (
            ("zero3", zinfo, TargetRunner(lock)),
            ("plain", pinfo, TargetRunner(plain)),
        ):
            torch.manual_seed(7)  # same draft weights for both targets
            if draft_name == "medusa":
                session = build_draft("medusa", info, num_heads=3).eval().start_session()
            else:
                session = NoisyOracleSession(plain, prompt)
            res = speculative_decode(
                runner, session, info.draft_to_target, prompt, 12 + 4 * rank, k=3,
                temperature=0.0, generator=torch.Generator().manual_seed(3),
            )  # fmt: skip
            out[f"{draft_name}/{target}"] = {
                "tau": res.tau, "tokens": res.tokens, "accepted": res.accepted,
            }  # fmt: skip
    out["drained"] = lock.drain()
    return out


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    results: dict = {}
    for name, path in spec["models"].items():
        t0 = time.perf_counter()
        zero3 = {"offload_param": "cpu"} if name in spec.get("offload", []) else {}
        zmod = load_target(path, engine="zero3", dtype="float32", zero3=zero3)
        plain = load_target(path)  # after the ZeRO-3 load: checks it did not leak zero.Init
        rank, world = rank_and_world()
        zr, pr = TargetRunner(zmod), TargetRunner(plain)
        results[name] = {
            "forward": check_forward(zr, pr, rank, world),
            "kv_cache": check_kv_cache(zmod, pr, rank),
            "plain_partitioned": any(hasattr(p, "ds_id") for p in plain.parameters()),
        }
        if name in spec.get("speculative", []):
            results[name]["speculative"] = check_speculative(zmod, plain, rank)
        results[name]["seconds"] = time.perf_counter() - t0
    if spec.get("fp8"):
        from transformers import AutoModelForCausalLM, FineGrainedFP8Config

        fp8 = spec["fp8"]
        settings = {"dequantized_dir": fp8["dequantized_dir"]}
        zmod = load_target(fp8["src"], engine="zero3", dtype="bfloat16", zero3=settings)
        ref = AutoModelForCausalLM.from_pretrained(  # transformers' own FP8 dequantizer
            fp8["src"], dtype=torch.bfloat16,
            quantization_config=FineGrainedFP8Config(dequantize=True),
        ).eval()  # fmt: skip
        ids, _ = _batches(ref.config.vocab_size, 1)[0]
        with torch.no_grad():
            results["fp8"] = {"logits": _max_diff(zmod(ids).logits, ref(ids).logits)}
    results["world"] = rank_and_world()[1]
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank_and_world()[0]}.json").write_text(json.dumps(results, indent=1))
    shutdown()
    # results are on disk: skip interpreter teardown, where DeepSpeed/gloo background
    # threads were seen to abort ("terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
