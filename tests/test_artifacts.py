"""The files between stages: each record reads back what was written, and path names invert."""

from __future__ import annotations

import json

import pytest

from specbench.artifacts import (
    EvalMetrics,
    GroupCheckpoint,
    ResponseRow,
    draft_dir,
    iter_responses,
    loss_slug,
    losses_by_slug,
    write_responses,
)


def test_slugs_invert_over_a_runs_losses_external_ones_included():
    specs = ["kl", "lk_lambda(eta=10)", "ce+decay(gamma=7)", "external:lk-medusa"]
    assert [loss_slug(s) for s in specs] == [
        "kl", "lk_lambda-eta10", "ce__decay-gamma7", "external-lk-medusa",
    ]  # fmt: skip
    assert losses_by_slug(specs) == {loss_slug(s): s for s in specs}
    assert draft_dir("results", "eval", "t", "eagle3", "lk_lambda(eta=10)", 2) == (
        "results/eval/t/eagle3/lk_lambda-eta10/seed2"
    )
    with pytest.raises(ValueError, match="share a folder name"):
        losses_by_slug(["a(x=1)", "a-x1"])


def test_records_read_back_what_was_written(tmp_path):
    rows = [ResponseRow(0, [1, 2], [3, 4], [5]), ResponseRow(1, [6], [7])]
    write_responses(tmp_path / "r.jsonl", rows)
    first = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert first == {"prompt_index": 0, "prompt_ids": [1, 2], "response_ids": [3, 4],
                     "lookahead_ids": [5]}  # fmt: skip
    assert list(iter_responses(tmp_path / "r.jsonl")) == rows
    cells = [{"domain": "code", "temperature": 1}]
    meta = EvalMetrics("t", "eagle3", "kl", 0, 3, 10, 8, 0.1, cells, "stopped: non-finite loss")
    meta.write(tmp_path / "metrics.json")
    assert EvalMetrics.read(tmp_path / "metrics.json") == meta
    assert GroupCheckpoint.read(tmp_path) is None
    GroupCheckpoint(4, {"losses": ["kl"]}).write(tmp_path)
    assert GroupCheckpoint.read(tmp_path) == GroupCheckpoint(4, {"losses": ["kl"]})
