"""``tau_served`` in ``tau.csv``: vLLM's served τ per cell, from the ``served.csv`` files of
the ``serve_draft`` stage (one row per prompt, domain and temperature).

Served τ is vLLM's own count, ``1 + Σ accepted / Σ drafts``, a ratio of per-prompt sums
like every other τ of the table, so its standard error is the same prompt-clustered
linearisation. At T=0 the cell also counts the prompts whose served continuation equals the
cached greedy one (``served_identical``): only there must served τ equal the replay's.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from specbench.aggregation.stats import ratio_of_sums_se

CELL = ["target", "draft_arch", "loss", "domain", "temperature", "seed"]
COLUMNS = ["tau_served", "tau_served_se", "n_served_prompts", "served_identical"]


def served_cells(paths: list[str | Path]) -> pd.DataFrame:
    """One row per cell: ``tau_served`` (± SE), prompts served, identical T=0 continuations."""
    rows = []
    if not paths:
        return pd.DataFrame(columns=CELL + COLUMNS)
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    for key, g in df.groupby(CELL, sort=True):
        tau, se = ratio_of_sums_se(g["served_accepted"] + g["served_drafts"], g["served_drafts"])
        same = g["continuation_identical"] if "continuation_identical" in g else None
        identical = int(same.fillna(False).astype(bool).sum()) if same is not None else 0
        rows.append(
            {
                **dict(zip(CELL, key, strict=True)),
                "tau_served": tau,
                "tau_served_se": se,
                "n_served_prompts": len(g),
                "served_identical": identical if float(key[4]) == 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def with_served(tau: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """``tau`` with the served columns of its cells (NaN where a draft was not served)."""
    if cells.empty:
        return tau
    cells = cells.astype({"temperature": tau["temperature"].dtype, "seed": tau["seed"].dtype})
    return tau.merge(cells, on=CELL, how="left")
