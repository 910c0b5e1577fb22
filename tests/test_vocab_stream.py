"""The draft vocabulary is counted from a stream: the same vocabulary as counting every
response in memory, at a peak memory that does not grow with the number of responses."""

from __future__ import annotations

import random
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from specbench.artifacts import ResponseRow, iter_responses
from specbench.features.vocab import TokenCounts, build_draft_vocab, vocab_payload


def in_memory(responses: list[list[int]], size: int, always: tuple[int, ...]):
    """What the stage did before streaming: ``Counter`` over every token in memory."""
    counts = Counter(t for r in responses for t in r)
    keep = list(dict.fromkeys([*always, *(t for t, _ in counts.most_common())]))[:size]
    return sorted(keep), sum(counts[t] for t in keep) / max(sum(counts.values()), 1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("size", [1, 7, 40, 500])
def test_streamed_counts_choose_the_in_memory_vocabulary_ties_included(seed, size):
    """Few distinct ids and short responses: many equal counts at the cut, broken by first
    appearance as ``Counter.most_common`` breaks them; buffers flushed mid-stream."""
    rng = random.Random(seed)
    responses = [[rng.randrange(60) for _ in range(rng.randrange(0, 9))] for _ in range(80)]
    always = (rng.randrange(100),)
    for buffer in (1, 16, 1 << 20):
        counts = TokenCounts(buffer)
        for r in responses:
            counts.add(r)
        d2t, coverage = build_draft_vocab(counts, size, always)
        want, want_cov = in_memory(responses, size, always)
        assert d2t.tolist() == want and coverage == pytest.approx(want_cov, abs=1e-15)


def test_200k_responses_are_counted_in_bounded_memory(tmp_path):
    """200,000 responses of 12 tokens (2.4M tokens over a 49,152-token vocabulary,
    Zipf-like): read line by line and counted with numpy. Held as lists, the ids alone would
    take ~85 MB (8-byte pointers plus a 28-byte int per token), and they grow with the file;
    counted, the peak is a buffer of at most 1M tokens and the tables."""
    rng = np.random.default_rng(0)
    path = tmp_path / "responses.jsonl"
    with path.open("w") as f:
        for _ in range(20):
            ids = np.minimum(rng.zipf(1.3, size=(10_000, 12)), 49_152) - 1
            f.writelines(ResponseRow(0, [], row).to_line() for row in ids.tolist())
    tracemalloc.start()
    try:
        payload = vocab_payload((r.response_ids for r in iter_responses(path)), 2048, (0,))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tokens = payload["train_response_tokens"]
    print(f"200k responses, {tokens:,} tokens: peak {peak / 2**20:.1f} MiB")
    assert payload["train_response_tokens"] == 2_400_000 and payload["size"] == 2048
    assert 0.5 < payload["coverage"] < 1
    assert peak < 48 * 2**20
