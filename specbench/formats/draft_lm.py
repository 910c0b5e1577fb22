"""``draft_lm`` as a plain transformers model folder: what vLLM serves as ``method:
draft_model`` (``speculative_config={"method": "draft_model", "model": <folder>}``) and any
``AutoModelForCausalLM`` loads.

The draft *is* a causal LM, so the export is the LM itself (``save_pretrained``: its config
and weights, tied embeddings stored once) plus the target's tokenizer files, which vLLM's
draft model shares with its target. Only a full-vocabulary draft converts exactly: a draft
trained on a truncated vocabulary scores only its draft ids, and a plain LM head cannot
give −∞ to the rest (vLLM would propose tokens this draft never scored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from specbench.drafts import Draft, build_draft
from specbench.formats.common import is_full_vocab, require, resolve
from specbench.formats.registry import register_format
from specbench.io import atomic_dir
from specbench.targets.info import TargetInfo

TRUNCATED = (
    "draft_lm: a transformers causal LM (what vLLM's draft_model serves) scores all {V} "
    "target tokens, and this draft was trained over {Vd} of them; only a full-vocabulary "
    "draft (arch_vocab: {{draft_lm: full}}) converts exactly"
)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt",
)  # fmt: skip


def load_transformers(path: str | Path, info: TargetInfo) -> Draft:
    """A causal LM folder (or hub id) with the target's tokenizer, as our ``draft_lm``."""
    require(is_full_vocab(info), TRUNCATED.format(V=info.vocab_size, Vd=info.draft_vocab_size))
    return build_draft("draft_lm", info, init="pretrained", model=str(resolve(path)))


@register_format(
    "draft_lm",
    "transformers",
    load=load_transformers,
    loaded_by="vLLM `method: draft_model`; transformers `AutoModelForCausalLM`; "
    "full-vocabulary drafts only",
    verified="transformers' `AutoModelForCausalLM` (logits); vLLM served τ (`pytest -m served`)",
)
def export_transformers(draft: Draft, info: TargetInfo, out: Path, verifier: str, k: int) -> Path:
    """``save_pretrained`` of the LM, with the target's tokenizer files beside it."""
    require(is_full_vocab(info), TRUNCATED.format(V=info.vocab_size, Vd=info.draft_vocab_size))
    out = Path(out)
    with atomic_dir(out) as tmp:
        draft.lm.save_pretrained(tmp)
        source = info.checkpoint
        for name in TOKENIZER_FILES if source is not None else ():
            if (Path(source) / name).exists():
                shutil.copy(Path(source) / name, tmp / name)
    return out
