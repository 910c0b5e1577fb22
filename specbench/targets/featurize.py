"""Run the target over whole sequences and keep what drafts need (the feature cache's rows).

The cache format is :mod:`specbench.features.cache`; this module is the only code that runs
a target to make it: written once to disk (:func:`compute_features`, the ``features_*``
stages), or computed batch by batch while drafts train (:class:`OnlineFeatures`).
"""

from __future__ import annotations

import torch

from specbench.features.cache import FeatureCache, PackedSequences, Sequence
from specbench.targets.kv import prefill, sequence_kv
from specbench.targets.runner import TargetRunner


@torch.no_grad()
def compute_features(
    runner: TargetRunner,
    sequences: list[Sequence],
    draft_to_target: torch.Tensor,
    batch_size: int = 8,
    vocab_chunk_positions: int = 512,
    progress=None,
    out_device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Run the target over whole sequences (right-padded batches) and slice what drafts need.

    The result lives on ``out_device``: host memory for a cache written to disk, the
    target's device for online training (no round trip of ~6 GB per batch of 64 sequences).
    """
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
                logps.append(torch.log_softmax(chunk, dim=-1).index_select(-1, dt).to(out_device))
                argmax.append(chunk.argmax(-1).to(out_device))
            feats.append(step.features[r, :n].float().to(out_device))
            ids.append(torch.tensor(t, device=out_device))
            m = torch.zeros(n, dtype=torch.bool, device=out_device)
            # the next token is a response token (not prompt, not look-ahead)
            m[len(s.prompt_ids) - 1 : len(s.prompt_ids) + len(s.response_ids) - 1] = True
            mask.append(m)
        del step
        if progress:
            progress(min(start + batch_size, len(sequences)), len(sequences))
    lengths = torch.tensor([len(s.ids) for s in sequences], device=out_device)
    zero = torch.zeros(1, dtype=torch.long, device=out_device)
    return {
        "features": torch.cat(feats),
        "logprobs": torch.cat(logps),
        "target_argmax": torch.cat(argmax),
        "input_ids": torch.cat(ids),
        "loss_mask": torch.cat(mask),
        "offsets": torch.cat([zero, lengths.cumsum(0)]),
        "prompt_len": torch.tensor([len(s.prompt_ids) for s in sequences], device=out_device),
        "prompt_index": torch.tensor([s.prompt_index for s in sequences], device=out_device),
        "draft_to_target": draft_to_target.to(out_device),
    }


@torch.no_grad()
def compute_prefix_kv(
    runner: TargetRunner,
    sequences: list[Sequence],
    forwards: int | None = None,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The target's KV cache over each whole sequence, rows concatenated: ``[P, L, 2, H, D]``
    (the cache's ``kv``, ``P`` = the sequences' total length, the target's dtype).

    One forward per sequence, unpadded: :func:`specbench.targets.kv.sequence_kv`, the
    unbiased estimator's own prefill, so the rows are what it would compute itself.
    ``forwards``: run that many forwards in all, the extra ones on the first sequence with
    their result dropped (under ZeRO-3 every rank must run as many as the others).
    """
    if forwards is not None and forwards < len(sequences):
        raise ValueError(f"{len(sequences)} sequences need as many forwards, not {forwards}")
    rows = [sequence_kv(runner, torch.tensor(s.ids)).to(out_device) for s in sequences]
    for _ in range(len(sequences), forwards or 0):
        prefill(runner, torch.tensor(sequences[0].ids))  # lockstep filler, dropped
    return torch.cat(rows)


class OnlineFeatures:
    """A feature cache computed on demand: :meth:`batch` runs the target over its sequences.

    It answers what :class:`FeatureCache` answers (``len``, ``draft_to_target``,
    :meth:`response_tokens`, :meth:`batch`), so the trainer reads either. A batch costs one
    target forward (counted in ``forwards``) over the batch's sequences, right-padded; its
    rows are those the cache would hold, up to the float differences of another padding
    width (each cache batch is padded to its own longest sequence).
    """

    def __init__(
        self,
        runner: TargetRunner,
        sequences: list[Sequence] | PackedSequences,
        draft_to_target: torch.Tensor,
    ) -> None:
        self.runner, self.sequences, self.draft_to_target = runner, sequences, draft_to_target
        self.forwards = 0
        self.runs_target = True  # each rank computes its own batches (the trainer shares them)

    def __len__(self) -> int:
        return len(self.sequences)

    def response_tokens(self) -> torch.Tensor:
        if isinstance(self.sequences, PackedSequences):
            return self.sequences.response_lengths()
        return torch.tensor([len(s.response_ids) for s in self.sequences])

    def batch(
        self, indices: list[int], device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        seqs = [self.sequences[i] for i in indices]
        device = self.runner.device if device is None else device
        tensors = compute_features(
            self.runner, seqs, self.draft_to_target, batch_size=len(seqs), out_device=device
        )
        self.forwards += 1
        return FeatureCache(tensors=tensors).batch(list(range(len(seqs))), device)
