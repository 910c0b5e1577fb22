"""The learning curve: τ of drafts trained for more steps or on more data.

Each point is one draft trained from scratch (its own cosine schedule) and evaluated as a
matrix cell is; τ per temperature is the mean over domains of each measure, as the README's
tables quote it. ``tokens_seen`` sums the response tokens of every training batch, so
``epochs = tokens_seen / training tokens`` says how often the data was revisited.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from specbench.aggregation.tables import load_per_prompt, measures, tau_table  # noqa: E402
from specbench.io import atomic_write_text  # noqa: E402

POINT = re.compile(r"steps(?P<steps>\d+)_data(?P<data>[0-9.]+)$")


def curve_table(point_dirs: list[str | Path], train_tokens: int | None = None) -> pd.DataFrame:
    """One row per (point, temperature): steps, data share, tokens seen, training seconds,
    τ by measure and MBSU (means over domains).

    ``train_tokens``: response tokens of the whole training cache (for ``epochs``).
    """
    rows = []
    for d in map(Path, point_dirs):
        m = POINT.search(d.name)
        if m is None:
            raise ValueError(f"{d}: not a learning-curve point folder (stepsN_dataF)")
        log = pd.read_csv(d / "train_log.csv")
        tau = tau_table(load_per_prompt([d]))
        for temperature, g in tau.groupby("temperature", sort=True):
            row = {
                "steps": int(m["steps"]),
                "data_fraction": float(m["data"]),
                "tokens_seen": int(log["tokens"].sum()),
                "temperature": int(temperature),
                "train_alpha_1_last10": float(log["alpha_1"].tail(10).mean()),
                # wall time of its training (the log's seconds are cumulative), and the draft's
                # cost: equal-time comparisons of drafts that cost differently per step
                "train_seconds": float(log["seconds"].iloc[-1]),
                "cost_ratio": float(g["cost_ratio"].iloc[0]),
                "mbsu": float(g["mbsu"].mean()),
            }
            if train_tokens:
                row["epochs"] = row["tokens_seen"] / (train_tokens * row["data_fraction"])
            for name in measures():
                row[name] = float(g[name].mean())
            rows.append(row)
    return pd.DataFrame(rows).sort_values(["temperature", "data_fraction", "steps"])


def plot_curve(table: pd.DataFrame, path: str | Path) -> None:
    """τ against tokens seen (all data, more steps) and against the data share."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    full = table[table["data_fraction"] == 1.0]
    # the data-share points all train for train.steps; at share 1 take that same budget
    budgets = table.loc[table["data_fraction"] < 1, "steps"].unique()
    shares = table[table["steps"].isin(budgets)]
    for (t, name), style in zip(
        [(t, n) for t in sorted(table["temperature"].unique()) for n in measures()],
        ["o-", "s--", "^:", "o-", "s--", "^:"],
        strict=False,
    ):
        f = full[full["temperature"] == t].dropna(subset=[name])
        if len(f):
            a.plot(f["tokens_seen"], f[name], style, label=f"T={t} {name}")
        s = shares[shares["temperature"] == t].dropna(subset=[name])
        if len(s):
            b.plot(s["data_fraction"], s[name], style, label=f"T={t} {name}")
    a.set_xscale("log")
    a.set_xticks(sorted(full["tokens_seen"].unique()))  # one tick per step budget
    a.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e3:.0f}k"))
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a.set_xlabel("response tokens seen in training (log; one point per step budget)")
    b.set_xlabel("share of the training data (at train.steps)")
    for ax in (a, b):
        ax.set_ylabel("τ (bonus token included), mean over domains")
        ax.legend(fontsize=7)
    fig.suptitle("Learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_curve(
    point_dirs: list[str | Path], vocab_json: str | Path | None, table_csv: str, plot_png: str
) -> pd.DataFrame:
    """``learning_curve.csv`` and ``learning_curve.png`` from the evaluated points."""
    tokens = None
    if vocab_json is not None and Path(vocab_json).exists():
        tokens = json.loads(Path(vocab_json).read_text()).get("train_response_tokens")
    table = curve_table(point_dirs, tokens)
    atomic_write_text(table_csv, table.to_csv(index=False))
    plot_curve(table, plot_png)
    return table
