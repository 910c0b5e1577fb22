"""Cluster-robust statistics for acceptance lengths (numpy only).

Observations (anchors, verification rounds) within one prompt are correlated, so standard
errors and bootstrap resampling treat the *prompt* as the independent unit (SPEC §4).
Comparisons between two losses are paired: ``a[i]`` and ``b[i]`` are measured on the same
observation ``i`` (same prompt, position, seed).
"""

from __future__ import annotations

import numpy as np


def _prep(values, clusters) -> tuple[np.ndarray, np.ndarray, int]:
    """Float values, integer cluster codes 0..G-1 and G; checks shapes."""
    v = np.asarray(values, dtype=np.float64).ravel()
    c = np.asarray(clusters).ravel()
    if v.shape != c.shape or v.size == 0:
        raise ValueError(f"values {v.shape} and clusters {c.shape} must be equal, non-empty")
    _, codes = np.unique(c, return_inverse=True)
    return v, codes, int(codes.max()) + 1


def _cluster_se(resid: np.ndarray, codes: np.ndarray, g: int, correction: str) -> float:
    """Sandwich SE of a mean whose influence values are ``resid / n`` (CR0 or CR1)."""
    n = resid.size
    if g < 2:
        return float("nan")  # one cluster carries no information about the spread
    sums = np.bincount(codes, weights=resid, minlength=g)
    var = float(np.sum(sums**2)) / n**2
    if correction == "CR1":
        var *= g / (g - 1)
    elif correction != "CR0":
        raise ValueError(f"correction must be 'CR0' or 'CR1', not {correction!r}")
    return var**0.5


def ratio_of_sums_se(num, den, correction: str = "CR1") -> tuple[float, float]:
    """``Σnum / Σden`` over clusters and its clustered SE, from per-cluster sums.

    Every τ of the suite is such a ratio (Σ(accepted+1)/Σrounds, Σ τ_anchor/Σ anchors) and
    stored as per-prompt sums. Linearisation: the influence of cluster ``g`` is
    ``(num_g − R·den_g)/Σden``, so this equals :func:`clustered_mean_se` of the underlying
    observations. Clusters with ``den = 0`` carry no observation and are dropped.
    """
    num, den = np.asarray(num, np.float64).ravel(), np.asarray(den, np.float64).ravel()
    keep = den > 0
    num, den = num[keep], den[keep]
    g = den.size
    if g == 0:
        return float("nan"), float("nan")
    r = float(num.sum() / den.sum())
    if g < 2:
        return r, float("nan")  # one cluster carries no information about the spread
    var = float(np.sum((num - r * den) ** 2)) / float(den.sum()) ** 2
    if correction == "CR1":
        var *= g / (g - 1)
    elif correction != "CR0":
        raise ValueError(f"correction must be 'CR0' or 'CR1', not {correction!r}")
    return r, var**0.5


def clustered_mean_se(values, clusters, correction: str = "CR1") -> tuple[float, float]:
    """Pooled mean of ``values`` and its standard error clustered by ``clusters``.

    The mean weights every observation equally. Its variance is the cluster-robust sandwich
    ``Var = Σ_g (Σ_{i∈g} (y_i − ȳ))² / n²``; ``CR1`` (default, the Stata/Liang–Zeger
    small-sample form for a mean) multiplies it by ``G / (G − 1)``, ``CR0`` does not. With one
    observation per cluster CR1 is exactly the textbook ``s / √n``. NaN SE if ``G < 2``.
    """
    v, codes, g = _prep(values, clusters)
    sums = np.bincount(codes, weights=v, minlength=g)
    sizes = np.bincount(codes, minlength=g)
    return ratio_of_sums_se(sums, sizes, correction)


def paired_ratio_bootstrap(
    a_num, a_den, b_num, b_den, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Δ% = 100·(R_b/R_a − 1) of two ratios of sums, with a percentile cluster-bootstrap CI.

    Inputs are per-cluster sums over the *same* clusters (prompts); resampling keeps a
    cluster's four sums together, which is what makes the comparison paired. The two
    denominators may differ (live decoding: each draft has its own number of rounds).
    """
    arrs = [np.asarray(x, np.float64).ravel() for x in (a_num, a_den, b_num, b_den)]
    g = arrs[0].size

    def delta(w: np.ndarray) -> np.ndarray:  # w: [..., G] cluster multiplicities
        an, ad, bn, bd = (w @ x for x in arrs)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100.0 * ((bn / bd) / (an / ad) - 1.0)

    est = float(delta(np.ones(g)))
    w = np.random.default_rng(seed).multinomial(g, np.full(g, 1.0 / g), size=n_boot)
    reps = delta(w.astype(np.float64))
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return est, float("nan"), float("nan")
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return est, float(lo), float(hi)
