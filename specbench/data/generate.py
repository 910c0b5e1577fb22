"""Regenerate responses with the target itself (as the LK paper does) and store them.

Training drafts on the target's own samples at T=1 makes the draft imitate the target's
distribution rather than a dataset's; evaluation responses are regenerated the same way
(T=1 for expected τ at T=1, greedy for T=0 and for replay).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from specbench.dist import lockstep_batches


def chat_prompt_ids(tokenizer, prompt: str, max_prompt_tokens: int) -> list[int]:
    """Apply the target's chat template to ``prompt`` cut to its first ``max_prompt_tokens``.

    The cut is on the user's text, not on the templated ids, so the system turn and the
    assistant header the model needs to answer always survive.
    """
    content = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(content) > max_prompt_tokens:
        prompt = tokenizer.decode(content[:max_prompt_tokens])
    msgs = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # BatchEncoding in recent transformers
        ids = ids["input_ids"]
    return list(ids)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def generate_responses(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 16,
    through_eos: bool = False,
    progress=None,
    shard: tuple[int, int] = (0, 1),
    synced_gpus: bool = False,
) -> list[list[int] | None]:
    """Sample a response per prompt from the raw target distribution (no top-k/top-p).

    ``temperature == 0`` is greedy. Responses end at the tokenizer's EOS token, which is
    kept, so drafts learn to predict the end of a turn; with ``through_eos`` generation runs
    on past EOS for all ``max_new_tokens`` (the look-ahead that T=0 replay needs).

    ``shard=(rank, world)``: this rank generates every ``world``-th batch (batches are formed
    and seeded globally, so the samples do not depend on ``world``) and returns ``None`` for
    the other ranks' prompts. ``synced_gpus`` (ZeRO-3 over several ranks): every rank runs
    the same number of ``generate`` calls, padding with a discarded repeat of batch 0.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    result: list[list[int] | None] = [None] * len(prompt_ids)
    # sort by length so each left-padded batch wastes little compute; restore order after
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = list(enumerate(_batches(order, batch_size)))
    rank, world = shard
    done = 0
    for (bi, idx), real in lockstep_batches(batches, rank, world, pad=synced_gpus):
        width = max(len(prompt_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            p = prompt_ids[i]
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        torch.manual_seed(seed * 1_000_003 + bi)
        sampling = (
            {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0}
            if temperature > 0
            else {"do_sample": False}
        )
        gen_cfg = copy.deepcopy(model.generation_config)
        gen_cfg.eos_token_id = None if through_eos else eos
        gen_cfg.pad_token_id = pad
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if through_eos else 0,
            generation_config=gen_cfg,
            synced_gpus=synced_gpus,
            **sampling,
        )
        if not real:  # a lockstep filler: ran only to keep the ZeRO-3 ranks in step
            continue
        for r, i in enumerate(idx):
            result[i] = gen[r, width:].tolist()
        done += len(idx)
        if progress:
            progress(done, len(prompt_ids))
    return result


def split_at_eos(ids: list[int], eos: int) -> tuple[list[int], list[int]]:
    """(response through its first EOS, what follows); no EOS: all of it is the response."""
    if eos in ids:
        cut = ids.index(eos) + 1
        return ids[:cut], ids[cut:]
    return ids, []
