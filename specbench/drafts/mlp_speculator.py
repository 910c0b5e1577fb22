"""Multi-stage MLP speculator (Wertheimer et al. 2024), after IBM's ``fms-extras`` MLPSpeculator.

State ``s_0 = h^last_i`` (with ``scale_input``: ``N(h)/√2``); stage ``k = 1..K``::

    z_k   = E_k[y_{k-1}] · w_e · √(inner/2)          y_0 = x_{i+1}, then drafted / teacher-
    s_k   = GELU(LN_k(P_k s_{k-1} · w_s + z_k))       forced tokens x_{i+2}, x_{i+3}, ...
    logits_k = H_k s_k                                predicts x_{i+1+k}

with ``w_s = 0.5^(0.5/K)`` and ``w_e = √(1 − w_s²)`` (fms-extras: "state_0 accounts for 50%
of state magnitude by final head in expectation"), exact GELU, and fms-extras' init
``trunc_normal(0, 1/√inner)`` for E, P, H. The norm is fms-extras'
``LayerNormParameterized(use_mean=False)`` (vLLM: ``MLPSpeculatorLayerNorm``), an RMS norm
with a bias, *not* a mean-centred LayerNorm::

    LN_k(x) = w_k ⊙ x / √(mean(x²) + ε) + b_k        ε = 1e-6, w = 1 and b = 0 at init
    N(x)    =       x / √(mean(x²) + ε)               (scale_input: no affine terms)

``tie_weights`` (fms-extras ``tie_wts``, used by the released large speculators, e.g. IBM's
Llama-3-70B and 34B code speculators, together with ``scale_input``): one embedding, one
head and one norm serve every stage, and the transitions ``P_2 .. P_K`` share one matrix
(``P_1`` reads the target's width and stays separate). Tied modules are stored once, so
stage ``k`` uses module ``min(k, n − 1)`` of a list of ``n`` (1 for E, H, LN; 2 for P).

Vocabulary: our drafts share a truncated draft vocabulary, so ``E_k`` has ``V_draft + 1`` rows
(the last row for target tokens outside the draft vocabulary, which can still appear as
``x_{i+1}`` or as a teacher-forced token) and ``H_k`` outputs ``V_draft`` logits.
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


class RMSNormWithBias(nn.Module):
    """``w ⊙ x / √(mean(x²) + ε) + b`` over the last axis; ``affine=False``: no ``w``, ``b``."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x if self.weight is None else self.weight * x + self.bias


def stage_module(modules: nn.ModuleList, k: int) -> nn.Module:
    """The module stage ``k`` (0-based) uses: its own, or the last shared one when tied."""
    return modules[min(k, len(modules) - 1)]


@register_draft("mlp_speculator")
class MLPSpeculator(Draft):
    """Hparams: ``num_stages`` (fms-extras ``n_predict``; default 6, = max_k),
    ``inner_dim`` (default: the target's hidden size), ``scale_input`` and ``tie_weights``
    (fms-extras ``scale_input`` / ``tie_wts``; default False, as fms-extras)."""

    def __init__(
        self,
        info: TargetInfo,
        num_stages: int = 6,
        inner_dim: int | None = None,
        scale_input: bool = False,
        tie_weights: bool = False,
    ) -> None:
        n, d = int(num_stages), info.hidden_size
        inner = int(inner_dim or d)
        tie, scale = bool(tie_weights), bool(scale_input)
        super().__init__(info, num_stages=n, inner_dim=inner, scale_input=scale, tie_weights=tie)
        self.max_k, self.inner_dim = n, inner
        vd = info.draft_vocab_size
        shared = 1 if tie else n  # modules stored per list
        self.emb = nn.ModuleList(nn.Embedding(vd + 1, inner) for _ in range(shared))
        self.proj = nn.ModuleList(
            nn.Linear(d if i == 0 else inner, inner, bias=False)
            for i in range(min(2, n) if tie else n)
        )
        self.ln = nn.ModuleList(RMSNormWithBias(inner) for _ in range(shared))
        self.head = nn.ModuleList(nn.Linear(inner, vd, bias=False) for _ in range(shared))
        self.ln0 = RMSNormWithBias(d, affine=False) if scale else None
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
        emb, proj, ln = (stage_module(m, k) for m in (self.emb, self.proj, self.ln))
        z = emb(prev) * (self.emb_weight * math.sqrt(self.inner_dim / 2))
        return F.gelu(ln(proj(state) * self.state_weight + z))

    def stage_logits(self, k: int, state: torch.Tensor) -> torch.Tensor:
        """``H_k s_k``: draft-vocab logits of stage ``k`` (0-based)."""
        return stage_module(self.head, k)(state)

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
        state = self.initial_state(features[..., LAST, :])
        # stage j consumes x_{i+j} (0 past the end: those rows are masked by the loss)
        prev = self.t2d[F.pad(input_ids, (0, k), value=0)]
        logits = []
        for j in range(k):
            state = self.stage(j, state, prev[:, 1 + j : 1 + j + L])
            logits.append(self.stage_logits(j, state))
        anchors = torch.arange(L, device=input_ids.device).expand(B, L)
        return TrainOutput(torch.stack(logits, dim=2), anchors)

    def start_session(self) -> MLPSpeculatorSession:
        return MLPSpeculatorSession(self)

    def flops_per_step(self) -> float:
        """One stage (projection, norm, head) on average; embedding lookups are free."""
        size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        per_stage = [
            sum(size(stage_module(mods, k)) for mods in (self.proj, self.ln, self.head))
            for k in range(self.max_k)
        ]
        return 2.0 * sum(per_stage) / self.max_k


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
            logits.append(d.stage_logits(j, state))
            ids.append(int(sample_fn(logits[-1])))
            prev = torch.tensor(ids[-1], device=state.device)
        out = torch.stack(logits) if logits else state.new_empty(0, d.info.draft_vocab_size)
        return torch.tensor(ids, dtype=torch.long, device=state.device), out
