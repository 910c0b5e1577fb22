"""Aggregation: τ per cell from per-prompt sums, and paired gains vs the baseline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from specbench.aggregation.tables import gains_markdown, gains_table, headline, tau_table
from specbench.artifacts import EvalMetrics

ROOT = Path(__file__).resolve().parents[1]


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
    row = tau.loc["lk_lambda"].dropna()  # MBSU takes the headline τ that was measured
    lead = headline(int(row["temperature"]), row.index)
    assert tau.loc["lk_lambda", "mbsu"] == tau.loc["lk_lambda", lead] / (2 * 0.1 + 1)
    assert tau.loc["kl", "a_1"] == (6 + 7 + 5) / 30
    gains = gains_table(pp, "kl", n_boot=200)
    row = gains.iloc[0]
    assert row["loss"] == "lk_lambda"
    assert abs(row["tau_expected_gain_pct"] - 10.0) < 1e-9  # every prompt +10%: CI collapses
    assert abs(row["tau_expected_ci_lo"] - 10.0) < 1e-9
    assert abs(row["tau_live_gain_pct"] - 100 * (75 / 60 - 1)) < 1e-9
    assert "+10.0 [+10.0, +10.0]" in gains_markdown(gains)


def test_a_gain_over_one_prompt_has_no_ci():
    """Live T=1 decodes eval.live_prompts per domain: one prompt gives a gain, not a CI."""
    pp = pd.DataFrame(_per_prompt("kl", [10], [10], [20.0]) + _per_prompt("tv", [15], [10], [22.0]))
    pp["accepted_plus_rounds"] = pp["accepted_sum"] + pp["rounds"]
    row = gains_table(pp, "kl", n_boot=50).iloc[0]
    assert row["tau_live_gain_pct"] == 100 * (25 / 20 - 1) and row["tau_live_n_prompts"] == 1
    assert pd.isna(row["tau_live_ci_lo"]) and pd.isna(row["tau_live_ci_hi"])
    assert "+25.0 (1 prompt: no CI)" in gains_markdown(gains_table(pp, "kl", n_boot=50))


def test_a_draft_that_stopped_early_is_kept_and_marked():
    """A non-finite loss stops a draft (training/trainer.py): its rows stay, marked."""
    kl = pd.DataFrame(_per_prompt("kl", [10, 12, 8], [10, 10, 10], [20.0, 22.0, 18.0]))
    tv = pd.DataFrame(_per_prompt("tv", [11, 12, 9], [10, 10, 10], [21.0, 22.0, 18.0]))
    kl["train_status"] = "complete"
    tv["train_status"] = "stopped: non-finite loss at step 17"
    pp = pd.concat([kl, tv], ignore_index=True)
    pp["accepted_plus_rounds"] = pp["accepted_sum"] + pp["rounds"]
    tau = tau_table(pp).set_index("loss")
    assert tau.loc["tv", "train_status"] == "stopped: non-finite loss at step 17"
    assert tau.loc["kl", "train_status"] == "complete" and tau.loc["tv", "tau_live"] > 1
    gains = gains_table(pp, "kl", n_boot=50)
    assert gains.iloc[0]["train_status"] == "stopped: non-finite loss at step 17"
    assert "| tv (a draft stopped early) |" in gains_markdown(gains)


def test_a_one_loss_matrix_writes_tables_and_plots_and_says_there_is_nothing_to_compare(tmp_path):
    """``losses: [kl]`` (only the baseline): τ table and plots, no crash on the empty gains."""

    from specbench.aggregation.paper import write_paper_figures
    from specbench.aggregation.plots import write_plots
    from specbench.aggregation.tables import write_tables

    cell = tmp_path / "eval/t/medusa/kl/seed0"
    cell.mkdir(parents=True)
    rows = pd.DataFrame(_per_prompt("kl", [10, 12, 8], [10, 10, 10], [20.0, 22.0, 18.0]))
    keys = ["target", "draft_arch", "loss", "seed", "k_eval", "draft_params", "cost_ratio"]
    meta = {key: rows.iloc[0][key] for key in keys}
    meta = {k: getattr(v, "item", lambda v=v: v)() for k, v in meta.items()}
    EvalMetrics(**meta, trainable_params=100, cells=[]).write(cell / "metrics.json")
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


REFERENCE = Path(__file__).resolve().parents[1] / "paper_figures/reference"
MEDUSA, MLP = "nebius/MEDUSA-Llama-3.1-8B-Instruct", "nebius/MLP-Speculator-Llama-3.1-8B-Instruct"


def _tau_rows(loss: str, arch: str, taus: dict[int, list[float]], se: float = 0.03):
    """tau.csv rows of one draft: per temperature, one τ per domain (general, code, math);
    ``tau_unbiased`` only at T=1, as the pipeline measures it."""
    rows = []
    for temp, values in taus.items():
        for domain, t in zip(["general", "code", "math"], values, strict=False):
            rows.append(dict(
                target="llama31-8b", draft_arch=arch, loss=loss, domain=domain,
                temperature=temp, seed=0, k_eval=6,
                origin="external" if loss.startswith("external:") else "trained",
                tau_live=t, tau_live_se=se, tau_expected=t + 0.1, tau_expected_se=se,
                tau_unbiased=t - 0.05 if temp == 1 else float("nan"),
                tau_unbiased_se=se if temp == 1 else float("nan"),
            ))  # fmt: skip
    return rows


def _write(tmp_path, rows) -> tuple[Path, Path]:
    tau, gains = tmp_path / "tau.csv", tmp_path / "gains.csv"
    pd.DataFrame(rows).to_csv(tau, index=False)
    pd.DataFrame(columns=["target", "draft_arch", "domain", "temperature", "loss"]).to_csv(
        gains, index=False
    )
    return tau, gains


def test_released_drafts_beside_their_model_cards(tmp_path):
    """Our τ of each external draft (mean over domains, per temperature and measure) beside
    its model-card τ; a trained draft is not in it, an external one without a card is."""
    from specbench.aggregation.paper import write_paper_figures

    rows = _tau_rows("external:lk-medusa", "medusa", {0: [2.0, 2.3, 2.2], 1: [1.8, 2.1, 1.9]})
    rows += _tau_rows("external:lk-mlp", "mlp_speculator", {0: [2.5, 2.6, 2.7], 1: [2.2, 2.4]})
    rows += _tau_rows("external:mine", "eagle3", {0: [3.0, 3.0, 3.0]})  # a local checkpoint
    rows += _tau_rows("kl", "medusa", {0: [9.0, 9.0, 9.0]})  # trained: not a released draft
    tau, gains = _write(tmp_path, rows)
    hub = {"lk-medusa": MEDUSA, "lk-mlp": MLP, "mine": "/data/my-eagle3"}
    write_paper_figures(tau, gains, REFERENCE, tmp_path / "fig", hub)
    assert (tmp_path / "fig/released_drafts.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "fig/released_drafts.csv").set_index(["label", "temperature"])
    assert len(table) == 5 and not any(label == "kl" for label, _ in table.index)
    med0, med1 = table.loc[("lk-medusa", 0)], table.loc[("lk-medusa", 1)]
    assert (med0["card_tau"], med0["card_kl_tau"], med1["card_tau"]) == (2.21, 2.19, 2.00)
    assert abs(med0["tau_live"] - 6.5 / 3) < 1e-12  # mean of the three domains
    assert abs(med0["tau_live_se"] - 0.03 * 3**0.5 / 3) < 1e-12  # sqrt(Σ se²) / n
    assert abs(med1["tau_unbiased"] - (5.8 / 3 - 0.05)) < 1e-12
    assert pd.isna(med0["tau_unbiased"]) and med0["n_domains"] == 3
    mlp1 = table.loc[("lk-mlp", 1)]  # two domains measured: their mean, and it says so
    assert mlp1["n_domains"] == 2 and abs(mlp1["tau_live"] - 2.3) < 1e-12
    assert mlp1["card_tau"] == 2.33 and mlp1["card_loss"] == "lk_lambda"
    mine = table.loc[("mine", 0)]
    assert pd.isna(mine["card_tau"]) and mine["tau_live"] == 3.0


def test_released_drafts_without_external_drafts_shows_the_cards_alone(tmp_path):
    from specbench.aggregation.paper import write_paper_figures

    tau, gains = _write(tmp_path, _tau_rows("kl", "medusa", {0: [2.0], 1: [1.5]}))
    write_paper_figures(tau, gains, REFERENCE, tmp_path / "fig")
    table = pd.read_csv(tmp_path / "fig/released_drafts.csv")
    assert len(table) == 4  # 2 released drafts × 2 temperatures, from the model cards
    assert table["card_tau"].notna().all() and table["tau_live"].isna().all()
    assert (tmp_path / "fig/released_drafts.png").stat().st_size > 0
    # no reference file and an empty tau.csv: still a figure and a (header-only) table
    empty = tmp_path / "ref"
    empty.mkdir()
    for name in ("lk_losses_tau.csv", "block_diffusion_tau.csv"):
        (empty / name).write_text((REFERENCE / name).read_text())
    header = _tau_rows("kl", "medusa", {0: [2.0]})[0]
    pd.DataFrame(columns=list(header)).to_csv(tau, index=False)
    write_paper_figures(tau, gains, empty, tmp_path / "fig2")
    assert pd.read_csv(tmp_path / "fig2/released_drafts.csv").empty
    assert (tmp_path / "fig2/released_drafts.png").stat().st_size > 0


def test_block_figure_matches_our_bars_to_the_papers_by_loss_name():
    """Issue 19: bars are matched by label, not by position, so any subset or order of our
    losses lands on its own tick; a loss the paper has no number for gets a tick of its own."""
    from specbench.aggregation.paper import block_interventions_table, block_label

    ref = pd.read_csv(ROOT / "paper_figures/reference/block_diffusion_tau.csv")
    specs = {"ce+decay(gamma=7)+focal(alpha=0.3)+chain(alpha=40)": 3.0, "ce": 2.0, "kl+dpace": 1.5}
    assert [block_label(s) for s in specs] == ["ce+decay+focal+chain", "ce_uniform", "kl+dpace"]
    tau = pd.DataFrame(
        [{"draft_arch": "block_diffusion", "loss": s, "tau_expected": v} for s, v in specs.items()]
        + [{"draft_arch": "eagle3", "loss": "ce", "tau_expected": 9.0}]  # another arch: ignored
    )
    for order in (tau, tau.iloc[::-1]):  # the order of our rows does not matter
        table = block_interventions_table(ref, order).set_index("label")
        paper = ref[ref["benchmark"] == "avg6"]
        assert list(table.index[: len(paper)]) == list(paper["loss"])  # the paper's order
        assert table.loc["ce_uniform", "our_tau"] == 2.0
        assert table.loc["ce+decay+focal+chain", "our_tau"] == 3.0
        assert table.loc["ce+decay+focal+chain", "paper_tau"] == 3.420
        assert pd.isna(table.loc["ce+decay", "our_tau"])  # not measured: no bar of ours
        assert table.loc["kl+dpace", "our_tau"] == 1.5 and pd.isna(
            table.loc["kl+dpace", "paper_tau"]
        )


def _tvdpp_reference(folder: Path) -> Path:
    """A reference folder: the shipped files, and a TVD++ table of two tasks at γ = 3 (and a
    γ = 5 row and the abstract's loss-less "up to" level, neither of them compared)."""
    folder.mkdir()
    for name in ("lk_losses_tau.csv", "block_diffusion_tau.csv", "released_drafts_tau.csv"):
        (folder / name).write_text((REFERENCE / name).read_text())
    rows = [("kl", "a", 3, 0, 2.0), ("tv", "a", 3, 0, 2.1), ("tvdpp", "a", 3, 0, 2.2),
            ("kl", "b", 3, 0, 1.5), ("tv", "b", 3, 0, 1.65), ("tvdpp", "b", 3, 0, 1.8),
            ("kl", "a", 5, 0, 2.0), ("tvdpp", "a", 5, 0, 3.0)]  # fmt: skip
    ref = pd.DataFrame(rows, columns=["loss", "task", "gamma", "temperature", "block_efficiency"])
    ref.insert(0, "target", "meta-llama/Llama-2-7b-chat-hf")
    head = dict(target=ref["target"][0], loss=None, task=None, gamma=None, temperature=None,
                block_efficiency=2.3, note="up to")  # fmt: skip
    pd.concat([ref, pd.DataFrame([head])]).to_csv(
        folder / "tvdpp_block_efficiency.csv", index=False
    )
    return folder


def _gain_rows(loss: str, arch: str, by_temp: dict[int, list[tuple[float, float, float]]]):
    """gains.csv rows: per temperature, per domain (general, code) the headline measure's
    (gain, CI low, CI high); tau_expected's gain set to 99 so that using it shows."""
    rows = []
    for temp, per_domain in by_temp.items():
        m = "tau_unbiased" if temp == 1 else "tau_live"
        for domain, (gain, lo, hi) in zip(["general", "code"], per_domain, strict=True):
            rows.append({"target": "llama2-7b-chat", "draft_arch": arch, "domain": domain,
                         "temperature": temp, "loss": loss, "baseline": "kl",
                         f"{m}_gain_pct": gain, f"{m}_ci_lo": lo, f"{m}_ci_hi": hi,
                         "tau_expected_gain_pct": 99.0, "tau_expected_ci_lo": 98.0,
                         "tau_expected_ci_hi": 100.0})  # fmt: skip
    return rows


def test_tvdpp_figure_puts_our_draft_lm_beside_the_papers_delta_vs_kld(tmp_path):
    """The paper's Δ% vs KLD at γ = 3 (mean over its tasks) beside our draft_lm's Δτ% vs kl
    (the temperature's headline measure, mean over domains, with the mean CI bounds) and our
    τ; EAGLE-3 rows and the paper's γ = 5 rows are not in it; the abstract's level is a row."""
    from specbench.aggregation.paper import write_paper_figures

    rows = _tau_rows("kl", "draft_lm", {0: [1.5, 1.7], 1: [1.4, 1.6]})
    rows += _tau_rows("tvdpp", "draft_lm", {0: [1.6, 1.8], 1: [1.5, 1.9]})
    rows += _tau_rows("tvdpp", "eagle3", {0: [4.0, 4.0]})  # another arch: not ours here
    tau = tmp_path / "tau.csv"
    pd.DataFrame(rows).to_csv(tau, index=False)
    gains = tmp_path / "gains.csv"
    g = _gain_rows("tvdpp", "draft_lm", {0: [(4.0, 1.0, 7.0), (8.0, 5.0, 11.0)],
                                         1: [(2.0, -1.0, 5.0), (6.0, 2.0, 10.0)]})  # fmt: skip
    g += _gain_rows("lk_alpha", "draft_lm", {0: [(1.0, 0.0, 2.0), (3.0, 2.0, 4.0)]})
    g += _gain_rows("tvdpp", "eagle3", {0: [(50.0, 40.0, 60.0), (50.0, 40.0, 60.0)]})
    pd.DataFrame(g).to_csv(gains, index=False)
    ref = _tvdpp_reference(tmp_path / "ref")
    write_paper_figures(tau, gains, ref, tmp_path / "fig")
    assert (tmp_path / "fig/tvdpp_vs_paper.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "fig/tvdpp_vs_paper.csv")
    per_loss = table.dropna(subset=["loss"]).set_index(["loss", "temperature"])
    assert list(per_loss.index.get_level_values("loss").unique()) == ["kl", "tv", "tvdpp",
                                                                      "lk_alpha"]  # fmt: skip
    tv, tvdpp = per_loss.loc[("tv", 0)], per_loss.loc[("tvdpp", 0)]
    assert abs(tv["paper_gain_pct"] - (5.0 + 10.0) / 2) < 1e-9  # 2.1/2.0, 1.65/1.5
    assert abs(tvdpp["paper_gain_pct"] - (10.0 + 20.0) / 2) < 1e-9  # γ = 5's 50% left out
    assert tvdpp["paper_tasks"] == 2 and abs(tvdpp["paper_block_efficiency"] - 2.0) < 1e-9
    assert pd.isna(tv["our_gain_pct"]) and pd.isna(per_loss.loc[("kl", 0), "paper_gain_pct"])
    assert (tvdpp["our_gain_pct"], tvdpp["our_ci_lo"], tvdpp["our_ci_hi"]) == (6.0, 3.0, 9.0)
    assert tvdpp["our_domains"] == 2
    assert abs(tvdpp["our_tau"] - 1.7) < 1e-9  # tau_live at T=0, mean of the domains
    t1 = per_loss.loc[("tvdpp", 1)]  # T=1: tau_unbiased (τ − 0.05 in _tau_rows)
    assert (t1["our_gain_pct"], t1["our_ci_lo"], t1["our_ci_hi"]) == (4.0, 0.5, 7.5)
    assert abs(t1["our_tau"] - (1.7 - 0.05)) < 1e-9 and pd.isna(t1["paper_gain_pct"])
    assert abs(per_loss.loc[("kl", 0), "our_tau"] - 1.6) < 1e-9
    assert per_loss.loc[("lk_alpha", 0), "our_gain_pct"] == 2.0
    (level,) = table[table["loss"].isna()].itertuples()
    assert level.paper_block_efficiency == 2.3 and level.note == "up to"


def test_tvdpp_figure_without_draft_lm_rows_shows_the_papers_numbers_alone(tmp_path):
    from specbench.aggregation.paper import write_paper_figures

    tau, gains = _write(tmp_path, _tau_rows("kl", "medusa", {0: [2.0], 1: [1.5]}))
    write_paper_figures(tau, gains, REFERENCE, tmp_path / "fig")
    assert (tmp_path / "fig/tvdpp_vs_paper.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "fig/tvdpp_vs_paper.csv")
    shipped = pd.read_csv(REFERENCE / "tvdpp_block_efficiency.csv")
    assert table["our_tau"].isna().all() and table["our_gain_pct"].isna().all()
    assert sorted(table["paper_block_efficiency"].dropna()) == sorted(
        shipped["block_efficiency"][shipped["loss"].isna()]
    )  # the abstract's "up to 2.3": the one verified number
