"""An independent draft language model: the TVD++ paper's drafter, vLLM's ``draft_model``.

A small causal LM with the target's tokenizer drafts autoregressively with its own KV cache;
it reads no target features, only tokens. Under teacher forcing, draft step ``k`` at anchor
``i`` is the LM's output at position ``i + k`` (it has read ``x_0 .. x_{i+k}``)::

    h       = LM(x_0 .. x_{L-1})                  [B, L, d]  causal: h_j sees x_{≤j}
    logits  = lm_head(h)                          over the draft vocabulary (target ids d2t)
    step k at anchor i  =  logits[:, i + k]       predicts x_{i+1+k}, target p_{i+k}

so the steps ``k ≥ 2`` of an anchor are step 1 of later anchors. Training therefore runs
K = 1 at every position (``train_k``), which is what the references do: the TVD++ paper
(Goel et al. 2024, arXiv 2403.00858) and DistillSpec distil per token on target-generated
responses; training K > 1 would count each position K times under the head decay.

Where it comes from (hparam ``init``):

- ``target_layers``: the target's embedding, first ``layers`` decoder layers, final norm and
  LM head (a self-speculative start, as LayerSkip / Kangaroo's drafters), then fine-tuned;
- ``pretrained``: ``model``, a hub id or folder with the target's tokenizer (Llama-3.2-1B-
  Instruct for Llama-3.1-8B / 3.3-70B, Qwen3-0.6B for Qwen3-235B); another tokenizer is
  refused, since the draft's token ids are the target's;
- ``scratch``: the target's class at the TVD++ drafter's proportions (Llama 2 Chat Drafter
  115M for the 7B: 4/32 of the layers, 1/4 of the width, heads and MLP), randomly
  initialised from the draft's seed.

Over the full vocabulary every parameter trains, as in the TVD++ paper's fine-tuning; over a
truncated one (a stated CPU deviation) the head holds the draft vocabulary's rows, untied,
and the input embedding is frozen, as EAGLE-3's. With a deterministic init
(``target_layers``, ``pretrained``) a draft's seed changes only its ``train_anchors`` draws:
with ``train_anchors`` None every seed trains the same draft.

Deviations from vLLM's ``draft_model`` serving: none in the computation (the export is the
LM itself); a draft trained on a truncated vocabulary scores only those target ids, which the
export cannot express, so only full-vocabulary drafts are served (``formats/draft_lm.py``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from specbench.drafts.anchors import (
    anchor_count,
    in_response,
    sample_anchors,
    with_first_target,
)
from specbench.drafts.base import Draft, DraftSession, SampleFn, TrainOutput, register_draft
from specbench.drafts.layers import register_vocab
from specbench.targets.info import TargetInfo
from specbench.targets.quantized import quant_method

INITS = ("target_layers", "pretrained", "scratch")
# the TVD++ drafter against its 7B target: depth 4 of 32 layers; width, heads, MLP 1/4
DEPTH_RATIO, WIDTH_RATIO = 1 / 8, 1 / 4


# set by the planner, which traces shapes, not values: build the LM from its config alone
# (weights as initialised, no checkpoint read), a pretrained ``model``'s config from this
CONFIG_ONLY: ContextVar[Callable[[str], Any] | None] = ContextVar("config_only", default=None)


def truncated_config(cfg, layers: int):
    """``cfg`` with its first ``layers`` decoder layers (per-layer lists cut to match)."""
    n = int(cfg.num_hidden_layers)
    if not 1 <= layers <= n:
        raise ValueError(f"draft_lm: layers must be in 1..{n} (the target's), got {layers}")
    cfg = copy.deepcopy(cfg)
    for key, value in list(vars(cfg).items()):
        if isinstance(value, list) and len(value) == n:  # layer_types, mlp_layer_types …
            setattr(cfg, key, value[:layers])
    cfg.num_hidden_layers = layers
    if getattr(cfg, "num_nextn_predict_layers", 0):
        cfg.num_nextn_predict_layers = 0  # DeepSeek's MTP layer is not a decoder layer
    return cfg


def scratch_config(cfg, layers: int, width: float, intermediate_size: int | None = None):
    """The target's config at ``width`` of its width, heads and FFN (``intermediate_size``
    if given: TVD++'s drafter has 2816, not 11008 / 4), with ``layers`` layers."""
    cfg = truncated_config(cfg, min(layers, int(cfg.num_hidden_layers)))
    heads = max(1, round(cfg.num_attention_heads * width))
    kv = max(1, min(heads, round(getattr(cfg, "num_key_value_heads", heads) * width)))
    while heads % kv:
        kv -= 1
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = heads, kv, head_dim
    cfg.hidden_size = max(heads, round(cfg.hidden_size * width))
    for key in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        if getattr(cfg, key, None):
            setattr(cfg, key, max(1, round(getattr(cfg, key) * width)))
    if intermediate_size is not None:
        cfg.intermediate_size = int(intermediate_size)
    return cfg


def tokenizer_mismatch(draft_source, target_folder, draft_vocab: int, vocab: int) -> str | None:
    """Why a draft model's tokenizer is not the target's (None if it is, as far as both
    folders say): vocabulary sizes, then every token string ↔ id, then BOS/EOS."""
    if draft_vocab != vocab:
        return f"vocab_size {draft_vocab}, the target's {vocab}"
    if target_folder is None:
        return None  # a target in memory: the sizes are all there is to compare
    from transformers import AutoTokenizer

    try:
        mine = AutoTokenizer.from_pretrained(str(draft_source))
        theirs = AutoTokenizer.from_pretrained(str(target_folder))
    except (OSError, ValueError) as err:  # one of them ships no tokenizer files
        warnings.warn(
            f"draft_lm: only the vocabulary sizes of {draft_source} and {target_folder} were "
            f"compared; a tokenizer did not load ({type(err).__name__}: {err})",
            stacklevel=2,
        )
        return None
    a, b = mine.get_vocab(), theirs.get_vocab()
    if a != b:
        differ = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])
        tok, i = differ[0]
        return f"{len(differ)} token ↔ id pairs differ, e.g. {tok!r} ↔ {i}"
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(mine, name) != getattr(theirs, name):
            return f"{name} {getattr(mine, name)}, the target's {getattr(theirs, name)}"
    return None


def build_lm(
    info: TargetInfo, init: str, layers: int, model: str | None, width: float, ffn: int | None
):
    """The causal LM (float32, sdpa attention) an ``init`` gives, with its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    target_cfg = info.extra.get("hf_config")
    kw = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    config_only = CONFIG_ONLY.get()
    if init == "pretrained":
        if not model:
            raise ValueError("draft_lm: init 'pretrained' needs model: a hub id or a folder")
        if config_only is not None:
            return AutoModelForCausalLM.from_config(config_only(model), **kw)
        cfg = AutoConfig.from_pretrained(model)
        why = tokenizer_mismatch(model, info.checkpoint, int(cfg.vocab_size), info.vocab_size)
        if why:
            raise ValueError(
                f"draft_lm: {model}'s tokenizer is not the target's ({why}); a draft model "
                "proposes target token ids, so it must share the target's tokenizer"
            )
        return AutoModelForCausalLM.from_pretrained(model, **kw)
    if target_cfg is None:
        raise ValueError(f"draft_lm: init {init!r} needs the target's config (hf_config)")
    if init == "scratch":
        cfg = scratch_config(target_cfg, layers, width, ffn)
        return AutoModelForCausalLM.from_config(cfg, **kw)
    if quant_method(target_cfg):
        raise ValueError(
            f"draft_lm: init 'target_layers' copies the target's layers, and this target is "
            f"quantized ({quant_method(target_cfg)}); use init: pretrained"
        )
    cfg = truncated_config(target_cfg, layers)
    if config_only is not None:
        return AutoModelForCausalLM.from_config(cfg, **kw)
    if info.checkpoint is not None:  # transformers maps the checkpoint's names, drops the rest
        return AutoModelForCausalLM.from_pretrained(info.checkpoint, config=cfg, **kw)
    if info.read_tensors is None:
        raise ValueError("draft_lm: init 'target_layers' needs the target's checkpoint")
    lm = AutoModelForCausalLM.from_config(cfg, **kw)
    own = lm.state_dict()
    found = info.read_tensors(lambda name: name in own)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    missing = sorted(set(own) - set(found) - tied)
    if missing:
        raise ValueError(f"draft_lm: the target has no {missing[:3]} for init 'target_layers'")
    lm.load_state_dict({k: v.float() for k, v in found.items()}, strict=False)
    return lm


@register_draft("draft_lm")
class DraftLM(Draft):
    """Independent draft LM. Hparams: ``init`` (``target_layers``, ``pretrained``,
    ``scratch``); ``layers`` (target_layers / scratch; default: 1/8 of the target's, the
    TVD++ drafter's depth ratio); ``model`` (pretrained: hub id or folder); ``width``
    (scratch: the fraction of the target's width, heads and FFN; TVD++: 1/4);
    ``intermediate_size`` (scratch: the FFN width instead of ``width`` × the target's);
    ``train_anchors`` (response positions per sequence the loss is taken at, at random from
    the draft's seed, as SpecForge's DFlash trainer draws them: every sequence then weighs
    the same; None = every position, the per-token objective)."""

    max_k = None  # drafts any number of steps
    train_k: ClassVar[int | None] = 1  # steps k ≥ 2 are step 1 at later positions (above)

    def __init__(
        self,
        info: TargetInfo,
        init: Literal["target_layers", "pretrained", "scratch"] = "target_layers",
        layers: int | None = None,
        model: str | None = None,
        width: float = WIDTH_RATIO,
        intermediate_size: int | None = None,
        train_anchors: int | None = None,
    ) -> None:
        if init not in INITS:
            raise ValueError(f"draft_lm: unknown init {init!r}; valid: {list(INITS)}")
        target_cfg = info.extra.get("hf_config")
        if layers is None and init != "pretrained":
            layers = max(1, round(int(target_cfg.num_hidden_layers) * DEPTH_RATIO))
        train_anchors = anchor_count(train_anchors)
        super().__init__(info, layers=layers, train_anchors=train_anchors)
        self.train_anchors = train_anchors
        self.lm = build_lm(info, init, layers, model, float(width), intermediate_size)
        if self.lm.config.vocab_size != info.vocab_size:
            raise ValueError(
                f"draft_lm: the LM's vocab_size {self.lm.config.vocab_size} is not the "
                f"target's {info.vocab_size}"
            )
        register_vocab(self, info, embedding=False)
        d2t = info.draft_to_target.cpu()
        self.full_vocab = d2t.numel() == info.vocab_size
        if self.full_vocab and not isinstance(d2t, FakeTensor):  # the planner's: arange
            self.full_vocab = bool((d2t == torch.arange(d2t.numel())).all())
        if not self.full_vocab:
            # a truncated vocabulary (a CPU-budget deviation, as EAGLE-3's d2t): the head
            # becomes the LM head's rows of the draft vocabulary, untied, and the input
            # embedding is frozen as EAGLE-3's is (training a 49k × 576 embedding through
            # AdamW was 0.34 s of a 1.4 s SmolLM2 step, for rows the head never scores)
            rows = self.lm.lm_head.weight.detach()[d2t].clone()
            self.lm.config.tie_word_embeddings = False
            self.lm.lm_head = nn.Linear(rows.shape[1], rows.shape[0], bias=False)
            with torch.no_grad():
                self.lm.lm_head.weight.copy_(rows)
            self.lm.get_input_embeddings().requires_grad_(False)

    # -- the LM -----------------------------------------------------------------------
    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (the LM head holds its rows; see ``__init__``)."""
        return self.lm.lm_head(h)

    def forward_train(
        self,
        features: torch.Tensor,  # unused: the draft reads tokens only
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> TrainOutput:
        B, L = input_ids.shape
        valid = attention_mask.bool()
        h = self.lm.model(input_ids=input_ids, attention_mask=valid.long()).last_hidden_state
        if self.training and self.train_anchors is not None:
            # among response anchors (where decoding anchors, and where the loss is taken)
            eligible = with_first_target(valid)
            if loss_mask is not None:
                eligible &= in_response(loss_mask.bool() & valid)
            anchors = sample_anchors(eligible, self.train_anchors, generator)
        else:
            anchors = torch.arange(L, device=input_ids.device).expand(B, L)
        # step j of anchor i is position i + j (clamped past the end: the loss masks those)
        pos = (anchors[..., None] + torch.arange(1, k + 1, device=anchors.device)).clamp(max=L - 1)
        h = h.gather(1, pos.flatten(1)[..., None].expand(-1, -1, h.shape[-1]))
        return TrainOutput(self.head(h).unflatten(1, pos.shape[1:]), anchors)  # [B, A, K, Vd]

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, cache, start: int) -> torch.Tensor:
        """Logits ``[n, V_draft]`` of new tokens ``ids [n]`` at positions ``start..``; the
        cache gains their keys and values."""
        positions = torch.arange(start, start + ids.numel(), device=ids.device)[None]
        out = self.lm.model(
            input_ids=ids[None], position_ids=positions, past_key_values=cache, use_cache=True
        )
        return self.head(out.last_hidden_state[0])

    def start_session(self) -> DraftLMSession:
        return DraftLMSession(self)

    def flops_per_step(self) -> float:
        """One token through the decoder layers and the head rows of the draft vocabulary
        (the embedding is a lookup; attention over the context is left out, as for every
        draft)."""
        # the decoder (layers, final norm) is the base model less its input embedding,
        # whatever the model family names them
        base, embed = self.lm.base_model, self.lm.get_input_embeddings()
        body = sum(p.numel() for p in base.parameters()) - embed.weight.numel()
        return 2.0 * (body + self.info.draft_vocab_size * self.lm.config.hidden_size)


class DraftLMSession(DraftSession):
    """The LM's own KV cache over the verified tokens ``x_0 .. x_n``; ``propose`` feeds the
    ones not yet in it, then its drafted tokens, and crops the cache back to the verified."""

    def __init__(self, draft: DraftLM) -> None:
        from transformers import DynamicCache

        self.draft = draft
        # full layers whatever the config (a sliding-window layer's crop would need its past
        # recorded); the window, where there is one, comes from the model's own mask
        self.cache = DynamicCache()
        self.tokens: list[int] = []  # verified tokens x_0 .. x_n
        self.cached = 0  # how many of them the cache holds
        self.last: torch.Tensor | None = None  # logits after the last cached token

    def begin(self, first_token: int) -> None:
        self.tokens = [int(first_token)]

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        if not self.tokens:
            raise RuntimeError("draft_lm: extend() before begin(x_0): the LM reads x_0 too")
        self.tokens += next_tokens.tolist()

    def propose(self, k: int, sample_fn: SampleFn) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.draft
        device = d.d2t.device
        if not self.tokens:
            raise RuntimeError("propose() before any extend()")
        if self.cached < len(self.tokens):  # feed the verified tokens not yet cached
            new = torch.tensor(self.tokens[self.cached :], dtype=torch.long, device=device)
            self.last = d.decode(new, self.cache, self.cached)[-1]  # distribution of x_{n+1}
            self.cached = len(self.tokens)
        last, committed = self.last, self.cached
        if k <= 0:
            return torch.empty(0, dtype=torch.long, device=device), last[None][:0]
        logits, ids = [last], [int(sample_fn(last))]
        try:
            for j in range(1, k):  # feed the j-th drafted token at position n + j
                token = d.d2t[torch.tensor([ids[-1]], device=device)]
                logits.append(d.decode(token, self.cache, committed + j - 1)[-1])
                ids.append(int(sample_fn(logits[-1])))
        finally:  # the chain's keys and values are temporary (crop takes how many to drop)
            extra = self.cache.get_seq_length() - committed
            if extra:
                self.cache.crop(-extra)
        return torch.tensor(ids, dtype=torch.long, device=device), torch.stack(logits)
