"""Peak learning rate × steps on a finished run's caches (issue 9: how fast the drafts learn).

    python -m benchmarks.lr_sweep --arch eagle3 --lr 4e-4 1e-3 3e-3 [--steps 100] [--seeds 0 1]

After ``make run``: every (lr, steps, seed) trains one draft of ``--arch`` with ``--loss`` on
``results/features/<target>/<vocab>/train.safetensors`` (the config's other ``train``
settings as they are), then measures it on the run's own held-out caches with the matrix's
code: the exact T=0 replay (τ counts the bonus token) and teacher-forced T=1 expected τ, each
the mean over the domains. The drafts go to ``--out``; the rows print as they finish and the
last line is the table. One run per point: on this shared CPU, compare the τ, not the time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from specbench.config import load_config
from specbench.data.splits import eval_split
from specbench.decoding.evaluate import expected_tau_by_prompt, live_tau_by_prompt
from specbench.drafts import load_draft
from specbench.drafts.align import usable_k
from specbench.features.cache import FeatureCache
from specbench.targets.info import target_info_from_checkpoint
from specbench.targets.loading import load_tokenizer
from specbench.training.recipe import train_cell


def measure(draft, caches: dict[str, tuple], k: int, new_tokens: int, eos) -> dict:
    """Mean over domains of the T=0 replay τ and the T=1 teacher-forced expected τ;
    ``caches``: domain -> (T=0 cache, T=1 cache)."""
    t0, t1 = [], []
    for greedy, sampled in caches.values():
        rep = live_tau_by_prompt(
            draft, greedy, len(greedy), k, 0.0, new_tokens, 0, eos_token_id=eos
        )
        rounds = sum(s.rounds for s in rep.values())
        t0.append(1 + sum(s.accepted_sum for s in rep.values()) / rounds)
        exp = expected_tau_by_prompt(draft, sampled, k, 1.0)
        t1.append(
            sum(s.tau_expected_sum for s in exp.values()) / sum(s.anchors for s in exp.values())
        )
    return {"t0_replay": sum(t0) / len(t0), "t1_expected": sum(t1) / len(t1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--arch", default="eagle3")
    ap.add_argument("--loss", default="kl")
    ap.add_argument("--lr", type=float, nargs="+", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="results/bench/lr_sweep")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(yaml.safe_load(Path(args.config).read_text()))
    target = next(iter(cfg.targets))
    model = Path(args.results) / "targets" / target
    caches = Path(args.results) / "features" / target / cfg.vocab_for(args.arch)
    eos = load_tokenizer(str(model)).eos_token_id
    held_out = {  # read once: every point is measured on the same caches
        d: tuple(
            FeatureCache(caches / split / f"{d}.safetensors")
            for split in (eval_split(0), eval_split(1))
        )
        for d in cfg.domains
    }
    info = target_info_from_checkpoint(str(model), held_out[cfg.domains[0]][0].draft_to_target)
    rows = []
    for steps in args.steps:
        for lr in args.lr:
            for seed in args.seeds:
                train = cfg.train.model_copy(update={"lr": lr, "steps": steps, "epochs": None})
                out = Path(args.out) / f"{args.arch}_{args.loss}_lr{lr:g}_steps{steps}_seed{seed}"
                t = time.time()
                hp = cfg.hparams_for(next(iter(cfg.targets)), args.arch)
                train_cell(FeatureCache(caches / "train.safetensors"), info, args.arch, hp,
                           args.loss, seed, train, out, log=lambda *a: None)  # fmt: skip
                secs = time.time() - t
                draft = load_draft(out, info).eval()
                k = usable_k(draft, cfg.eval.k_for(args.arch))
                tau = measure(draft, held_out, k, cfg.eval.live_new_tokens, eos)
                row = {"arch": args.arch, "lr": lr, "steps": steps, "seed": seed, **tau}
                rows.append({**row, "train_s": round(secs)})
                print(rows[-1], flush=True)
    print(pd.DataFrame(rows).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
