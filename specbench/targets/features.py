"""Target feature cache: the target runs once per (target, split); every draft × loss reuses it.

Per cached token position ``i`` of a sequence we keep
- ``features[i]``: hidden states of the (low, mid, high, last) layers, ``[4, d]``;
- ``logprobs[i]``: ``log p_i(v)`` for every draft-vocabulary token ``v`` — the target's
  next-token log-probabilities normalised over the *full* vocabulary, then sliced, so both
  the original ``p`` (``exp``) and the renormalised ``p̃`` (``softmax``) are exact;
- ``target_argmax[i]``: the full-vocabulary argmax (T=0 acceptance needs it);
- ``loss_mask[i]``: the next token ``x_{i+1}`` is a response token.
Sequences are concatenated; ``offsets`` delimits them. Full-vocabulary float buffers exist
only for one chunk of positions at a time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from specbench.io import tmp_path_for
from specbench.targets.runner import TargetRunner


def build_draft_vocab(
    responses: list[list[int]], size: int, always: tuple[int, ...] = ()
) -> tuple[torch.Tensor, float]:
    """Most frequent response tokens (plus ``always``); returns (draft→target ids, coverage).

    Coverage is the fraction of response tokens inside the draft vocabulary: an upper bound
    on what any draft can be accepted on.
    """
    counts = Counter(t for r in responses for t in r)
    keep = list(dict.fromkeys([*always, *(t for t, _ in counts.most_common())]))[:size]
    total = sum(counts.values())
    covered = sum(counts[t] for t in keep)
    return torch.tensor(sorted(keep), dtype=torch.long), covered / max(total, 1)


@dataclass
class Sequence:
    """A prompt, its response, and optional look-ahead tokens.

    ``lookahead_ids`` continue the sequence past the response's end (a greedy continuation
    generated through EOS, for T=0 replay); they get features but ``loss_mask = False``.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    prompt_index: int
    lookahead_ids: list[int] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids + self.lookahead_ids


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


def concat_caches(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One cache from caches of consecutive runs of sequences (same draft vocabulary)."""
    if not parts:
        raise ValueError("no cache parts to concatenate")
    per_position = ("features", "logprobs", "target_argmax", "input_ids", "loss_mask")
    per_sequence = ("prompt_len", "prompt_index")
    out = {k: torch.cat([p[k] for p in parts]) for k in per_position + per_sequence}
    lengths = torch.cat([p["offsets"].diff() for p in parts])
    out["offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    out["draft_to_target"] = parts[0]["draft_to_target"]
    return out


def save_cache(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write the cache atomically (a killed run leaves no half-written file behind)."""
    tmp = tmp_path_for(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


class FeatureCache:
    """In-memory view of a cache file with per-sequence access and padded batches."""

    def __init__(self, path: str | Path) -> None:
        self.t = load_file(str(path))
        self.offsets = self.t["offsets"].tolist()
        self.draft_to_target = self.t["draft_to_target"]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_positions(self) -> int:
        return self.offsets[-1]

    def sequence(self, i: int) -> dict[str, torch.Tensor]:
        a, b = self.offsets[i], self.offsets[i + 1]
        keys = ("features", "logprobs", "target_argmax", "input_ids", "loss_mask")
        out = {k: self.t[k][a:b] for k in keys}
        out["prompt_len"] = self.t["prompt_len"][i]
        out["prompt_index"] = self.t["prompt_index"][i]
        return out

    def batch(
        self, indices: list[int], device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """Right-padded batch: ``attention_mask`` marks real tokens, pads carry ``loss_mask=0``.

        Built in host memory, then copied to ``device`` (if given).
        """
        seqs = [self.sequence(i) for i in indices]
        width = max(s["input_ids"].numel() for s in seqs)
        out: dict[str, torch.Tensor] = {}
        for key in ("features", "logprobs", "target_argmax", "input_ids", "loss_mask"):
            ref = seqs[0][key]
            buf = torch.zeros((len(seqs), width, *ref.shape[1:]), dtype=ref.dtype)
            for r, s in enumerate(seqs):
                buf[r, : s[key].shape[0]] = s[key]
            out[key] = buf
        lengths = torch.tensor([s["input_ids"].numel() for s in seqs])
        out["attention_mask"] = torch.arange(width)[None, :] < lengths[:, None]
        out["prompt_index"] = torch.stack([s["prompt_index"] for s in seqs])
        if device is not None:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out
