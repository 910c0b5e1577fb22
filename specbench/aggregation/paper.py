"""The papers' figures, with our measurements beside the published numbers.

Published τ (``paper_figures/reference``, transcribed from the papers) is turned into the
same Δτ%-vs-KL the matrix measures, so the *shape* can be compared: which loss wins, by how
much, and how that depends on draft capacity and temperature. Our targets differ from the
paper's (the embedded default is a 135M model), so levels are not expected to match.

The released drafts (``released_drafts_tau.csv``, the LK authors' model cards) are compared
in levels instead: the same checkpoints evaluated here as external drafts
(``configs/released.yaml``), our τ beside the card's.
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
    return both
