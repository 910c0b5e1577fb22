"""``python -m specbench.serving DRAFT_DIR --arch A --target T --cache C ...``: served τ.

Exports the trained draft in ``DRAFT_DIR``, serves it in vLLM (the serving venv) on the
prompts of the eval cache ``C`` at each ``--temperature``, and prints served τ (± its
prompt-clustered standard error) with vLLM's per-position acceptance; at T=0 also how many
continuations equal the cached greedy ones. With ``--per-prompt`` (the run's
``evaluate_draft`` ``per_prompt.csv``) it prints the replay / unbiased τ of the same draft
on the same prompts beside it, and the T=0 τ of both on the identical continuations only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from specbench.aggregation.stats import ratio_of_sums_se
from specbench.serving.served import serve_draft, served_tau


def estimates(per_prompt: pd.DataFrame, temperature: float, keep=None) -> str:
    """The evaluation's replay (T=0) or unbiased (T=1) τ on the same prompts."""
    pp = per_prompt[per_prompt["temperature"] == temperature]
    if keep is not None:
        pp = pp[pp["prompt_index"].isin(keep)]
    if temperature == 0:
        tau, se = ratio_of_sums_se(pp["accepted_sum"] + pp["rounds"], pp["rounds"])
        return f"replay {tau:.3f} ± {se:.3f} ({len(pp)} prompts)"
    tau, se = ratio_of_sums_se(pp["tau_unbiased_sum"], pp["unbiased_anchors"])
    return f"unbiased {tau:.3f} ± {se:.3f} ({len(pp)} prompts)"


def report(df: pd.DataFrame, k: int, per_prompt: pd.DataFrame | None) -> None:
    for t, g in df.groupby("temperature", sort=True):
        tau, se = served_tau(g)
        acc = [int(g[f"served_accepted_{j}"].sum()) for j in range(1, k + 1)]
        line = f"T={t}: served τ {tau:.3f} ± {se:.3f}; {int(g['served_drafts'].sum())} drafts"
        print(f"{line}, accepted per position {acc}")
        if per_prompt is not None and t in (0, 1):
            print(f"       {estimates(per_prompt, t)}")
        if t == 0 and "continuation_identical" in g:
            ident = g["continuation_identical"].fillna(False).astype(bool)
            same = g[ident]
            where = sorted(int(x) for x in g.loc[~ident, "first_difference"])
            print(f"       {len(same)}/{len(g)} continuations identical; others differ at {where}")
            if len(same):
                tau_s, se_s = served_tau(same)
                print(f"       on the identical ones: served {tau_s:.3f} ± {se_s:.3f}", end="")
                if per_prompt is not None:
                    print(f", {estimates(per_prompt, 0, set(same['prompt_index']))}", end="")
                print()


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m specbench.serving", description=__doc__)
    p.add_argument("draft_dir")
    p.add_argument("--arch", required=True)
    p.add_argument("--target", required=True, help="the target's local folder")
    p.add_argument("--cache", required=True, help="an eval feature cache (its prompts)")
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, action="append", required=True)
    p.add_argument("--draft-sample-method", default=None, help="greedy | probabilistic")
    p.add_argument("--samples", type=int, default=1, help="samples per prompt (T > 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fix-cpu-expand", action="store_true", help="our stand-in for vLLM's broken CPU kernel"
    )
    p.add_argument("--per-prompt", default=None, help="the draft's evaluate_draft per_prompt.csv")
    p.add_argument("--out", default=None, help="write the per-prompt served counters here")
    p.add_argument("--log", default=None, help="vLLM's output goes here")
    args = p.parse_args(argv)
    df, answer = serve_draft(
        args.draft_dir,
        args.arch,
        args.target,
        {"cli": args.cache},
        args.k,
        args.new_tokens,
        args.temperature,
        seed=args.seed,
        draft_sample_method=args.draft_sample_method,
        samples=args.samples,
        log=Path(args.log) if args.log else None,
        fix_cpu_expand=args.fix_cpu_expand,
    )
    if args.out:
        df.to_csv(args.out, index=False)
    per_prompt = pd.read_csv(args.per_prompt) if args.per_prompt else None
    for run in answer["runs"]:
        e = run["engine"]
        print(
            f"T={run['temperature']}: engine counters {e} ({run['generate_seconds']:.1f} s)",
            file=sys.stderr,
        )
    report(df, args.k, per_prompt)


if __name__ == "__main__":
    main(sys.argv[1:])
