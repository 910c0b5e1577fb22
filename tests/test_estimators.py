"""τ estimators register themselves: a new one is one registered object, and its measure
flows by name from the job's per-prompt rows into ``tau.csv`` and the gains."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from specbench.aggregation.tables import gains_table, headline, measures, tau_table
from specbench.decoding import ESTIMATORS, Estimator, Setting, register_estimator
from specbench.decoding.estimators import measure_all, per_prompt_rows


@dataclass
class HalfSums:
    """A throwaway measure: per prompt, ``hits / tries``."""

    half_hits: float = 0.0
    half_tries: int = 0


def _measure(setting: Setting, cache, temperature: int) -> dict[int, HalfSums]:
    # prompt p: (p + 1) hits of 4 tries, scaled by the draft (here a number) to tell losses apart
    return {p: HalfSums(setting.draft * (p + 1), 4) for p in range(3)}


@pytest.fixture
def half(monkeypatch):
    """``tau_half`` registered for one test, at T=1 only, as T=1's headline."""
    monkeypatch.setattr("specbench.decoding.estimators.ESTIMATORS", dict(ESTIMATORS))
    from specbench.decoding import estimators

    monkeypatch.setattr("specbench.aggregation.tables.ESTIMATORS", estimators.ESTIMATORS)
    est = Estimator("tau_half", "half_hits", "half_tries", HalfSums, _measure, (1,), (1,))
    return register_estimator(est)


def test_the_three_measures_are_registered_in_the_tables_order():
    assert list(measures()) == ["tau_live", "tau_expected", "tau_unbiased"]
    assert measures()["tau_live"] == ("accepted_plus_rounds", "rounds")
    assert (
        headline(0, ["tau_live"]) == "tau_live" and headline(1, ["tau_unbiased"]) == "tau_unbiased"
    )
    assert ESTIMATORS["tau_unbiased"].runs_at(1) and not ESTIMATORS["tau_unbiased"].runs_at(0)


def test_a_registered_estimator_flows_by_name_into_tau_and_gains(half):
    from specbench.decoding import estimators

    stub = {n: e for n, e in estimators.ESTIMATORS.items() if n != "tau_half"}
    for e in stub.values():  # the real measures need a draft and a cache: zero sums instead
        zeros = lambda *a, e=e: {p: e.sums() for p in range(3)}  # noqa: E731
        estimators.ESTIMATORS[e.name] = Estimator(
            e.name, e.numerator, e.denominator, e.sums, zeros, e.temperatures, e.headline
        )
    frames = []
    for loss, scale in (("kl", 1.0), ("tv", 1.5)):
        for t in (0, 1):
            found = measure_all(Setting(draft=scale, k=2, seed=0), None, t)
            assert ("tau_half" in found) == ("tau_unbiased" in found) == (t == 1)
            df = pd.DataFrame(per_prompt_rows("code", t, found))
            frames.append(df.assign(target="t", draft_arch="medusa", loss=loss, seed=0))
    pp = pd.concat(frames).assign(k_eval=2, draft_params=1, cost_ratio=0.1)
    pp["accepted_plus_rounds"] = pp["accepted_sum"] + pp["rounds"]
    # every estimator's columns are in every row; the defaults where one did not run
    assert {"half_hits", "half_tries", "anchors", "rounds", "tau_unbiased_sum"} <= set(pp)
    assert (pp[pp["temperature"] == 0]["half_tries"] == 0).all()
    tau = tau_table(pp).set_index(["loss", "temperature"])
    assert tau.loc[("kl", 1), "tau_half"] == pytest.approx((1 + 2 + 3) / 12)
    assert tau.loc[("tv", 1), "tau_half"] == pytest.approx(1.5 * 6 / 12)
    assert pd.isna(tau.loc[("kl", 0), "tau_half"])  # 0 / 0 where it did not run
    gains = gains_table(pp, "kl", n_boot=50).set_index("temperature")
    assert gains.loc[1, "tau_half_gain_pct"] == pytest.approx(50.0)  # every prompt × 1.5
    assert headline(1, gains.columns) == "tau_half"


def test_an_estimator_name_or_column_is_taken_once(half):
    with pytest.raises(ValueError, match="registered twice"):
        register_estimator(half)
    clash = Estimator("tau_clash", "half_hits", "half_tries", HalfSums, _measure)
    with pytest.raises(ValueError, match="another's"):
        register_estimator(clash)
