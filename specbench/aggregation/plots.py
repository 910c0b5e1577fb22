"""Plots of the matrix: τ gains with CIs, and per-position conditional acceptance."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from specbench.aggregation.tables import headline  # noqa: E402


def plot_gains(gains: pd.DataFrame, path: str, measure: str | None = None) -> None:
    """One panel per (draft arch, temperature); bars per loss, grouped by domain, 95% CIs.

    ``measure``: one τ measure for every panel; default each temperature's headline
    (unbiased τ at T=1, the exact replay at T=0).
    """
    if gains.empty:  # a one-loss matrix: say so instead of failing
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "one loss only: no gains to compare", ha="center", va="center")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    panels = list(gains.groupby(["draft_arch", "temperature"], sort=True))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 4))
    axes = np.atleast_1d(axes)
    for ax, ((arch, temp), g) in zip(axes, panels, strict=False):
        name = measure or headline(temp, g.dropna(axis=1, how="all").columns)
        domains = sorted(g["domain"].unique())
        losses = sorted(g["loss"].unique())
        width = 0.8 / max(1, len(losses))
        for i, loss in enumerate(losses):
            sub = g[g["loss"] == loss].set_index("domain").reindex(domains)
            est = sub[f"{name}_gain_pct"].to_numpy(float)
            err = np.vstack(
                [
                    est - sub[f"{name}_ci_lo"].to_numpy(float),
                    sub[f"{name}_ci_hi"].to_numpy(float) - est,
                ]
            )
            x = np.arange(len(domains)) + (i - (len(losses) - 1) / 2) * width
            ax.bar(x, est, width, yerr=err, capsize=3, label=loss)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(domains)), domains)
        ax.set_title(f"{arch}, T={temp}")
        ax.set_ylabel(f"Δ{name} vs {g['baseline'].iloc[0]} [%]")
        ax.legend(fontsize=8)
    fig.suptitle("τ gain vs baseline loss (τ includes the bonus token; 95% paired CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_acceptance(tau: pd.DataFrame, path: str) -> None:
    """Conditional acceptance a_j per draft position, one line per loss (mean over cells)."""
    cols = sorted((c for c in tau.columns if c.startswith("a_")), key=lambda c: int(c[2:]))
    panels = list(tau.groupby(["draft_arch", "temperature"], sort=True))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 4))
    axes = np.atleast_1d(axes)
    for ax, ((arch, temp), g) in zip(axes, panels, strict=False):
        for loss, gl in g.groupby("loss", sort=True):
            vals = gl[cols].mean(numeric_only=True).to_numpy(float)
            ax.plot(range(1, len(cols) + 1), vals, marker="o", label=loss)
        ax.set_xticks(range(1, len(cols) + 1))
        ax.set_xlabel("draft position j (unplotted: never reached)")
        ax.set_ylabel("conditional acceptance a_j")
        ax.set_ylim(0, 1)
        ax.set_title(f"{arch}, T={temp}")
        ax.legend(fontsize=8)
    fig.suptitle("Per-position acceptance (live / replay), mean over domains and seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(tau_csv: str, gains_csv: str, gains_png: str, acceptance_png: str) -> None:
    """Both plots of a matrix from its ``tau.csv`` and ``gains.csv``."""
    plot_gains(pd.read_csv(gains_csv), gains_png)
    plot_acceptance(pd.read_csv(tau_csv), acceptance_png)
