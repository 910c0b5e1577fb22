"""Released completions: a target's training responses read from a dataset, not regenerated.

The LK authors released the responses their targets generated for Infinity-Instruct-0625's
prompts (collection ``nebius/infinity-instruct-completions``). A target's
``train_completions`` entry (:class:`~specbench.data.hub.CompletionsSource`, one per domain)
makes the rule ``train_completions`` read them instead of running the ``responses`` stage on
the training prompts. The rows come out in the format that stage writes, so the draft
vocabulary, the feature caches and training read them unchanged:

* ``prompt_index``: 0, 1, … in the order the rows are taken;
* ``prompt_ids``: the prompt (stripped, cut to ``data.max_prompt_tokens`` tokens of the user's
  text) through the target's chat template with the generation prompt
  (:func:`~specbench.data.generate.chat_prompt_ids`, exactly as for regenerated responses);
* ``response_ids``: the response text tokenized without special tokens, then the
  tokenizer's EOS, cut to ``data.train_new_tokens`` tokens. The ``responses`` stage stops
  generating at that same token (``tokenizer.eos_token_id``, which it keeps), and cuts at the
  same length, so a response that ended within the budget ends with EOS in both;
* ``lookahead_ids``: ``[]``.

Where it differs from regenerated responses:

* the ids are the canonical tokenization of the text; a sampled response may have used
  another segmentation of the same text (rare; the text is the same);
* what the chat template puts in an assistant turn besides the content is not there: for
  Llama 3 that is nothing (the turn is the content, then ``<|eot_id|>``, the EOS), but a
  template that wraps the answer (reasoning channels of gpt-oss, ``<think>`` blocks) wraps
  regenerated responses and not released ones;
* the release was sampled by its authors (their temperature and engine), not with
  ``data.train_temperature`` and this target's ``dtype``;
* a regenerated training row's ``lookahead_ids`` holds the padding ``generate`` added after
  EOS in its batch (features without loss); a released row has none.

Rows are read in slices (:func:`~specbench.data.hub.open_rows`) in stored order, or in the
source's seeded permutation, and yielded one by one, so 660k rows never sit in memory at once;
only a 16-byte digest of each prompt taken is kept, to drop repeats. Skipped, and counted:
rows without a usable prompt or response text, prompts seen before, and prompts that are
evaluation prompts of the domain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

from specbench.artifacts import ResponseRow
from specbench.data.generate import chat_prompt_ids
from specbench.data.hub import (
    SLICE_ROWS,
    CompletionsSource,
    content_text,
    open_rows,
    prompt_text,
)


@dataclass
class CompletionStats:
    """What happened to the rows read (those that passed the source's filter)."""

    rows: int = 0  # read
    kept: int = 0
    no_prompt: int = 0  # no prompt text at the field path (missing, empty, not text)
    no_response: int = 0  # no response text at the response field path
    repeated: int = 0  # a prompt taken from an earlier row
    eval_prompt: int = 0  # an evaluation prompt of the domain (kept out of training)
    cut_prompts: int = 0  # prompts longer than data.max_prompt_tokens
    cut_responses: int = 0  # responses longer than data.train_new_tokens (EOS cut off)

    def summary(self) -> str:
        """``rows=…, kept=…, …``: one line for the log."""
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def completion_rows(
    source: CompletionsSource,
    tokenizer: Any,
    n: int,
    max_prompt_tokens: int,
    max_new_tokens: int,
    exclude: Iterable[str] = (),
    stats: CompletionStats | None = None,
    seed: int = 0,
) -> Iterator[ResponseRow]:
    """The first ``n`` usable rows of released completions, in the ``responses`` format.

    ``exclude``: prompts never taken (the domain's evaluation prompts; compared stripped).
    Fewer than ``n`` usable rows is not an error here: the caller reads ``stats``. Raises
    FileNotFoundError with download instructions when the dataset is not on disk.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    stats = stats if stats is not None else CompletionStats()
    held_out = {p.strip() for p in exclude}
    eos = tokenizer.eos_token_id
    seen: set[bytes] = set()
    _, rows = open_rows(source, [source.field, source.response_field], seed, "completions")
    pending: list[tuple[str, str]] = []

    def flush() -> Iterator[ResponseRow]:
        if not pending:
            return
        batch = [[p for p, _ in pending], [r for _, r in pending]]
        prompts, responses = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in batch)
        for (prompt, _), content, ids in zip(pending, prompts, responses, strict=True):
            ids = [*ids, eos]
            stats.cut_responses += len(ids) > max_new_tokens
            stats.cut_prompts += len(content) > max_prompt_tokens
            prompt_ids = chat_prompt_ids(tokenizer, prompt, max_prompt_tokens)
            yield ResponseRow(stats.kept, prompt_ids, ids[:max_new_tokens])
            stats.kept += 1
        pending.clear()

    taken = 0
    for _, (prompt_value, response_value) in rows:
        stats.rows += 1
        try:
            prompt = (prompt_text(prompt_value) or "").strip()
        except ValueError:  # neither text nor a chat: no usable prompt
            prompt = ""
        response = content_text(response_value) or ""
        if not prompt:
            stats.no_prompt += 1
        elif not response.strip():
            stats.no_response += 1
        elif prompt in held_out:
            stats.eval_prompt += 1
        elif (key := _digest(prompt)) in seen:
            stats.repeated += 1
        else:
            seen.add(key)
            pending.append((prompt, response))
            taken += 1
            if len(pending) == SLICE_ROWS or taken == n:
                yield from flush()
            if taken == n:
                return
    yield from flush()
