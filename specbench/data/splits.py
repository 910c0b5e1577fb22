"""The response splits: one table that the rules, the config and the jobs all read.

Each prompt list of a domain (``train`` / ``eval``, :mod:`specbench.data.hub`) is answered
by the target once per split; a split names the prompts it answers, how it samples, and
whether it keeps generating past EOS. Random seeds derive from names (:func:`name_seed`),
never from positions in a list, so adding a domain or a split changes no other data.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

PROMPT_LISTS = ("train", "eval")  # the two disjoint prompt lists of every domain


@dataclass(frozen=True)
class Split:
    name: str
    prompts: str  # which prompt list it answers: "train" or "eval"
    temperature: float | None  # None: data.train_temperature
    through_eos: bool  # keep generating past EOS (look-ahead for the exact T=0 replay)

    @property
    def is_train(self) -> bool:
        return self.prompts == "train"


SPLITS: dict[str, Split] = {
    s.name: s
    for s in (
        Split("train", "train", None, through_eos=False),  # T = data.train_temperature (1)
        Split("eval_t0", "eval", 0.0, through_eos=True),  # greedy, replayed at T=0
        Split("eval_t1", "eval", 1.0, through_eos=False),  # expected / live τ at T=1
    )
}
EVAL_SPLIT_BY_TEMPERATURE = {int(s.temperature): s.name for s in SPLITS.values() if not s.is_train}


def eval_split(temperature: int) -> str:
    """The evaluation split measured at ``temperature`` (0 or 1)."""
    if temperature not in EVAL_SPLIT_BY_TEMPERATURE:
        raise ValueError(
            f"no evaluation split for T={temperature}; valid: {sorted(EVAL_SPLIT_BY_TEMPERATURE)}"
        )
    return EVAL_SPLIT_BY_TEMPERATURE[temperature]


def name_seed(*names: str) -> int:
    """A stable 31-bit seed from names (CRC-32 of ``"a/b/…"``): the same in every process."""
    return zlib.crc32("/".join(names).encode()) & 0x7FFFFFFF


def shard_seed(split: str, domain: str, shard: int) -> int:
    """The sampling seed of one ``responses_shard`` job (shard ``shard`` of a domain's split).

    Shard 0 keeps the unsharded job's seed, ``name_seed(split, domain)``, so a single shard
    regenerates exactly what the unsharded ``responses`` job does; shard ``i > 0`` gets
    ``name_seed(split, domain, "shard<i>")``. A shard's seed depends on its index only, never
    on how many shards there are.
    """
    return name_seed(split, domain) if shard == 0 else name_seed(split, domain, f"shard{shard}")
