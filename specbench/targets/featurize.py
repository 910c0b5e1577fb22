"""Run the target over whole sequences and keep what drafts need (the feature cache's rows).

The cache format is :mod:`specbench.features.cache`; this module is the only writer that runs
a target.
"""

from __future__ import annotations

import torch

from specbench.features.cache import Sequence
from specbench.targets.runner import TargetRunner


@torch.no_grad()
def compute_features(
    runner: TargetRunner,
    sequences: list[Sequence],
    draft_to_target: torch.Tensor,
    batch_size: int = 8,
    vocab_chunk_positions: int = 512,
    progress=None,
) -> dict[str, torch.Tensor]:
    """Run the target over whole sequences (right-padded batches) and slice what drafts need."""
    feats, logps, argmax, ids, mask = [], [], [], [], []
    dt = draft_to_target.to(runner.device)
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        toks = [s.ids for s in batch]
        width = max(len(t) for t in toks)
        inp = torch.zeros((len(batch), width), dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        for r, t in enumerate(toks):
            inp[r, : len(t)] = torch.tensor(t)
            att[r, : len(t)] = 1
        step = runner.forward(inp, attention_mask=att, use_cache=False)
        for r, (s, t) in enumerate(zip(batch, toks, strict=True)):
            n = len(t)
            logits = step.logits[r, :n]
            # normalise over the full vocabulary chunk by chunk, keep only the draft slice
            for c in range(0, n, vocab_chunk_positions):
                chunk = logits[c : c + vocab_chunk_positions].float()
                logps.append(torch.log_softmax(chunk, dim=-1).index_select(-1, dt).cpu())
                argmax.append(chunk.argmax(-1).cpu())
            feats.append(step.features[r, :n].float().cpu())
            ids.append(torch.tensor(t))
            m = torch.zeros(n, dtype=torch.bool)
            # the next token is a response token (not prompt, not look-ahead)
            m[len(s.prompt_ids) - 1 : len(s.prompt_ids) + len(s.response_ids) - 1] = True
            mask.append(m)
        del step
        if progress:
            progress(min(start + batch_size, len(sequences)), len(sequences))
    lengths = torch.tensor([len(s.ids) for s in sequences])
    return {
        "features": torch.cat(feats),
        "logprobs": torch.cat(logps),
        "target_argmax": torch.cat(argmax),
        "input_ids": torch.cat(ids),
        "loss_mask": torch.cat(mask),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        "prompt_len": torch.tensor([len(s.prompt_ids) for s in sequences]),
        "prompt_index": torch.tensor([s.prompt_index for s in sequences]),
        "draft_to_target": draft_to_target.cpu(),
    }
