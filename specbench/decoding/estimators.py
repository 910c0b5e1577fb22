"""τ estimators by name: one registered :class:`Estimator` per measure.

Every τ measure is a ratio of per-prompt sums (numerator column / denominator column), so an
estimator says which of its per-prompt columns those are, at which temperatures it runs, where
it is the headline measure, and how it measures one cache. The evaluation job runs every
registered estimator that runs at a temperature and writes its columns under their names;
``aggregation.tables`` builds ``tau_<name>`` columns and gains from this registry. A new
estimator is one module in ``specbench/decoding/`` that calls :func:`register_estimator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from specbench.drafts.base import Draft
from specbench.features.cache import FeatureCache


@dataclass(frozen=True)
class Setting:
    """What the estimators of one evaluation job share (the draft, the target, the budget)."""

    draft: Draft
    k: int
    seed: int
    runner: Any = None  # a TargetRunner; None where only the T=0 replay runs
    live_prompts: int = 0  # prompts decoded live at T>0 (T=0 replays every prompt)
    live_new_tokens: int = 0
    unbiased_anchors: int | None = None  # start positions per prompt; None: all
    eos_token_id: int | None = None
    shard: tuple[int, int] = (0, 1)  # (rank, world)


@dataclass(frozen=True)
class Estimator:
    """One τ measure: ``name`` is its ``tau.csv`` column, ``numerator / denominator`` the
    per-prompt sum columns of the ratio, ``sums`` the dataclass of its per-prompt columns (its
    defaults are the values where it did not run) and ``measure(setting, cache, temperature)``
    returns ``{prompt index: sums}``. ``temperatures``: where it runs (None: everywhere);
    ``headline``: the temperatures at which tables lead with it."""

    name: str
    numerator: str
    denominator: str
    sums: type
    measure: Callable[[Setting, FeatureCache, int], dict[int, Any]]
    temperatures: tuple[int, ...] | None = None
    headline: tuple[int, ...] = ()

    def runs_at(self, temperature: int) -> bool:
        """Whether this measure is taken at ``temperature``."""
        return self.temperatures is None or int(temperature) in self.temperatures

    def columns(self) -> dict[str, Any]:
        """Its per-prompt columns with their values where it did not run."""
        return asdict(self.sums())


ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(est: Estimator) -> Estimator:
    """Add ``est`` to :data:`ESTIMATORS` (registration order is the column order of the
    tables); its per-prompt columns must not clash with another estimator's."""
    if est.name in ESTIMATORS:
        raise ValueError(f"estimator {est.name!r} is registered twice")
    taken = {c for e in ESTIMATORS.values() for c in e.columns()}
    if clash := taken & set(est.columns()):
        raise ValueError(f"estimator {est.name!r}: columns {sorted(clash)} are another's")
    ESTIMATORS[est.name] = est
    return est


def measure_all(setting: Setting, cache: FeatureCache, temperature: int) -> dict[str, dict]:
    """Every registered estimator that runs at ``temperature``: name -> {prompt: sums}."""
    return {
        name: est.measure(setting, cache, temperature)
        for name, est in ESTIMATORS.items()
        if est.runs_at(temperature)
    }


def per_prompt_rows(domain: str, temperature: int, found: dict[str, dict]) -> list[dict]:
    """One row per prompt: every registered estimator's per-prompt columns, by name (their
    defaults where it did not run: another temperature, or a prompt it did not reach)."""
    rows = []
    for pid in sorted({pid for sums in found.values() for pid in sums}):
        row = {"domain": domain, "temperature": temperature, "prompt_index": pid}
        for name, est in ESTIMATORS.items():
            mine = found.get(name, {})
            row.update(asdict(mine[pid]) if pid in mine else est.columns())
        rows.append(row)
    return rows
