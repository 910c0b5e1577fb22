"""Multi-stage MLP speculator (Wertheimer et al. 2024), after IBM's ``fms-extras`` MLPSpeculator.

State ``s_0 = h^last_i`` (optionally ``LN(h)/√2`` with ``scale_input``); stage ``k = 1..K``::

    z_k   = E_k[y_{k-1}] · w_e · √(inner/2)          y_0 = x_{i+1}, then drafted / teacher-
    s_k   = GELU(LN_k(P_k s_{k-1} · w_s + z_k))       forced tokens x_{i+2}, x_{i+3}, ...
    logits_k = H_k s_k                                predicts x_{i+1+k}

with ``w_s = 0.5^(0.5/K)`` and ``w_e = √(1 − w_s²)`` (fms-extras: "state_0 accounts for 50%
of state magnitude by final head in expectation"), LayerNorm with affine terms, exact GELU,
and fms-extras' init ``trunc_normal(0, 1/√inner)`` for E, P, H.

Vocabulary: our drafts share a truncated draft vocabulary, so ``E_k`` has ``V_draft + 1`` rows
(the last row for target tokens outside the draft vocabulary, which can still appear as
``x_{i+1}`` or as a teacher-forced token) and ``H_k`` outputs ``V_draft`` logits. fms-extras'
weight tying options are not offered (tied tensors cannot be saved with safetensors).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specbench.drafts.base import Draft, DraftSession, SampleFn, TrainOutput, register_draft
from specbench.drafts.layers import register_vocab
from specbench.features import LAST
from specbench.targets.info import TargetInfo


@register_draft("mlp_speculator")
class MLPSpeculator(Draft):
    """Hparams: ``num_stages`` (fms-extras ``n_predict``; default 6, = max_k),
    ``inner_dim`` (default: the target's hidden size), ``scale_input`` (default False)."""

    def __init__(
        self,
        info: TargetInfo,
        num_stages: int = 6,
        inner_dim: int | None = None,
        scale_input: bool = False,
    ) -> None:
        n, d = int(num_stages), info.hidden_size
        inner = int(inner_dim or d)
        super().__init__(info, num_stages=n, inner_dim=inner, scale_input=bool(scale_input))
        self.max_k, self.inner_dim = n, inner
        vd = info.draft_vocab_size
        self.emb = nn.ModuleList(nn.Embedding(vd + 1, inner) for _ in range(n))
        self.proj = nn.ModuleList(
            nn.Linear(d if i == 0 else inner, inner, bias=False) for i in range(n)
        )
        self.ln = nn.ModuleList(nn.LayerNorm(inner, eps=1e-6) for _ in range(n))
        self.head = nn.ModuleList(nn.Linear(inner, vd, bias=False) for _ in range(n))
        self.ln0 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False) if scale_input else None
        self.state_weight = 0.5 ** (0.5 / n)
        self.emb_weight = math.sqrt(1 - self.state_weight**2)
        for module in [*self.emb, *self.proj, *self.head]:
            nn.init.trunc_normal_(module.weight, 0.0, 1 / math.sqrt(inner))
        register_vocab(self, info, embedding=False)

    def initial_state(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.head[0].weight.dtype)
        return h if self.ln0 is None else self.ln0(h) / math.sqrt(2)

    def stage(self, k: int, state: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Stage ``k`` (0-based): new state from the previous state and draft-vocab ids ``prev``."""
        z = self.emb[k](prev) * (self.emb_weight * math.sqrt(self.inner_dim / 2))
        return F.gelu(self.ln[k](self.proj[k](state) * self.state_weight + z))

    def forward_train(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
    ) -> TrainOutput:
        self.check_k(k)
        B, L = input_ids.shape
        state = self.initial_state(features[..., LAST, :])
        # stage j consumes x_{i+j} (0 past the end: those rows are masked by the loss)
        prev = self.t2d[F.pad(input_ids, (0, k), value=0)]
        logits = []
        for j in range(k):
            state = self.stage(j, state, prev[:, 1 + j : 1 + j + L])
            logits.append(self.head[j](state))
        anchors = torch.arange(L, device=input_ids.device).expand(B, L)
        return TrainOutput(torch.stack(logits, dim=2), anchors)

    def start_session(self) -> MLPSpeculatorSession:
        return MLPSpeculatorSession(self)

    def flops_per_step(self) -> float:
        """One stage (projection, norm, head) on average; embedding lookups are free."""
        n = sum(p.numel() for name, p in self.named_parameters() if not name.startswith("emb."))
        return 2.0 * n / self.max_k


class MLPSpeculatorSession(DraftSession):
    """Keeps the last verified position's feature and the token that follows it."""

    def __init__(self, draft: MLPSpeculator) -> None:
        self.draft = draft
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        if next_tokens.numel():
            self.last = (features[-1, LAST], next_tokens.reshape(-1)[-1])

    @torch.no_grad()
    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.draft
        if self.last is None:
            raise RuntimeError("propose() before any extend()")
        d.check_k(k)
        h, next_token = self.last
        state, prev = d.initial_state(h), d.t2d[next_token]
        ids, logits = [], []
        for j in range(k):
            state = d.stage(j, state, prev)
            logits.append(d.head[j](state))
            ids.append(int(sample_fn(logits[-1])))
            prev = torch.tensor(ids[-1], device=state.device)
        out = torch.stack(logits) if logits else state.new_empty(0, d.info.draft_vocab_size)
        return torch.tensor(ids, dtype=torch.long, device=state.device), out
