"""Aggregate per-prompt evaluation sums into ``tau.csv`` and paired gains vs the baseline.

Every τ here is a ratio of sums over prompts — live τ = Σ(accepted + 1) / Σ rounds,
expected τ = Σ τ_anchor / Σ anchors — so standard errors use the ratio estimator's
linearisation clustered by prompt (rounds and positions within a prompt are correlated),
and gains are bootstrapped by resampling prompts, the same prompts for both losses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from specbench.aggregation.stats import paired_ratio_bootstrap, ratio_of_sums_se
from specbench.artifacts import EXTERNAL_PREFIX, EvalMetrics
from specbench.decoding import ESTIMATORS
from specbench.io import atomic_write_text

CELL = ["target", "draft_arch", "loss", "domain", "temperature", "seed"]


def measures() -> dict[str, tuple[str, str]]:
    """Every registered τ measure (a ratio of per-prompt sums): name -> (numerator column,
    denominator column), from :data:`specbench.decoding.ESTIMATORS`."""
    return {e.name: (e.numerator, e.denominator) for e in ESTIMATORS.values()}


def headlines() -> dict[int, str]:
    """The measure a table or plot leads with, per temperature (unbiased at T=1, the exact
    replay at T=0), from the estimators' ``headline``."""
    return {t: e.name for e in ESTIMATORS.values() for t in e.headline}


def headline(temperature: int, columns) -> str:
    """The headline measure of a temperature, or expected τ where it was not measured."""
    name = headlines().get(int(temperature), "tau_expected")
    return name if f"{name}_gain_pct" in columns or name in columns else "tau_expected"


def load_per_prompt(eval_dirs: list[str | Path]) -> pd.DataFrame:
    """Concatenate ``per_prompt.csv`` of every evaluated draft, tagged with its cell keys."""
    frames = []
    for d in map(Path, eval_dirs):
        meta = EvalMetrics.read(d / "metrics.json")
        df = pd.read_csv(d / "per_prompt.csv")
        for key in ("target", "draft_arch", "loss", "seed", "k_eval", "draft_params", "cost_ratio"):
            df[key] = getattr(meta, key)
        df["train_status"] = meta.train_status
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["accepted_plus_rounds"] = df["accepted_sum"].fillna(0) + df["rounds"].fillna(0)
    return df


def _with_measures(pp: pd.DataFrame) -> pd.DataFrame:
    """``pp`` with every measure's sum columns; a measure that did not run sums to zero."""
    missing = {c for pair in measures().values() for c in pair} - set(pp.columns)
    return pp.assign(**dict.fromkeys(sorted(missing), 0)) if missing else pp


def tau_table(pp: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, draft_arch, loss, domain, temperature, seed)."""
    pp, rows = _with_measures(pp), []
    for key, g in pp.groupby(CELL, sort=True):
        row = dict(zip(CELL, key, strict=True))
        row["origin"] = "external" if row["loss"].startswith(EXTERNAL_PREFIX) else "trained"
        # "complete", or "stopped: non-finite loss at step N" (kept and marked, not dropped)
        row["train_status"] = str(g["train_status"].iloc[0]) if "train_status" in g else "complete"
        for name, (num, den) in measures().items():
            row[name], row[f"{name}_se"] = ratio_of_sums_se(g[num].fillna(0), g[den].fillna(0))
        k = int(g["k_eval"].iloc[0])
        row.update(
            k_eval=k,
            n_prompts=int((g["anchors"] > 0).sum()),
            n_positions=int(g["anchors"].sum()),
            n_live_prompts=int((g["rounds"].fillna(0) > 0).sum()),
            n_rounds=int(g["rounds"].fillna(0).sum()),
            n_tokens=int(g["tokens"].fillna(0).sum()),
            wall_seconds=float(g["wall_seconds"].fillna(0).sum()),
            draft_params=int(g["draft_params"].iloc[0]),
            cost_ratio=float(g["cost_ratio"].iloc[0]),
        )
        # share of the held-out response tokens the draft vocabulary can propose at all: a
        # truncated vocabulary caps α at this (SPEC §3)
        if "in_vocab" in g:
            row["vocab_coverage"] = float(g["in_vocab"].sum() / max(row["n_positions"], 1))
        # MBSU (mean block-size utilisation, SPEC §4): τ per unit of verification cost,
        # τ / (K·c + 1) with c = draft FLOPs per step / target FLOPs per token; 1 = target
        # alone. τ is the temperature's headline (the unbiased estimate at T=1, not the few
        # live prompts; the exact replay at T=0)
        lead = headline(row["temperature"], [n for n in row if pd.notna(row[n])])
        row["mbsu"] = row[lead] / (k * row["cost_ratio"] + 1)
        for j in range(1, k + 1):  # conditional acceptance a_j = accepted_j / reached_j
            reached = g.get(f"reached_{j}", pd.Series(dtype=float)).fillna(0).sum()
            acc = g.get(f"accepted_{j}", pd.Series(dtype=float)).fillna(0).sum()
            row[f"a_{j}"] = acc / reached if reached else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def gains_table(pp: pd.DataFrame, baseline: str, n_boot: int = 2000) -> pd.DataFrame:
    """Δτ% of each loss vs ``baseline`` per (target, arch, domain, temperature).

    Paired: the same prompts (and, for expected τ, the same positions) for both losses;
    seeds are pooled in the bootstrap (prompt × seed sums) and their spread is reported
    separately as the mean ± std of the per-seed Δ%.
    """
    pp, rows = _with_measures(pp), []
    group = ["target", "draft_arch", "domain", "temperature"]
    for key, g in pp.groupby(group, sort=True):
        base = g[g["loss"] == baseline]
        for loss, gl in g.groupby("loss", sort=True):
            if loss == baseline or base.empty:
                continue
            row = dict(zip(group, key, strict=True), loss=loss, baseline=baseline)
            # a draft of either side that stopped early (non-finite loss): the row says so
            status = pd.concat([base, gl]).get("train_status", pd.Series(dtype=str))
            stopped = sorted({str(x) for x in status if str(x).startswith("stopped")})
            row["train_status"] = "; ".join(stopped) or "complete"
            for name, (num, den) in measures().items():
                cols = ["seed", "prompt_index"]
                m = base.merge(gl, on=cols, suffixes=("_a", "_b"))
                m = m[(m[f"{den}_a"].fillna(0) > 0) & (m[f"{den}_b"].fillna(0) > 0)]
                if m.empty:
                    continue
                a_num, a_den, b_num, b_den = (
                    m[c].to_numpy(float) for c in (f"{num}_a", f"{den}_a", f"{num}_b", f"{den}_b")
                )
                est, lo, hi = paired_ratio_bootstrap(a_num, a_den, b_num, b_den, n_boot, seed=0)
                n_prompts = int(m["prompt_index"].nunique())
                if n_prompts < 2:  # resampling one prompt has no spread: no CI, not a 0-wide one
                    lo = hi = float("nan")
                per_seed = [
                    100.0
                    * (
                        (s[f"{num}_b"].sum() / s[f"{den}_b"].sum())
                        / (s[f"{num}_a"].sum() / s[f"{den}_a"].sum())
                        - 1.0
                    )
                    for _, s in m.groupby("seed")
                ]
                row.update(
                    {
                        f"{name}_gain_pct": est,
                        f"{name}_ci_lo": lo,
                        f"{name}_ci_hi": hi,
                        f"{name}_seed_mean": float(np.mean(per_seed)),
                        f"{name}_seed_std": float(np.std(per_seed, ddof=1))
                        if len(per_seed) > 1
                        else float("nan"),
                        f"{name}_n_prompts": n_prompts,
                    }
                )
            rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else [*group, "loss", "baseline"])


def gains_markdown(gains: pd.DataFrame, note: str = "") -> str:
    """A readable table: Δτ% [95% CI] per loss, expected τ and live τ side by side."""
    if gains.empty:
        return (
            "# Δτ% vs the baseline loss\n\n" + note + "\n\nNothing to compare: the matrix "
            "has one loss (the baseline), so there are no gains; τ per cell is in tau.csv.\n"
        )

    def fmt(r, name):
        if pd.isna(r.get(f"{name}_gain_pct", float("nan"))):
            return "–"
        if pd.isna(r[f"{name}_ci_lo"]):
            return f"{r[f'{name}_gain_pct']:+.1f} (1 prompt: no CI)"
        return (
            f"{r[f'{name}_gain_pct']:+.1f} [{r[f'{name}_ci_lo']:+.1f}, {r[f'{name}_ci_hi']:+.1f}]"
        )

    lines = [
        "# Δτ% vs the baseline loss (τ counts the bonus token)",
        "",
        note,
        "",
        "Headline Δτ: the unbiased branch-verified estimate at T=1 (`tau_unbiased`), the "
        "exact greedy replay at T=0 (`tau_live`). Expected τ: teacher-forced, every position "
        "of the held-out responses (biased at T=1 beyond draft step 1). Live τ: exact "
        "speculative decoding (T=1) / exact greedy replay (T=0). Brackets: paired 95% "
        "bootstrap CI over prompts, seeds pooled.",
        "",
        "| target | draft | domain | T | loss | Δτ % (headline) | Δτ_expected % | Δτ_live % "
        "| seed std (headline) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in gains.iterrows():
        lead = headline(r["temperature"], r.dropna().index)
        std = r.get(f"{lead}_seed_std", float("nan"))
        stop = " (a draft stopped early)" if r.get("train_status", "complete") != "complete" else ""
        lines.append(
            f"| {r['target']} | {r['draft_arch']} | {r['domain']} | {r['temperature']} | "
            f"{r['loss']}{stop} | {fmt(r, lead)} ({lead}) | {fmt(r, 'tau_expected')} | "
            f"{fmt(r, 'tau_live')} | {'–' if pd.isna(std) else f'{std:.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(
    eval_dirs: list[str | Path],
    baseline: str,
    n_boot: int,
    note: str,
    tau_csv: str | Path,
    gains_csv: str | Path,
    gains_md: str | Path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``tau.csv``, ``gains.csv`` and ``gains.md`` of a matrix's evaluated drafts (atomic).

    A matrix with only the baseline loss has no gains: ``gains.csv`` is then a header-only
    table and ``gains.md`` says so.
    """
    pp = load_per_prompt(eval_dirs)
    tau, gains = tau_table(pp), gains_table(pp, baseline, n_boot)
    atomic_write_text(tau_csv, tau.to_csv(index=False))
    atomic_write_text(gains_csv, gains.to_csv(index=False))
    atomic_write_text(gains_md, gains_markdown(gains, f"Config: {note}"))
    return tau, gains
