"""The contract every draft architecture implements, and the registry that names them.

Indexing convention (used by training, expected-τ and live decoding alike)
-------------------------------------------------------------------------
A sequence has tokens ``x_0 .. x_{L-1}``. The target has processed ``x_0..x_i`` and produced
features ``h_i`` (hidden states of a few layers at position ``i``) and the distribution
``p_i`` of ``x_{i+1}``. A draft *anchored* at position ``i`` knows ``h_{≤i}`` and the token
``x_{i+1}`` that follows ``i`` (sampled from ``p_i`` but not yet processed by the target).
Its draft step ``k = 1..K`` predicts ``x_{i+1+k}``, whose target distribution is ``p_{i+k}``.

Features are stacked as ``[..., F, d]`` (layout: :mod:`specbench.features`).
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from specbench.targets.info import TargetInfo
from specbench.targets.runner import feature_layer_indices


@dataclass
class TrainOutput:
    """Draft logits for ``K`` steps at a set of anchors.

    ``logits[b, a, k-1]`` is step ``k`` at anchor position ``anchors[b, a]``: it predicts
    ``input_ids[b, anchors[b, a] + 1 + k]`` against target distribution ``p_{anchor + k}``.
    """

    logits: torch.Tensor  # [B, A, K, V_draft]
    anchors: torch.Tensor  # [B, A] long


# sample_fn maps one step's draft logits [V_draft] to a drafted token id (draft vocabulary)
SampleFn = Callable[[torch.Tensor], int]


class DraftSession:
    """Decoding-time state of a draft for one sequence (batch size 1).

    The decoder calls ``extend`` with target-verified positions, then ``propose`` once per
    verification round. ``extend(features[n, F, d], next_tokens[n])`` appends ``n`` positions,
    where ``next_tokens[j]`` is the token that *follows* the j-th new position (the last one
    is the bonus/correction token just sampled from the target). ``propose`` drafts a chain
    anchored at the last extended position and must not change the committed state.
    """

    def begin(self, first_token: int) -> None:
        """Called once, before the first ``extend``, with the sequence's first token ``x_0``
        (no ``extend`` names it: it gives the tokens that *follow* positions). A draft that
        reads target features needs nothing more; one that reads tokens only does."""

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        raise NotImplementedError

    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (draft token ids [k] in draft vocab, draft logits [k, V_draft])."""
        raise NotImplementedError


class Draft(nn.Module):
    """Base class: a draft model trained on cached target features.

    Hyperparameters are the keyword parameters of the subclass's ``__init__`` after ``info``;
    :func:`register_draft` reads them and their defaults once. A subclass passes up to this
    ``__init__`` the values it resolved (e.g. ``intermediate_size=None`` → the target's
    width); the registration completes ``self.hparams`` with every other hparam, given or
    default. :meth:`save` writes them all, so :func:`load_draft` never falls back on a
    default that may have changed since.
    """

    arch: ClassVar[str] = ""
    hparam_defaults: ClassVar[dict[str, Any]] = {}  # set by register_draft
    # number of steps the architecture can draft; None = any (recurrent drafts)
    max_k: int | None = None
    # the vocabulary its reference implementation drafts over: "full" (the target's) or
    # "truncated" (the most frequent target tokens, EAGLE-3's d2t map); configs may override
    # it per architecture (``arch_vocab``), as a stated deviation
    reference_vocab: ClassVar[str] = "full"
    # the K it trains at whatever ``train.k`` says (None: ``train.k``); a draft whose steps
    # under teacher forcing are its first step at later positions trains K = 1
    train_k: ClassVar[int | None] = None

    def target_layers(self, num_hidden_layers: int) -> tuple[int, ...]:
        """The target's ``hidden_states`` indices this draft reads, stacked as the ``F`` of
        its features ``[..., F, d]``: by default the low, mid, high and last (normed) layers
        (:func:`~specbench.targets.runner.feature_layer_indices`), which the caches of the
        run's vocabularies hold. A draft that reads others says so here; its caches are then
        computed at its layers (the vocabulary file names them: an external draft's own)."""
        return feature_layer_indices(num_hidden_layers)

    def __init__(self, info: TargetInfo, **hparams: Any) -> None:
        super().__init__()
        unknown = sorted(set(hparams) - set(self.hparam_defaults))
        if self.arch and unknown:
            raise TypeError(f"{self.arch}: {unknown} are not parameters of its __init__")
        self.info = info
        self.hparams = dict(hparams)  # completed by register_draft's wrapper

    def check_k(self, k: int) -> None:
        """Raise if the architecture cannot draft ``k`` tokens (heads, stages, block)."""
        if self.max_k is not None and k > self.max_k:
            raise ValueError(f"{self.arch} drafts at most {self.max_k} steps, not {k}")

    # -- training -------------------------------------------------------------------------
    def forward_train(
        self,
        features: torch.Tensor,  # [B, L, F, d] target features
        input_ids: torch.Tensor,  # [B, L] target token ids
        attention_mask: torch.Tensor,  # [B, L] bool, True on real tokens
        k: int,
        generator: torch.Generator | None = None,
        loss_mask: torch.Tensor | None = None,  # [B, L] bool: x_{i+1} is a response token
    ) -> TrainOutput:
        """Logits of ``k`` teacher-forced steps at a set of anchors (training mode may draw a
        random subset, from ``generator``; eval mode scores every position). ``loss_mask``
        lets a draft draw its anchors among response positions; None = every real token."""
        raise NotImplementedError

    # -- decoding -------------------------------------------------------------------------
    def start_session(self) -> DraftSession:
        raise NotImplementedError

    def prepare(self, device: torch.device) -> None:
        """Choices by device that change what training holds, never a value; called by the
        trainer once the draft is on ``device`` (and by the planner, as if on a GPU)."""

    # -- bookkeeping ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the draft's parameters live (its inputs are moved there)."""
        return next(self.parameters()).device

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_step(self) -> float:
        """Forward FLOPs of one draft step for one token (≈ 2 × parameters touched)."""
        return 2.0 * sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path) -> None:
        """Write ``config.json``, then ``model.safetensors`` (trainable weights), atomically.

        The weights come last, so their presence marks a complete draft.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg_tmp = path / "config.json.tmp"
        cfg_tmp.write_text(json.dumps({"arch": self.arch, "hparams": self.hparams}, indent=2))
        cfg_tmp.replace(path / "config.json")
        aliases = tied_names(self)  # tied weights (draft_lm's embedding and head): once
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if k not in aliases
        }
        tmp = path / "model.safetensors.tmp"
        save_file(state, str(tmp))
        tmp.replace(path / "model.safetensors")


DRAFTS: dict[str, type[Draft]] = {}


def hparam_defaults(cls: type[Draft]) -> dict[str, Any]:
    """``{name: default}`` of the keyword parameters of ``cls.__init__`` after ``info``.

    Every one needs a default (a draft is buildable from its name alone) and no ``**kwargs``
    (the names are the complete, checkable list).
    """
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, info
    out = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            raise TypeError(f"{cls.__name__}.__init__: hparam {p.name!r} needs a default")
        out[p.name] = p.default
    return out


def register_draft(name: str) -> Callable[[type[Draft]], type[Draft]]:
    """Class decorator: make an architecture buildable by name, and record its hparams.

    This is the one place an architecture's name is written: importing
    :mod:`specbench.drafts` imports every module of the package. The decorator reads the
    hparams and their defaults from ``__init__`` (:func:`hparam_defaults`) and wraps it so
    that every instance records ``hparams = defaults ← values given ← values resolved``
    (the last are what the architecture passes up to :class:`Draft`, e.g. ``block="auto"``
    → ``"llama"``). A value given but not passed up is still recorded.
    """

    def wrap(cls: type[Draft]) -> type[Draft]:
        if name in DRAFTS:
            raise ValueError(f"draft architecture {name!r} registered twice")
        defaults = hparam_defaults(cls)
        init, signature = cls.__init__, inspect.signature(cls.__init__)

        @functools.wraps(init)
        def recording_init(self: Draft, info: TargetInfo, *args: Any, **kwargs: Any) -> None:
            given = signature.bind(self, info, *args, **kwargs).arguments
            init(self, info, *args, **kwargs)
            given = {k: v for k, v in given.items() if k in defaults}
            self.hparams = {**defaults, **given, **self.hparams}

        cls.__init__ = recording_init
        cls.arch, cls.hparam_defaults = name, defaults
        DRAFTS[name] = cls
        return cls

    return wrap


def build_draft(arch: str, info: TargetInfo, **hparams: Any) -> Draft:
    """Instantiate a registered draft architecture; unknown names list the valid ones."""
    if arch not in DRAFTS:
        raise ValueError(f"unknown draft architecture {arch!r}; valid: {sorted(DRAFTS)}")
    cls = DRAFTS[arch]
    unknown = sorted(set(hparams) - set(cls.hparam_defaults))
    if unknown:
        valid = sorted(cls.hparam_defaults)
        raise ValueError(f"{arch}: unknown hparams {unknown}; valid: {valid}")
    return cls(info, **hparams)


def load_draft(path: str | Path, info: TargetInfo) -> Draft:
    """Rebuild a draft saved with :meth:`Draft.save` against the same target."""
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    draft = build_draft(cfg["arch"], info, **cfg["hparams"])
    missing, unexpected = draft.load_state_dict(
        load_file(str(path / "model.safetensors")), strict=False
    )
    missing = set(missing) - set(tied_names(draft))  # loaded through the name they alias
    if missing or unexpected:
        raise RuntimeError(f"{path}: missing {sorted(missing)}, unexpected {unexpected}")
    return draft


def tied_names(module: nn.Module) -> dict[str, str]:
    """State-dict names whose tensor is an earlier name's (tied weights): name → that name."""
    first: dict[tuple[int, tuple[int, ...]], str] = {}
    out = {}
    for name, t in module.state_dict(keep_vars=True).items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in first and t.numel():
            out[name] = first[key]
        first.setdefault(key, name)
    return out
