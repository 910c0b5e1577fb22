"""The target feature cache: written once per (target, split), read by every draft × loss.

Per cached token position ``i`` of a sequence we keep
- ``features[i]``: hidden states of the (low, mid, high, last) layers, ``[4, d]``;
- ``logprobs[i]``: ``log p_i(v)`` for every draft-vocabulary token ``v`` — the target's
  next-token log-probabilities normalised over the *full* vocabulary, then sliced, so both
  the original ``p`` (``exp``) and the renormalised ``p̃`` (``softmax``) are exact;
- ``target_argmax[i]``: the full-vocabulary argmax (T=0 acceptance needs it);
- ``loss_mask[i]``: the next token ``x_{i+1}`` is a response token;
- ``kv[i]`` (T=1 evaluation caches under ``eval.prefix_kv`` only): the target's KV cache
  entry of position ``i``, ``[num_layers, 2, num_kv_heads, head_dim]`` (keys after RoPE,
  then values, the target's dtype), from one forward over the whole sequence
  (:func:`specbench.targets.kv.sequence_kv`).
Sequences are concatenated; ``offsets`` delimits them. Full-vocabulary float buffers exist
only for one chunk of positions at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from specbench.artifacts import iter_responses
from specbench.io import tmp_path_for


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


class PackedSequences:
    """Many :class:`Sequence` held as one flat int32 tensor of token ids and their lengths.

    660k training responses as Python lists of ints take ~15 GB; packed, 4 bytes a token.
    Indexing returns a :class:`Sequence` (lists made on demand, for one batch at a time).
    """

    def __init__(self) -> None:
        self._ids: list[torch.Tensor] = []
        self._parts: list[tuple[int, int, int]] = []  # prompt, response, look-ahead lengths
        self._index: list[int] = []
        self.ids = torch.zeros(0, dtype=torch.int32)
        self.starts: list[int] = []

    def append(self, seq: Sequence) -> None:
        self._ids.append(torch.tensor(seq.ids, dtype=torch.int32))
        self._parts.append((len(seq.prompt_ids), len(seq.response_ids), len(seq.lookahead_ids)))
        self._index.append(seq.prompt_index)

    def freeze(self) -> PackedSequences:
        """Concatenate what was appended (call once, before reading)."""
        self.ids = torch.cat(self._ids) if self._ids else torch.zeros(0, dtype=torch.int32)
        lengths = torch.tensor([sum(p) for p in self._parts], dtype=torch.long)
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).tolist()
        self._ids = []
        return self

    def __len__(self) -> int:
        return len(self._parts)

    def __getitem__(self, i: int) -> Sequence:
        n_prompt, n_response, _ = self._parts[i]
        ids = self.ids[self.starts[i] : self.starts[i + 1]].tolist()
        return Sequence(
            ids[:n_prompt], ids[n_prompt : n_prompt + n_response], self._index[i],
            ids[n_prompt + n_response :],
        )  # fmt: skip

    def response_lengths(self) -> torch.Tensor:
        return torch.tensor([p[1] for p in self._parts])


def concat_caches(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One cache from caches of consecutive runs of sequences (same draft vocabulary)."""
    if not parts:
        raise ValueError("no cache parts to concatenate")
    per_position = ("features", "logprobs", "target_argmax", "input_ids", "loss_mask")
    per_sequence = ("prompt_len", "prompt_index")
    with_kv = {"kv" in p for p in parts}
    if len(with_kv) > 1:
        raise ValueError("cache parts with and without prefix KV rows")
    per_position += ("kv",) if with_kv == {True} else ()
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

    def __init__(self, path: str | Path | None = None, tensors: dict | None = None) -> None:
        """Read the cache at ``path``, or wrap ``tensors`` already in memory (the format
        :func:`specbench.targets.featurize.compute_features` returns)."""
        if (path is None) == (tensors is None):
            raise ValueError("give a cache path or its tensors, not both")
        self.t = load_file(str(path)) if tensors is None else tensors
        self.offsets = self.t["offsets"].tolist()
        self.draft_to_target = self.t["draft_to_target"]

    def response_tokens(self) -> torch.Tensor:
        """``[num_sequences]`` training positions (response tokens) of each sequence."""
        ends = torch.tensor(self.offsets)
        seen = torch.cat([torch.zeros(1, dtype=torch.long), self.t["loss_mask"].long().cumsum(0)])
        return seen[ends[1:]] - seen[ends[:-1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_positions(self) -> int:
        return self.offsets[-1]

    @property
    def has_kv(self) -> bool:
        """Whether the cache holds the target's prefix KV rows (``eval.prefix_kv``)."""
        return "kv" in self.t

    def sequence(self, i: int) -> dict[str, torch.Tensor]:
        """Sequence ``i``'s rows (``[T, ...]`` each; ``kv`` [T, L, 2, H, D] where stored),
        its ``prompt_len`` and ``prompt_index``."""
        a, b = self.offsets[i], self.offsets[i + 1]
        keys = ("features", "logprobs", "target_argmax", "input_ids", "loss_mask")
        keys += ("kv",) if self.has_kv else ()
        out = {k: self.t[k][a:b] for k in keys}
        out["prompt_len"] = self.t["prompt_len"][i]
        out["prompt_index"] = self.t["prompt_index"][i]
        return out

    def batch(
        self, indices: list[int], device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """Right-padded batch: ``attention_mask`` marks real tokens, pads carry ``loss_mask=0``.

        Built where the cache lives (host memory for a file), then copied to ``device``.
        """
        seqs = [self.sequence(i) for i in indices]
        width = max(s["input_ids"].numel() for s in seqs)
        out: dict[str, torch.Tensor] = {}
        for key in ("features", "logprobs", "target_argmax", "input_ids", "loss_mask"):
            ref = seqs[0][key]
            buf = ref.new_zeros((len(seqs), width, *ref.shape[1:]))
            for r, s in enumerate(seqs):
                buf[r, : s[key].shape[0]] = s[key]
            out[key] = buf
        here = out["input_ids"].device
        lengths = torch.tensor([s["input_ids"].numel() for s in seqs], device=here)
        out["attention_mask"] = torch.arange(width, device=here)[None, :] < lengths[:, None]
        out["prompt_index"] = torch.stack([s["prompt_index"] for s in seqs])
        if device is not None:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out


def iter_sequences(paths: list[str], merged: bool) -> Iterator[Sequence]:
    """The sequences of one or more domains' responses files, read line by line; ``merged``
    renumbers prompts to stay unique (0, 1, ... across the files)."""
    n = 0
    for path in paths:
        for r in iter_responses(path):
            yield Sequence(
                r.prompt_ids, r.response_ids, n if merged else r.prompt_index, r.lookahead_ids
            )
            n += 1


def read_sequences(paths: list[str], merged: bool) -> list[Sequence]:
    """:func:`iter_sequences` as a list (a cache job holds its sequences anyway)."""
    return list(iter_sequences(paths, merged))


def read_packed(paths: list[str]) -> PackedSequences:
    """:func:`iter_sequences` merged and packed (4 bytes a token: online training's data)."""
    packed = PackedSequences()
    for seq in iter_sequences(paths, merged=True):
        packed.append(seq)
    return packed.freeze()
