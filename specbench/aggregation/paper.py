"""The papers' figures, with our measurements beside the published numbers.

Published τ (``paper_figures/reference``, transcribed from the papers) is turned into the
same Δτ%-vs-KL the matrix measures, so the *shape* can be compared: which loss wins, by how
much, and how that depends on draft capacity and temperature. Our targets differ from the
paper's (the embedded default is a 135M model), so levels are not expected to match.

The released drafts (``released_drafts_tau.csv``, the LK authors' model cards) are compared
in levels instead: the same checkpoints evaluated here as external drafts
(``configs/released.yaml``), our τ beside the card's.

The TVD++ paper (``tvdpp_block_efficiency.csv``) is compared both ways for ``draft_lm``: its
Δ% vs KLD per loss and its block efficiency, beside ours (``configs/tvdpp.yaml``); only its
abstract's "up to 2.3" could be transcribed so far, drawn as a level.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from specbench.aggregation.tables import headline, headlines, measures  # noqa: E402
from specbench.artifacts import EXTERNAL_PREFIX  # noqa: E402
from specbench.io import atomic_dir, atomic_write_text  # noqa: E402
from specbench.losses import parse  # noqa: E402

# our loss specs that correspond to the paper's row labels
PAPER_LOSS = {
    "kl": "kl",
    "tv": "tv",
    "lk_alpha": "lk_alpha",
    "lk_lambda": "lk_lambda_eta3",
    "lk_lambda(eta=10)": "lk_lambda_eta10",
    "lk_lambda(fixed=0.5)": "lk_lambda_fixed0.5",
}


def reference_gains(ref: pd.DataFrame) -> pd.DataFrame:
    """Δτ% of each published loss vs the same cell's published ``kl``."""
    keys = ["target", "draft_arch", "temperature", "domain"]
    base = ref[ref["loss"] == "kl"].set_index(keys)["tau"]
    out = ref[ref["loss"] != "kl"].copy()
    out["kl_tau"] = out.set_index(keys).index.map(base)
    out = out.dropna(subset=["kl_tau"])
    out["gain_pct"] = 100.0 * (out["tau"] / out["kl_tau"] - 1.0)
    return out


def ours_by_paper_label(gains: pd.DataFrame, measure: str | None = None) -> pd.DataFrame:
    """Our gains, mean over domains, keyed by the paper's loss label.

    ``measure``: default each temperature's headline (unbiased τ at T=1, the replay at T=0).
    """
    keys = ["draft_arch", "temperature", "paper_loss"]
    g = gains[gains["loss"].isin(PAPER_LOSS)].copy() if "loss" in gains else gains.iloc[:0]
    if g.empty:  # a one-loss matrix: nothing measured vs KL
        return pd.DataFrame(columns=[*keys, "gain_pct"])
    g["paper_loss"] = g["loss"].map(PAPER_LOSS)
    g["gain_pct"] = [
        r[f"{measure or headline(r['temperature'], r.dropna().index)}_gain_pct"]
        for _, r in g.iterrows()
    ]
    return g.groupby(keys)["gain_pct"].mean().reset_index()


def figure_lk_gains(ref: pd.DataFrame, gains: pd.DataFrame, path: str) -> pd.DataFrame:
    """Fig.: Δτ% vs KL per draft arch at T=0/1 — paper (mean over targets/domains) vs ours."""
    pg = (
        reference_gains(ref)
        .groupby(["draft_arch", "temperature", "loss"])["gain_pct"]
        .mean()
        .rename("paper_gain_pct")
        .reset_index()
        .rename(columns={"loss": "paper_loss"})
    )
    ours = ours_by_paper_label(gains).rename(columns={"gain_pct": "our_gain_pct"})
    # the LK paper's architectures only (draft_lm has its own figure, tvdpp_vs_paper)
    ours = ours[ours["draft_arch"].isin(set(pg["draft_arch"]))]
    both = pg.merge(ours, on=["draft_arch", "temperature", "paper_loss"], how="outer")
    panels = list(both.groupby(["draft_arch", "temperature"], sort=True))
    # rows of at most 4 panels (one per arch at T=0 and T=1, two archs a row): one row of the
    # paper's 4 archs × 2 temperatures is too wide to read where it is shown scaled to a page
    cols = min(4, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.8 * rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(panels) :]:
        ax.axis("off")
    for ax, ((arch, temp), g) in zip(axes, panels, strict=False):
        x = np.arange(len(g))
        ax.bar(x - 0.2, g["paper_gain_pct"], 0.4, label="paper (published)")
        ax.bar(x + 0.2, g["our_gain_pct"], 0.4, label="ours (measured)")
        ax.set_xticks(x, g["paper_loss"], rotation=45, ha="right", fontsize=7)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{arch}, T={temp}", fontsize=9)
        ax.set_ylabel("Δτ vs KL [%]")
    axes[0].legend(fontsize=7)
    fig.suptitle("LK losses: τ gain over KL (τ includes the bonus token)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return both


def block_label(spec: str) -> str:
    """The block-diffusion paper's label of a loss spec: its terms' names, parameters
    dropped (``ce+decay(gamma=7)+focal`` → ``ce+decay+focal``); ``ce`` alone is the paper's
    position-uniform baseline ``ce_uniform``."""
    names = "+".join(term.name for term in parse(spec))
    return "ce_uniform" if names == "ce" else names


def block_interventions_table(ref_block: pd.DataFrame, tau: pd.DataFrame) -> pd.DataFrame:
    """One row per label: the published τ (Llama-3-8B, mean of 6 benchmarks) and ours
    (``tau_expected``, mean over the block drafts of that label), matched by name. The
    paper's labels come first in its order; ours without a published value follow."""
    avg = ref_block[ref_block["benchmark"] == "avg6"]
    paper = avg.groupby("loss", sort=False)["tau"].mean().rename("paper_tau")
    block = tau[tau["draft_arch"] == "block_diffusion"]
    ours = block.groupby(block["loss"].map(block_label))["tau_expected"].mean().rename("our_tau")
    table = pd.concat([paper, ours], axis=1)  # paper's order, then ours not in it
    return table.rename_axis("label").reset_index()


def figure_block_interventions(ref_block: pd.DataFrame, tau: pd.DataFrame, path: str) -> None:
    """Fig.: block-drafter interventions stacked — published τ, and ours where measured."""
    table = block_interventions_table(ref_block, tau)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["paper_tau"], 0.4, label="paper (Llama-3-8B, avg of 6)")
    if table["our_tau"].notna().any():
        ax.bar(x + 0.2, table["our_tau"], 0.4, label="ours (expected τ)")
    ax.set_xticks(x, table["label"], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("τ (bonus token included)")
    ax.legend(fontsize=8)
    ax.set_title("Block-diffusion drafter interventions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# the TVD++ paper's losses in our names (KLD, TVD, TVD++), in its order; ours beside them
TVDPP_LOSSES = ("kl", "tv", "tvdpp")
TVDPP_GAMMA = 3  # the paper rows compared: γ = 3, our configs/tvdpp.yaml's eval K
TVDPP_COLUMNS = [
    "loss", "temperature", "paper_gain_pct", "paper_tasks", "paper_block_efficiency",
    "our_gain_pct", "our_ci_lo", "our_ci_hi", "our_domains", "our_tau", "note",
]  # fmt: skip


def _temperatures(values: pd.Series) -> pd.Series:
    """A temperature column as numbers (NaN where the paper states none)."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def tvdpp_reference(ref: pd.DataFrame, gamma: int = TVDPP_GAMMA) -> pd.DataFrame:
    """The paper's rows per (loss, temperature) at ``gamma``: the block efficiency (mean over
    its tasks) and its Δ% vs the same (target, task, temperature) cell's ``kl``, mean over
    the tasks that have both. Rows without a loss (the abstract's "up to 2.3") are levels,
    not a comparison: :func:`tvdpp_headlines`."""
    cols = ["loss", "temperature", "paper_gain_pct", "paper_tasks", "paper_block_efficiency"]
    need = {"target", "loss", "task", "gamma", "temperature", "block_efficiency"}
    if ref.empty or not need <= set(ref):
        return pd.DataFrame(columns=cols)
    r = ref.dropna(subset=["block_efficiency", "loss"]).copy()
    r = r[pd.to_numeric(r["gamma"], errors="coerce") == gamma]
    if r.empty:
        return pd.DataFrame(columns=cols)
    r["temperature"] = _temperatures(r["temperature"])
    keys = ["target", "task", "temperature"]
    cell = r[keys].astype(str).agg("|".join, axis=1)  # NaN temperature matches NaN
    base = pd.Series(r["block_efficiency"].to_numpy(), index=cell)[r["loss"].eq("kl").to_numpy()]
    r["kl_be"] = cell.map(base[~base.index.duplicated()])
    r["gain"] = np.where(
        r["loss"].eq("kl"), np.nan, 100.0 * (r["block_efficiency"] / r["kl_be"] - 1.0)
    )
    g = r.groupby(["loss", "temperature"], dropna=False, sort=False)
    out = pd.DataFrame({
        "paper_gain_pct": g["gain"].mean(),
        "paper_tasks": g["gain"].count(),
        "paper_block_efficiency": g["block_efficiency"].mean(),
    }).reset_index()  # fmt: skip
    return out[cols]


def tvdpp_headlines(ref: pd.DataFrame) -> pd.DataFrame:
    """The paper's levels that name no loss (the abstract's "up to 2.3"): drawn as lines."""
    if ref.empty or "block_efficiency" not in ref:
        return pd.DataFrame(columns=["block_efficiency", "note"])
    no_loss = ref["loss"].isna() if "loss" in ref else pd.Series(True, index=ref.index)
    rows = ref[no_loss & ref["block_efficiency"].notna()]
    note = rows["note"] if "note" in rows else pd.Series("", index=rows.index)
    return pd.DataFrame({"block_efficiency": rows["block_efficiency"], "note": note})


def _at_headline(df: pd.DataFrame, suffix: str = "") -> pd.Series:
    """Per row, the value of its temperature's headline measure (``suffix``: e.g. its gain,
    ``_gain_pct``, or CI bound, ``_ci_lo``); NaN where the row lacks it."""

    def one(r: pd.Series) -> float:
        return r.get(headline(r["temperature"], r.dropna().index) + suffix, np.nan)

    return df.apply(one, axis=1) if len(df) else pd.Series(dtype=float)


def tvdpp_ours(tau: pd.DataFrame, gains: pd.DataFrame, arch: str = "draft_lm") -> pd.DataFrame:
    """Our ``arch`` drafts per (loss, temperature): Δτ% vs the baseline (each temperature's
    headline measure, mean over targets and domains) with the mean of the per-domain 95% CI
    bounds (conservative: wider than the CI of a mean over independent domains), and τ
    itself (the same measure, mean over targets, domains and seeds)."""
    keys = ["loss", "temperature"]
    cols = [*keys, "our_gain_pct", "our_ci_lo", "our_ci_hi", "our_domains", "our_tau"]
    frames = []
    g = gains[gains["draft_arch"] == arch] if {"draft_arch", "loss"} <= set(gains) else gains[:0]
    if not g.empty:
        g = g.copy()
        for col, suffix in (("our_gain_pct", "_gain_pct"), ("our_ci_lo", "_ci_lo"),
                            ("our_ci_hi", "_ci_hi")):  # fmt: skip
            g[col] = _at_headline(g, suffix)
        g["temperature"] = _temperatures(g["temperature"])
        agg = g.groupby(keys, sort=False).agg(
            our_gain_pct=("our_gain_pct", "mean"), our_ci_lo=("our_ci_lo", "mean"),
            our_ci_hi=("our_ci_hi", "mean"), our_domains=("domain", "nunique"),
        )  # fmt: skip
        frames.append(agg)
    t = tau[tau["draft_arch"] == arch] if {"draft_arch", "loss"} <= set(tau) else tau[:0]
    if not t.empty:
        t = t.copy()
        t["our_tau"] = _at_headline(t)
        t["temperature"] = _temperatures(t["temperature"])
        frames.append(t.groupby(keys, sort=False)[["our_tau"]].mean())
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, axis=1).reset_index()
    return out.reindex(columns=cols)


def tvdpp_table(ref: pd.DataFrame, tau: pd.DataFrame, gains: pd.DataFrame) -> pd.DataFrame:
    """One row per (loss, temperature): the paper's Δ% vs KLD and block efficiency (γ = 3,
    mean over its tasks) beside our draft_lm's Δτ% vs kl (with CI) and τ; the paper's
    losses first in its order (KLD, TVD, TVD++), ours without a published value after; the
    paper's loss-less levels (the abstract's "up to") as rows of their own, loss empty."""
    paper, ours = tvdpp_reference(ref), tvdpp_ours(tau, gains)
    for df in (paper, ours):  # empty frames have object columns: merge needs the same types
        df["temperature"] = _temperatures(df["temperature"])
        df["loss"] = df["loss"].astype(object)
    both = paper.merge(ours, on=["loss", "temperature"], how="outer")
    both["note"] = ""
    order = {loss: i for i, loss in enumerate(TVDPP_LOSSES)}
    both["_order"] = both["loss"].map(lambda x: order.get(x, len(order)))
    both = both.sort_values(["_order", "loss", "temperature"]).drop(columns="_order")
    heads = tvdpp_headlines(ref)
    levels = pd.DataFrame({"paper_block_efficiency": heads["block_efficiency"],
                           "note": heads["note"]})  # fmt: skip
    frames = [f for f in (both, levels) if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else both
    return out.reindex(columns=TVDPP_COLUMNS).reset_index(drop=True)


def figure_tvdpp(table: pd.DataFrame, path: str) -> None:
    """Fig.: per temperature, Δτ% vs KL per loss (paper at γ = 3 beside our draft_lm, with
    our 95% CI) above τ itself (ours; the paper's per-loss levels and its abstract's
    "up to" as a dashed line)."""
    per_loss = table[table["loss"].notna()]
    levels = table[table["loss"].isna()]["paper_block_efficiency"].dropna()
    temps = sorted(per_loss["temperature"].dropna().unique()) or [0.0, 1.0]
    if per_loss["temperature"].isna().any():
        temps.append(np.nan)  # paper rows whose temperature the paper does not state
    fig, axes = plt.subplots(2, len(temps), figsize=(4.4 * len(temps), 7.0), squeeze=False)
    for j, temp in enumerate(temps):
        top, bottom = axes[0][j], axes[1][j]
        if pd.isna(temp):
            g, title = per_loss[per_loss["temperature"].isna()], "T not stated (paper)"
        else:
            g, title = per_loss[per_loss["temperature"] == temp], f"T={temp:g}"
        x = np.arange(len(g))
        ours = pd.to_numeric(g["our_gain_pct"], errors="coerce").to_numpy(float)
        lo = ours - pd.to_numeric(g["our_ci_lo"], errors="coerce").to_numpy(float)
        hi = pd.to_numeric(g["our_ci_hi"], errors="coerce").to_numpy(float) - ours
        err = np.nan_to_num(np.vstack([lo, hi]), nan=0.0)
        paper = pd.to_numeric(g["paper_gain_pct"], errors="coerce")
        top.bar(x - 0.2, paper, 0.4, color="C0", label="paper (published, γ = 3)")
        top.bar(x + 0.2, ours, 0.4, yerr=err, capsize=2, color="C1",
                label="ours: draft_lm (95% CI)")  # fmt: skip
        top.axhline(0, color="black", lw=0.8)
        top.set_ylabel("Δτ vs KL [%]")
        top.set_title(title, fontsize=9)
        paper_tau = pd.to_numeric(g["paper_block_efficiency"], errors="coerce")
        our_tau = pd.to_numeric(g["our_tau"], errors="coerce")
        bottom.bar(x - 0.2, paper_tau, 0.4, color="C0", label="paper (published)")
        bottom.bar(x + 0.2, our_tau, 0.4, color="C1", label="ours")
        top_tau = np.nanmax([*paper_tau, *our_tau, *levels, 1.0])
        bottom.set_ylim(0, 1.15 * top_tau)
        for level in levels:
            bottom.axhline(level, ls="--", color="grey", lw=1)
            bottom.text(0.01, level, f" paper's abstract: up to {level:g}", fontsize=7,
                        va="bottom", transform=bottom.get_yaxis_transform())  # fmt: skip
        bottom.set_ylabel("τ (bonus token included)")
        for ax in (top, bottom):
            ax.set_xticks(x, list(g["loss"]), rotation=30, ha="right", fontsize=8)
        if not len(g):
            top.text(0.5, 0.5, "no draft_lm rows, no per-loss\npaper numbers", ha="center",
                     va="center", transform=top.transAxes, fontsize=8)  # fmt: skip
    if len(per_loss):  # no bars, no legend (an empty bar series has no colour to show)
        axes[0][0].legend(fontsize=7)
        axes[1][0].legend(fontsize=7, loc="lower right")
    if per_loss["paper_gain_pct"].isna().all():
        fig.text(0.5, 0.01, "No per-loss numbers of the paper transcribed (its tables were not "
                 "read): paper_figures/reference/README.md", ha="center", fontsize=8)  # fmt: skip
    fig.suptitle("TVD++ paper (Llama 2 Chat 7B, 115M drafter) vs our draft_lm")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _released_measures(temperature: int) -> tuple[str, ...]:
    """The measures shown beside a model card's τ at a temperature (the headline first)."""
    name = headlines().get(temperature)
    return (name, "tau_expected") if name else tuple(measures())


def _mean_se(values: pd.Series, ses: pd.Series) -> tuple[float, float]:
    """Mean of ``n`` independent estimates and its SE, ``sqrt(Σ se_i²) / n`` (NaN-skipping:
    over the estimates measured; SE NaN when any of them has none)."""
    keep = values.notna()
    n = int(keep.sum())
    if n == 0:
        return float("nan"), float("nan")
    return float(values[keep].mean()), float(np.sqrt((ses[keep] ** 2).sum(min_count=n)) / n)


def external_tau(tau: pd.DataFrame, hub_ids: dict[str, str] | None = None) -> pd.DataFrame:
    """Our τ of each external draft (``loss`` = ``external:<name>``), one row per
    (draft, temperature): each measure averaged over seeds, then over domains (the model
    cards average MT-Bench, HumanEval and GSM8K: our general, code, math), with the SE of
    that mean. ``hub_ids`` maps a draft's name to its checkpoint (the config's ``path``),
    the key to its model card."""
    cols = ["draft", "hub_id", "draft_arch", "target", "temperature", "k_eval", "n_domains"]
    cols += [c for m in measures() for c in (m, f"{m}_se")]
    if tau.empty or "loss" not in tau:
        return pd.DataFrame(columns=cols)
    ext = tau[tau["loss"].astype(str).str.startswith(EXTERNAL_PREFIX)]
    rows = []
    for (target, arch, loss, temp), g in ext.groupby(
        ["target", "draft_arch", "loss", "temperature"], sort=True
    ):
        name = loss.removeprefix(EXTERNAL_PREFIX)
        row = dict(draft=name, hub_id=(hub_ids or {}).get(name), draft_arch=arch, target=target)
        row.update(temperature=int(temp), k_eval=int(g["k_eval"].max()))
        row["n_domains"] = int(g["domain"].nunique())
        for m in measures():
            if m not in g:
                row[m] = row[f"{m}_se"] = float("nan")
                continue
            se = g[f"{m}_se"] if f"{m}_se" in g else pd.Series(np.nan, index=g.index)
            per_domain = [
                _mean_se(d[m], se[d.index]) for _, d in g.groupby("domain", sort=True)
            ]  # seeds first, then domains
            row[m], row[f"{m}_se"] = _mean_se(
                pd.Series([v for v, _ in per_domain]), pd.Series([e for _, e in per_domain])
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def model_card_tau(ref: pd.DataFrame) -> pd.DataFrame:
    """The released checkpoints' model-card τ per (hub id, temperature), with the KL
    baseline the card lists beside it (``released = no``: not published as a checkpoint)."""
    cols = ["hub_id", "card_target", "draft_arch", "temperature", "card_k", "card_loss"]
    cols += ["card_tau", "card_kl_tau"]
    if ref.empty:
        return pd.DataFrame(columns=cols)
    keys = ["hub_id", "temperature"]
    released = ref[ref["released"].astype(str) == "yes"].rename(
        columns={"target": "card_target", "k": "card_k", "loss": "card_loss", "tau": "card_tau"}
    )
    kl = ref[(ref["released"].astype(str) == "no") & (ref["loss"] == "kl")]
    kl = kl[[*keys, "tau"]].rename(columns={"tau": "card_kl_tau"})
    out = released.merge(kl, on=keys, how="left")
    out["temperature"] = out["temperature"].astype(int)
    return out[cols].reset_index(drop=True)


def released_drafts_table(tau: pd.DataFrame, ref: pd.DataFrame, hub_ids=None) -> pd.DataFrame:
    """Our τ of each external draft beside its model card's, one row per (draft,
    temperature); the cards of drafts this run did not evaluate keep their row (ours NaN),
    and so does an external draft without a card (card NaN)."""
    ours, cards = external_tau(tau, hub_ids), model_card_tau(ref)
    keys = ["hub_id", "temperature"]
    cols = [*ours.columns, *(c for c in cards.columns if c not in ours.columns), "label"]
    if ours.empty and cards.empty:
        return pd.DataFrame(columns=cols)
    for df in (ours, cards):  # empty frames have object columns: merge needs the same types
        df["temperature"] = df["temperature"].astype(int)
        df["hub_id"] = df["hub_id"].astype(object)
    both = ours.merge(cards, on=keys, how="outer", suffixes=("", "_card"))
    both["draft_arch"] = both["draft_arch"].fillna(both.pop("draft_arch_card"))
    # label: the draft's name, or for a card this run did not evaluate, its repository name
    both["label"] = [
        d if isinstance(d, str) else str(h).split("/")[-1]
        for d, h in zip(both["draft"], both["hub_id"], strict=True)
    ]
    return both[cols].sort_values(["temperature", "label"]).reset_index(drop=True)


def figure_released_drafts(table: pd.DataFrame, path: str) -> None:
    """Fig.: per temperature, each released draft's model-card τ (and the card's KL
    baseline) beside our measured τ (T=0: replay, expected; T=1: unbiased, expected)."""
    temps = sorted(int(t) for t in table["temperature"].dropna().unique()) or [0, 1]
    fig, axes = plt.subplots(1, len(temps), figsize=(5.2 * len(temps), 4.2), squeeze=False)
    measured = any(table[m].notna().any() for m in measures() if m in table)
    for ax, temp in zip(axes[0], temps, strict=True):
        g = table[table["temperature"] == temp]
        series = [("model card (released)", "card_tau", None)]
        series += [("model card: KL baseline (not released)", "card_kl_tau", "//")]
        if measured:
            ours = _released_measures(temp)
            series += [(f"ours: {m}", m, None) for m in ours]
        width, x = 0.8 / len(series), np.arange(len(g))
        for i, (label, col, hatch) in enumerate(series):
            values = pd.to_numeric(g[col], errors="coerce") if col in g else np.nan * x
            err = pd.to_numeric(g[f"{col}_se"], errors="coerce") if f"{col}_se" in g else None
            ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, yerr=err,
                   label=label, hatch=hatch, fill=hatch is None, capsize=2)  # fmt: skip
        ax.set_xticks(x, list(g["label"]), rotation=20, ha="right", fontsize=8)
        ax.set_title(f"T={temp}", fontsize=9)
        ax.set_ylabel("τ (bonus token included)")
        if not len(g):
            ax.text(0.5, 0.5, "no released draft", ha="center", transform=ax.transAxes)
    axes[0][0].legend(fontsize=7)
    if not measured:
        fig.text(0.5, 0.01, "No external drafts in this run: the model cards' τ alone "
                 "(configs/released.yaml evaluates them).", ha="center", fontsize=8)  # fmt: skip
    fig.suptitle("Released drafts: model-card τ (K = 6, avg MT-Bench/HumanEval/GSM8K) vs ours")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_paper_figures(
    tau_csv: str | Path,
    gains_csv: str | Path,
    reference: str | Path,
    out_dir: str | Path,
    external_hub_ids: dict[str, str] | None = None,
) -> pd.DataFrame:
    """``paper_figures/generated``: the figures and their side-by-side tables (atomic).

    ``external_hub_ids``: external draft name → its checkpoint (hub id), to find its row in
    ``released_drafts_tau.csv``; returns the LK gains table.
    """
    ref = Path(reference)
    tau, gains = pd.read_csv(tau_csv), pd.read_csv(gains_csv)
    cards = ref / "released_drafts_tau.csv"
    released = released_drafts_table(
        tau, pd.read_csv(cards) if cards.exists() else pd.DataFrame(), external_hub_ids
    )
    tvdpp_ref = ref / "tvdpp_block_efficiency.csv"
    tvdpp = tvdpp_table(
        pd.read_csv(tvdpp_ref) if tvdpp_ref.exists() else pd.DataFrame(), tau, gains
    )
    with atomic_dir(out_dir) as tmp:
        both = figure_lk_gains(
            pd.read_csv(ref / "lk_losses_tau.csv"), gains, str(tmp / "lk_gains_vs_paper.png")
        )
        figure_block_interventions(
            pd.read_csv(ref / "block_diffusion_tau.csv"), tau, str(tmp / "block_interventions.png")
        )
        figure_released_drafts(released, str(tmp / "released_drafts.png"))
        atomic_write_text(tmp / "lk_gains_vs_paper.csv", both.to_csv(index=False))
        atomic_write_text(tmp / "released_drafts.csv", released.to_csv(index=False))
        figure_tvdpp(tvdpp, str(tmp / "tvdpp_vs_paper.png"))
        atomic_write_text(tmp / "tvdpp_vs_paper.csv", tvdpp.to_csv(index=False))
    return both
