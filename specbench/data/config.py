"""The config's ``data:`` section: prompts, responses and the draft vocabulary.

Part of the experiment-matrix config (:mod:`specbench.config`, the schema's one source).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from specbench.data.domains import DOMAINS
from specbench.data.hub import DatasetSource
from specbench.data.splits import PROMPT_LISTS
from specbench.schema import Strict

# names that only registries know, as types: the generated JSON schema lists them too
DomainName = Literal[tuple(sorted(DOMAINS))]  # type: ignore[valid-type]
PromptList = Literal[PROMPT_LISTS]  # type: ignore[valid-type]


class DataConfig(Strict):
    """Prompts, responses and draft vocabulary.

    ``train_prompts_per_domain``: training prompts of every domain (an int), or per domain (a
    mapping that names every domain of ``domains``; 0: the domain contributes no training
    prompts and is only evaluated). ``response_shard_prompts``: regenerate the training
    responses of a (target, domain) in jobs of this many prompts each (rule
    ``responses_shard``), gathered into one file (``responses_gather``); None: one job.
    """

    train_prompts_per_domain: (
        Annotated[int, Field(gt=0)] | dict[DomainName, Annotated[int, Field(ge=0)]]
    )
    eval_prompts_per_domain: int = Field(gt=0)
    max_prompt_tokens: int = Field(gt=0)
    train_new_tokens: int = Field(gt=0)
    eval_new_tokens: int = Field(gt=0)
    generation_batch_size: int = Field(16, gt=0)
    feature_batch_size: int = Field(8, gt=0)
    train_temperature: float = Field(1.0, ge=0)
    draft_vocab_size: int = Field(gt=0)
    response_shard_prompts: int | None = Field(None, gt=0)
    # domain → split → source; a domain/split not listed keeps the offline default
    sources: dict[DomainName, dict[PromptList, DatasetSource]] = Field(default_factory=dict)

    @field_validator("sources", mode="before")
    @classmethod
    def _source_keys(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic reports the type
        for domain, splits in v.items():
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r}; valid: {sorted(DOMAINS)}")
            for split in splits if isinstance(splits, dict) else ():
                if split not in PROMPT_LISTS:
                    raise ValueError(
                        f"{domain}: unknown split {split!r}; valid: {list(PROMPT_LISTS)}"
                    )
        return v

    def source(self, domain: str, split: str) -> DatasetSource | None:
        """The configured source of a domain's split, or None for the offline default."""
        return self.sources.get(domain, {}).get(split)

    def train_prompts(self, domain: str) -> int:
        """How many training prompts ``domain`` asks for (0: none)."""
        n = self.train_prompts_per_domain
        return n if isinstance(n, int) else n.get(domain, 0)

    def response_shards(self, domain: str) -> int | None:
        """How many ``responses_shard`` jobs regenerate the training responses of ``domain``
        (⌈train prompts / response_shard_prompts⌉), or None when they are not sharded."""
        if self.response_shard_prompts is None:
            return None
        return math.ceil(self.train_prompts(domain) / self.response_shard_prompts)
