"""Served τ against specbench's estimate, one point per draft and temperature (issue 20)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from specbench.aggregation.tables import headline  # noqa: E402


def plot_served(tau: pd.DataFrame, path: str) -> None:
    """x: the headline estimate of the cell (exact replay at T=0, unbiased at T=1), y: vLLM's
    served τ, both ± 1.96 SE; the diagonal is agreement. Cells never served are left out."""
    fig, ax = plt.subplots(figsize=(5, 5))
    served = tau.dropna(subset=["tau_served"]) if "tau_served" in tau else tau.iloc[:0]
    lo, hi = 1.0, 1.1
    for (arch, temp), g in served.groupby(["draft_arch", "temperature"], sort=True):
        x = headline(temp, g.columns)
        ax.errorbar(
            g[x],
            g["tau_served"],
            xerr=1.96 * g[f"{x}_se"].fillna(0),
            yerr=1.96 * g["tau_served_se"].fillna(0),
            fmt="o",
            capsize=3,
            label=f"{arch}, T={temp} (x: {x})",
        )
        hi = max(hi, float(g[[x, "tau_served"]].max().max()) + 0.05)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="served = estimated")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("specbench τ (replay at T=0, unbiased at T=1)")
    ax.set_ylabel("vLLM served τ (1 + accepted / drafts)")
    ax.set_title("Served vs estimated τ, 95% CIs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
