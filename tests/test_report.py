"""`snakemake --report` (make report): one self-contained HTML file of a finished run, every
table and plot flagged report(...) in the rules in it, with its caption and category."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml
from repo_copy import copy_repo

from specbench.aggregation.curve import write_curve
from specbench.aggregation.paper import write_paper_figures
from specbench.aggregation.served_plot import plot_served

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke")]

# every captioned result of the default run, the served plot, the learning curve and the paper
# figures: file name -> its category in the report
CAPTIONED = {
    "tau.csv": "τ per cell",
    "acceptance.png": "τ per cell",
    "gains.csv": "Gains vs baseline",
    "gains.md": "Gains vs baseline",
    "gains.png": "Gains vs baseline",
    "served.png": "Served vs estimated",
    "learning_curve.csv": "Learning curve",
    "learning_curve.png": "Learning curve",
    "lk_gains_vs_paper.png": "Paper figures",
    "lk_gains_vs_paper.csv": "Paper figures",
    "block_interventions.png": "Paper figures",
    "released_drafts.png": "Paper figures",
    "released_drafts.csv": "Paper figures",
    "tvdpp_vs_paper.png": "Paper figures",
    "tvdpp_vs_paper.csv": "Paper figures",
}


def _script_json(html: str, name: str):
    """The JSON the report assigns to ``var <name> = ...;`` in its page (the inlined
    libraries have variables of the same names, assigned other than JSON)."""
    for m in re.finditer(rf"var {name} = ", html):
        try:
            return json.JSONDecoder().raw_decode(html, m.end())[0]
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no `var {name} = <JSON>` in the report")


class _Links(HTMLParser):
    """The src= / href= of every tag that would load something, and the number of scripts."""

    def __init__(self):
        super().__init__()
        self.scripts, self.external = 0, []

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        for key, value in attrs:
            if key in ("src", "href") and not (value or "").startswith(
                ("data:", "#", "javascript:")
            ):
                self.external.append((tag, key, value))


@pytest.fixture(scope="module")
def report(smoke_local, tmp_path_factory):
    """The report of the session's smoke run, with the learning curve, the served plot and
    the paper figures beside it. The run stays as it is: a copy of the tree gets its tables,
    plots and Snakemake's records of them (kB, not the drafts); the paper figures and the
    served plot are drawn by their stages' code from its tables, the learning curve from its
    EAGLE-3/kl draft as a single point (the smoke config has no curve). Only the
    ``--report`` call is Snakemake's."""
    run, work = smoke_local.path, copy_repo(tmp_path_factory.mktemp("report"))
    for d in ("results/tables", "results/plots", ".snakemake/metadata"):
        shutil.copytree(run / d, work / d)
    tables = work / "results/tables"
    write_paper_figures(
        tables / "tau.csv", tables / "gains.csv", work / "paper_figures/reference",
        work / "paper_figures/generated",
    )  # fmt: skip
    plot_served(pd.read_csv(tables / "tau.csv"), str(work / "results/plots/served.png"))
    cfg = yaml.safe_load((work / "configs/smoke.yaml").read_text())
    steps = cfg["train"]["steps"]
    point = work / f"results/curve/point/steps{steps}_data1"
    point.mkdir(parents=True)
    cell = f"{next(iter(cfg['targets']))}/eagle3/kl/seed0"  # the curve's arch and loss below
    for src in (f"eval/{cell}/metrics.json", f"eval/{cell}/per_prompt.csv"):
        shutil.copy2(run / "results" / src, point)
    shutil.copy2(run / f"results/drafts/{cell}/train_log.csv", point)
    with warnings.catch_warnings():  # one point: the data-share panel is empty (no legend)
        warnings.simplefilter("ignore", UserWarning)
        write_curve(
            [point],
            None,
            str(tables / "learning_curve.csv"),
            str(work / "results/plots/learning_curve.png"),
        )
    cfg["eval"]["served"] = True
    cfg["learning_curve"] = {
        "arch": "eagle3", "loss": "kl", "seed": 0, "steps": [steps], "data_fractions": [1.0],
    }  # fmt: skip
    (work / "configs/report.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    out = work / "results/report.html"
    # the targets first: --configfile takes every word after it
    cmd = [sys.executable, "-m", "snakemake", "all", "learning_curve", "paper_figures"]
    cmd += ["--report", str(out), "--configfile", "configs/report.yaml"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out.read_text()


def test_the_report_is_one_self_contained_html_file(report):
    assert report.lstrip().lower().startswith("<!doctype html>")
    # nothing loaded from elsewhere: no tag outside the inlined scripts names a file or URL
    # (HTMLParser reads a <script> body as text), and every result is a data: URI
    links = _Links()
    links.feed(report)
    assert links.scripts > 5 and links.external == [], links.external
    results = _script_json(report, "results")
    assert results and all(r["data_uri"].startswith("data:") for r in results.values())


def test_the_report_holds_every_captioned_result_in_its_category(report):
    results = _script_json(report, "results")
    assert sorted(r["name"] for r in results.values()) == sorted(CAPTIONED)
    categories = _script_json(report, "categories")
    placed = {
        Path(path).name: cat
        for cat, subcats in categories.items()
        for paths in subcats.values()
        for path in paths
    }
    assert placed == CAPTIONED
    by_name = {r["name"]: r["caption"] for r in results.values()}
    assert all(len(caption) > 200 for caption in by_name.values()), by_name
    for name in ("tau.csv", "gains.csv", "gains.png", "served.png", "learning_curve.png"):
        assert "bonus token" in by_name[name], name
    # the captions name the estimator each result shows (the headlines per temperature)
    for name in ("gains.png", "served.png", "learning_curve.png", "lk_gains_vs_paper.png"):
        assert "tau_unbiased" in by_name[name] and "tau_live" in by_name[name], name
    assert "tau_served" in by_name["served.png"]
    assert "bootstrap" in by_name["gains.csv"] and "kl" in by_name["gains.csv"]
    # one caption file for the paper figures, specific to each figure
    assert "model card" in by_name["released_drafts.png"]
    assert "Block-diffusion" in by_name["block_interventions.png"]
    assert (
        "TVD++" in by_name["tvdpp_vs_paper.png"] and "bonus token" in by_name["tvdpp_vs_paper.png"]
    )
    desc = _script_json(report, "workflow_desc")
    assert "bonus token" in desc and "smoke" in desc  # the top-level description, the config note
