"""One draft training step in fp32 vs bf16 autocast on this CPU, and what ``auto`` picks here.

    python -m benchmarks.train_step_bench [--arch eagle3] [--repeats 5] [--threads 1]

A SmolLM2-135M-shaped target (hidden 576, 9 heads, 3 KV heads, 49,152-token vocabulary; two
random layers: only its config, embedding and head matter to a draft) and the embedded
default's batch (8 sequences of 136 tokens, a 2,048-token draft vocabulary, K = 6, the
default's ``arch_hparams``). A step is ``align`` + the ``kl`` loss + backward + AdamW, the
trainer's inner loop. Repeats alternate fp32 and bf16; the ratio is the median of
per-repeat ratios, from one run (machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specbench.drafts import build_draft
from specbench.drafts.align import align
from specbench.features.vocab import target_to_draft_map
from specbench.losses import build as build_loss
from specbench.targets.info import target_info_from_model
from specbench.training.precision import choose_precision

HPARAMS = {"eagle3": {"intermediate_size": 512, "train_anchors": 16}, "medusa": {}}


def batch(b: int, length: int, d: int, vd: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "features": torch.randn(b, length, 4, d, generator=g),
        "input_ids": torch.randint(0, vocab, (b, length), generator=g),
        "attention_mask": torch.ones(b, length, dtype=torch.bool),
        "loss_mask": torch.ones(b, length, dtype=torch.bool),
        "logprobs": torch.randn(b, length, vd, generator=g).log_softmax(-1) - 0.1,
        "target_argmax": torch.randint(0, vocab, (b, length), generator=g),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="eagle3", choices=sorted(HPARAMS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3,
                      tie_word_embeddings=True)  # fmt: skip
    d2t = torch.arange(0, 49152, 24)  # 2,048 draft ids
    info = target_info_from_model(LlamaForCausalLM(cfg).eval(), d2t)
    draft = build_draft(args.arch, info, **HPARAMS[args.arch]).train()
    t2d = target_to_draft_map(d2t, 49152)
    data, loss_fn = batch(8, 136, 576, d2t.numel(), 49152), build_loss("kl")
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=4e-4)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            st = align(draft, data, 6, t2d, torch.Generator().manual_seed(1))
        loss = loss_fn(draft_logits=st.logits, target_logits=st.target_logprobs,
                       mask=st.mask, labels=st.labels)  # fmt: skip
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up
    fp32, bf16 = [], []
    for _ in range(args.repeats):
        fp32.append(step(False))
        bf16.append(step(True))
    ratio = statistics.median(b / f for b, f in zip(bf16, fp32, strict=True))
    print(f"{args.arch}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"fp32 step {statistics.median(fp32):.3f} s | bf16 autocast step "
          f"{statistics.median(bf16):.3f} s | bf16/fp32 {ratio:.2f}")  # fmt: skip
    print(f"train.autocast: auto on this machine -> {choose_precision('auto', 'cpu')}")


if __name__ == "__main__":
    main()
