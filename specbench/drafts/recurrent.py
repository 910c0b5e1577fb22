"""Recurrent one-layer drafts (EAGLE-3, MTP) with EAGLE-3's training-time test (TTT).

At anchor ``i`` the draft runs one decoder step per draft step ``k = 1..K``::

    g_i^1 = step(emb(x_{i+1}), h0_i)          h0_i = initial_hidden(features_i)
    g_i^k = step(emb(x_{i+k}), g_i^{k-1})     teacher-forced tokens, own hidden state
    logits_i^k = head(g_i^k)                  predicts x_{i+1+k}

Attention of step ``k`` at anchor ``i`` sees the step-1 keys of anchors ``≤ i`` plus its own
keys of steps ``2..k`` (SpecForge's "extend" diagonal); RoPE position is ``i + k − 1``.
Decoding is the same computation: ``extend`` runs step 1 for verified positions and keeps
their keys/values (the KV cache); ``propose`` appends its chain's K/V and discards them.

Anchor subsampling (hparam ``train_anchors``): step 1 must run at every position (its keys
are everyone's context), but the steps ``k ≥ 2`` of an anchor only attend to those step-1
keys and to the anchor's own earlier steps, never to other anchors' steps ``≥ 2``. So they
may run for a random subset of anchors only, giving exactly the logits of the full pass at
those anchors for roughly ``1/K`` of its cost when ``train_anchors ≪ L``.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from specbench.drafts.anchors import anchor_count, sample_anchors, with_first_target
from specbench.drafts.base import Draft, DraftSession, SampleFn, TrainOutput
from specbench.drafts.layers import KVCache, ttt_mask
from specbench.targets.info import TargetInfo


class RecurrentDraft(Draft):
    """Base class: subclasses define ``initial_hidden``, ``step`` and ``logits``.

    Hparam ``train_anchors``: anchors per sequence that run draft steps ``2..K`` in
    ``forward_train`` in training mode (uniformly among positions whose step-1 target
    exists, :func:`~specbench.drafts.anchors.with_first_target`); ``None``, or eval mode,
    = every position.
    """

    # recompute each TTT step's activations in backward (:meth:`recomputed_step`): set by
    # :meth:`prepare` where memory binds (CUDA); not an hparam, it changes no value
    recompute_steps: bool = False

    def __init__(self, info: TargetInfo, train_anchors: int | None = None, **hparams) -> None:
        train_anchors = anchor_count(train_anchors)
        super().__init__(info, train_anchors=train_anchors, **hparams)
        self.train_anchors = train_anchors

    def prepare(self, device: torch.device) -> None:
        """On CUDA, where memory binds, the TTT steps are recomputed in backward."""
        self.recompute_steps = torch.device(device).type == "cuda"

    def initial_hidden(self, features: torch.Tensor) -> torch.Tensor:
        """Target features ``[..., F, d]`` → the step-1 hidden input ``[..., d]``."""
        raise NotImplementedError

    def step(
        self,
        emb: torch.Tensor,  # [B, T, d] token embeddings
        hidden: torch.Tensor,  # [B, T, d] previous hidden states
        positions: torch.Tensor,  # [T] or [B, T] RoPE positions
        mask: torch.Tensor,  # [B, 1, T, S] bool
        cache: KVCache,
    ) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def embed(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Frozen target token embedding (a non-persistent buffer, see ``register_vocab``)."""
        return torch.nn.functional.embedding(target_ids, self.target_embed).to(self.dtype)

    def forward_train(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> TrainOutput:
        self.check_k(k)
        B, L = input_ids.shape
        valid = attention_mask.bool()
        # step j consumes x_{i+j}; past the end use token 0 (those rows are masked by the loss)
        ids = torch.nn.functional.pad(input_ids, (0, k), value=0)
        positions = torch.arange(L, device=input_ids.device)
        cache = KVCache()
        step = self.recomputed_step if self.recompute_steps and self.training else self.step
        # step 1 at every position: its keys/values are the context of every later step
        hidden = self.initial_hidden(features.to(self.dtype))
        hidden = step(self.embed(ids[:, 1 : 1 + L]), hidden, positions, ttt_mask(valid, 1), cache)
        if self.train_anchors is None or not self.training:
            # evaluation (expected τ) scores every anchor, the same ones for every loss
            anchors = positions.expand(B, L)
        else:  # steps ≥ 2 only at a few anchors: keep their step-1 states
            anchors = sample_anchors(with_first_target(valid), self.train_anchors, generator)
            hidden = hidden.gather(1, anchors[..., None].expand(-1, -1, hidden.shape[-1]))
        out = [self.logits(hidden)]
        for j in range(2, k + 1):
            # token x_{i+j}, per-row RoPE position i + j − 1; the cache holds the L step-1
            # keys, then A keys per earlier step (the layout ``ttt_mask`` describes)
            emb = self.embed(ids.gather(1, anchors + j))
            mask = ttt_mask(valid, j, anchors)
            hidden = step(emb, hidden, anchors + (j - 1), mask, cache)
            out.append(self.logits(hidden))
        return TrainOutput(torch.stack(out, dim=2), anchors)

    def recomputed_step(self, emb, hidden, positions, mask, cache: KVCache) -> torch.Tensor:
        """:meth:`step` under activation checkpointing: its activations are recomputed in
        backward instead of kept, so a TTT pass holds one step's at a time, not K steps'.

        The cache is passed in and out as tensors: the recomputation must see the keys the
        step saw, not the ones later steps appended."""

        def pure(emb, hidden, k, v):
            local = KVCache()
            local.k, local.v = k, v
            return self.step(emb, hidden, positions, mask, local), local.k, local.v

        hidden, cache.k, cache.v = checkpoint(
            pure, emb, hidden, cache.k, cache.v, use_reentrant=False
        )
        return hidden

    def start_session(self) -> RecurrentSession:
        return RecurrentSession(self)


class RecurrentSession(DraftSession):
    """KV cache of step-1 keys/values of the verified positions, plus the last step-1 output."""

    def __init__(self, draft: RecurrentDraft) -> None:
        self.draft = draft
        self.cache = KVCache()
        self.length = 0  # verified positions so far
        self.hidden: torch.Tensor | None = None  # [1, 1, d] step-1 output at the last position
        self.first_logits: torch.Tensor | None = None  # [V_draft] its logits

    @torch.no_grad()
    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        d, n, n0 = self.draft, next_tokens.numel(), self.length
        if n == 0:
            return
        hidden = d.initial_hidden(features[None].to(d.dtype))
        emb = d.embed(next_tokens.reshape(1, n))
        positions = torch.arange(n0, n0 + n, device=next_tokens.device)
        # new query j sees every cached key and new keys ≤ j
        mask = torch.ones(n, n0 + n, dtype=torch.bool, device=next_tokens.device).tril(n0)
        hidden = d.step(emb, hidden, positions, mask[None, None], self.cache)
        self.length += n
        self.hidden = hidden[:, -1:]
        self.first_logits = d.logits(self.hidden)[0, 0]

    @torch.no_grad()
    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.draft
        if self.hidden is None:
            raise RuntimeError("propose() before any extend()")
        d.check_k(k)
        device = self.hidden.device
        if k <= 0:
            return torch.empty(0, dtype=torch.long, device=device), self.first_logits[None][:0]
        committed = len(self.cache)
        logits = [self.first_logits]
        ids = [int(sample_fn(logits[0]))]
        hidden = self.hidden
        try:
            for j in range(2, k + 1):
                token = d.d2t[torch.tensor([[ids[-1]]], device=device)]
                pos = torch.tensor([self.length - 1 + j - 1], device=device)  # anchor + j − 1
                mask = torch.ones(1, 1, 1, len(self.cache) + 1, dtype=torch.bool, device=device)
                hidden = d.step(d.embed(token), hidden, pos, mask, self.cache)
                logits.append(d.logits(hidden)[0, 0])
                ids.append(int(sample_fn(logits[-1])))
        finally:
            self.cache.crop(committed)  # the chain's K/V are temporary
        return torch.tensor(ids, dtype=torch.long, device=device), torch.stack(logits)
