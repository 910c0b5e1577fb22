"""Aggregation: τ per cell from per-prompt sums, and paired gains vs the baseline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from specbench.aggregation.tables import gains_markdown, gains_table, tau_table


def _per_prompt(loss: str, accepted: list[int], rounds: list[int], tau_sums: list[float]):
    rows = []
    for pid, (acc, rnd, ts) in enumerate(zip(accepted, rounds, tau_sums, strict=True)):
        rows.append(
            dict(
                target="t",
                draft_arch="medusa",
                loss=loss,
                domain="code",
                temperature=1,
                seed=0,
                prompt_index=pid,
                anchors=10,
                tau_expected_sum=ts,
                rounds=rnd,
                accepted_sum=acc,
                tokens=acc + rnd,
                wall_seconds=1.0,
                k_eval=2,
                draft_params=100,
                cost_ratio=0.1,
                reached_1=rnd,
                accepted_1=acc // 2 + 1,
                reached_2=rnd // 2,
                accepted_2=acc // 4,
            )
        )
    return rows


def test_tau_counts_the_bonus_token_and_gains_are_paired():
    pp = pd.DataFrame(
        _per_prompt("kl", [10, 12, 8], [10, 10, 10], [20.0, 22.0, 18.0])
        + _per_prompt("lk_lambda", [15, 18, 12], [10, 10, 10], [22.0, 24.2, 19.8])
    )
    pp["accepted_plus_rounds"] = pp["accepted_sum"] + pp["rounds"]
    tau = tau_table(pp).set_index("loss")
    assert tau.loc["kl", "tau_live"] == 1 + 30 / 30  # (accepted + 1) per round
    assert tau.loc["kl", "tau_expected"] == 60.0 / 30
    assert tau.loc["lk_lambda", "mbsu"] == tau.loc["lk_lambda", "tau_live"] / (2 * 0.1 + 1)
    assert tau.loc["kl", "a_1"] == (6 + 7 + 5) / 30
    gains = gains_table(pp, "kl", n_boot=200)
    row = gains.iloc[0]
    assert row["loss"] == "lk_lambda"
    assert abs(row["tau_expected_gain_pct"] - 10.0) < 1e-9  # every prompt +10%: CI collapses
    assert abs(row["tau_expected_ci_lo"] - 10.0) < 1e-9
    assert abs(row["tau_live_gain_pct"] - 100 * (75 / 60 - 1)) < 1e-9
    assert "+10.0 [+10.0, +10.0]" in gains_markdown(gains)


def test_a_one_loss_matrix_writes_tables_and_plots_and_says_there_is_nothing_to_compare(tmp_path):
    """``losses: [kl]`` (only the baseline): τ table and plots, no crash on the empty gains."""
    import json

    from specbench.aggregation.paper import write_paper_figures
    from specbench.aggregation.plots import write_plots
    from specbench.aggregation.tables import write_tables

    cell = tmp_path / "eval/t/medusa/kl/seed0"
    cell.mkdir(parents=True)
    rows = pd.DataFrame(_per_prompt("kl", [10, 12, 8], [10, 10, 10], [20.0, 22.0, 18.0]))
    keys = ["target", "draft_arch", "loss", "seed", "k_eval", "draft_params", "cost_ratio"]
    meta = {key: rows.iloc[0][key] for key in keys}
    (cell / "metrics.json").write_text(json.dumps({k: getattr(v, "item", lambda v=v: v)()
                                                   for k, v in meta.items()}))  # fmt: skip
    rows.drop(columns=keys).to_csv(cell / "per_prompt.csv", index=False)
    out = {n: tmp_path / n for n in ("tau.csv", "gains.csv", "gains.md", "g.png", "a.png")}
    tau, gains = write_tables(
        [cell], "kl", 100, "one loss", out["tau.csv"], out["gains.csv"], out["gains.md"]
    )
    assert len(tau) == 1 and gains.empty
    assert "Nothing to compare" in out["gains.md"].read_text()
    assert pd.read_csv(out["gains.csv"]).empty  # a header, not an empty file
    write_plots(str(out["tau.csv"]), str(out["gains.csv"]), str(out["g.png"]), str(out["a.png"]))
    assert out["g.png"].stat().st_size > 0 and out["a.png"].stat().st_size > 0
    ref = Path(__file__).resolve().parents[1] / "paper_figures/reference"
    both = write_paper_figures(out["tau.csv"], out["gains.csv"], ref, tmp_path / "figures")
    assert both["our_gain_pct"].isna().all()  # the papers' numbers alone
    assert (tmp_path / "figures/lk_gains_vs_paper.png").exists()
