"""Vocabulary coverage: the share of held-out response tokens the draft vocabulary holds."""

from __future__ import annotations

import pandas as pd
import torch
from test_tables import _per_prompt
from tiny import tiny_llama

from specbench.aggregation.tables import tau_table
from specbench.decoding.evaluate import expected_tau_by_prompt
from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.targets.featurize import compute_features
from specbench.targets.info import target_info_from_model
from specbench.targets.runner import TargetRunner

D2T = torch.arange(0, 64, 2)  # the even target ids: half of the vocabulary


def test_expected_tau_counts_the_step_one_tokens_inside_the_draft_vocabulary(tmp_path):
    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    seqs = [Sequence(*(lambda ids: (ids[:4], ids[4:], i))(
        torch.randint(0, 64, (14 + i,), generator=g).tolist())) for i in range(3)]  # fmt: skip
    save_cache(compute_features(TargetRunner(model), seqs, D2T, batch_size=3), tmp_path / "c")
    cache = FeatureCache(tmp_path / "c")
    torch.manual_seed(0)
    draft = build_draft("medusa", target_info_from_model(model, D2T), num_heads=2).eval()
    stats = expected_tau_by_prompt(draft, cache, 2, 1.0)
    for s in seqs:  # anchor s = prompt_len-2+j drafts response token j first (j = 0..R-1)
        want = sum(t % 2 == 0 for t in s.response_ids)
        st = stats[s.prompt_index]
        assert st.anchors == len(s.response_ids) and st.in_vocab == want
        assert 0 < want < len(s.response_ids)  # the case is not trivial


def test_tau_table_reports_the_coverage_over_all_positions():
    pp = pd.DataFrame(_per_prompt("kl", [10, 12, 8], [10, 10, 10], [20.0, 22.0, 18.0]))
    pp["accepted_plus_rounds"] = pp["accepted_sum"] + pp["rounds"]
    pp["in_vocab"] = [7, 8, 9]  # of 10 anchors each
    assert tau_table(pp).loc[0, "vocab_coverage"] == 24 / 30
    assert "vocab_coverage" not in tau_table(pp.drop(columns="in_vocab"))  # older eval rows


def test_expected_tau_batches_by_device_memory_and_batching_changes_no_sum(tmp_path):
    """``expected_batch_size``: 8 sequences on a CPU; on a GPU what fits the budget (MEDUSA
    over Llama-3.1-8B's 128k vocabulary: 1). The per-prompt sums do not depend on it."""
    from specbench.decoding.evaluate import expected_batch_size

    assert expected_batch_size(1032, 6, 128256, torch.device("cpu")) == 8
    assert expected_batch_size(1032, 6, 128256, torch.device("cuda")) == 1
    assert expected_batch_size(1032, 7, 32000, torch.device("cuda")) == 3  # EAGLE-3, 32k vocab
    assert expected_batch_size(100, 2, 64, torch.device("cuda")) == 8
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    seqs = [Sequence(*(lambda ids: (ids[:4], ids[4:], i))(
        torch.randint(0, 64, (10 + 3 * i,), generator=g).tolist())) for i in range(5)]  # fmt: skip
    save_cache(compute_features(TargetRunner(model), seqs, D2T, batch_size=5), tmp_path / "c")
    cache = FeatureCache(tmp_path / "c")
    torch.manual_seed(0)
    draft = build_draft("medusa", target_info_from_model(model, D2T), num_heads=2).eval()
    one, all_ = (expected_tau_by_prompt(draft, cache, 2, 1.0, batch_size=b) for b in (1, 8))
    assert one.keys() == all_.keys()
    for pid, s in one.items():
        assert (s.anchors, s.in_vocab) == (all_[pid].anchors, all_[pid].in_vocab)
        assert abs(s.tau_expected_sum - all_[pid].tau_expected_sum) < 1e-9
