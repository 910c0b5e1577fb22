"""Cluster-robust mean SE and the paired cluster bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from specbench.aggregation.stats import clustered_mean_se, paired_ratio_bootstrap


def cluster_sums(a, b, clusters):
    """Per-cluster sums of paired observations ``a``, ``b`` and the cluster sizes."""
    codes = np.unique(np.asarray(clusters), return_inverse=True)[1]
    size = np.bincount(codes).astype(float)
    return np.bincount(codes, weights=a), size, np.bincount(codes, weights=b), size


def test_clustered_se_by_hand():
    y, c = [1, 2, 3, 4, 5, 6], ["p0", "p0", "p1", "p1", "p1", "p2"]
    # mean 3.5; residual sums per cluster: -4, 1.5, 2.5 → Σ s² = 24.5; Var_CR0 = 24.5 / 6²
    mean, se0 = clustered_mean_se(y, c, correction="CR0")
    assert mean == pytest.approx(3.5)
    assert se0 == pytest.approx((24.5 / 36) ** 0.5)
    _, se1 = clustered_mean_se(y, c)  # CR1 = CR0 · G/(G−1), G = 3
    assert se1 == pytest.approx((24.5 / 36 * 3 / 2) ** 0.5)


def test_singleton_clusters_give_textbook_se():
    y = np.random.default_rng(0).normal(size=50)
    _, se = clustered_mean_se(y, np.arange(50))
    assert se == pytest.approx(y.std(ddof=1) / np.sqrt(50))
    assert np.isnan(clustered_mean_se(y, np.zeros(50))[1])  # one cluster: no SE


def simulate(rng, n_clusters: int = 40):
    """Random-effects data: strong within-prompt correlation, unequal prompt sizes."""
    sizes = rng.integers(3, 12, size=n_clusters)
    clusters = np.repeat(np.arange(n_clusters), sizes)
    u, v = rng.normal(size=n_clusters), rng.normal(size=n_clusters)
    a = 3.0 + u[clusters] + rng.normal(0, 0.5, clusters.size)
    # E[b] / E[a] = 1.05 exactly: the truth for Δ% is +5
    b = 1.05 * a + 0.3 * v[clusters] + rng.normal(0, 0.2, clusters.size)
    return a, b, clusters


def test_clustered_se_matches_simulation():
    rng = np.random.default_rng(1)
    means, ses, naive = [], [], []
    for _ in range(2000):
        a, _, c = simulate(rng)
        m, se = clustered_mean_se(a, c)
        means.append(m)
        ses.append(se)
        naive.append(a.std(ddof=1) / np.sqrt(a.size))
    sd = np.std(means)
    rms = np.sqrt(np.mean(np.square(ses)))
    assert rms == pytest.approx(sd, rel=0.1)
    assert np.mean(naive) < 0.6 * sd  # ignoring the clustering would badly understate it


def test_bootstrap_ci_covers_truth():
    rng = np.random.default_rng(3)
    hits_boot = 0
    reps = 300
    for i in range(reps):
        a, b, c = simulate(rng, n_clusters=30)
        est, lo, hi = paired_ratio_bootstrap(*cluster_sums(a, b, c), n_boot=1000, seed=i)
        assert est == pytest.approx(100.0 * (b.mean() / a.mean() - 1.0))
        hits_boot += lo <= 5.0 <= hi
    # nominal 95%; the binomial SD of a coverage estimate over 300 replications is ≈ 1.3%
    assert 0.88 <= hits_boot / reps <= 0.99


def test_bootstrap_determinism_and_identical_inputs():
    a, b, c = simulate(np.random.default_rng(4))
    sums = cluster_sums(a, b, c)
    assert paired_ratio_bootstrap(*sums, seed=7) == paired_ratio_bootstrap(*sums, seed=7)
    assert paired_ratio_bootstrap(*cluster_sums(a, a, c)) == (0.0, 0.0, 0.0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        clustered_mean_se([1.0, 2.0], [0])


def test_ratio_of_sums_equals_clustered_mean_of_observations():
    from specbench.aggregation.stats import ratio_of_sums_se

    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(12), rng.integers(1, 9, size=12))
    values = rng.normal(2.0, 1.0, size=clusters.size) + clusters % 3
    sums = np.bincount(clusters, weights=values)
    sizes = np.bincount(clusters)
    np.testing.assert_allclose(ratio_of_sums_se(sums, sizes), clustered_mean_se(values, clusters))


def test_paired_ratio_bootstrap_with_different_denominators():
    from specbench.aggregation.stats import paired_ratio_bootstrap

    a_num, a_den = np.array([10.0, 12, 9, 11]), np.array([5.0, 6, 4, 5])
    est, lo, hi = paired_ratio_bootstrap(a_num, a_den, 1.1 * a_num, a_den, n_boot=500)
    assert abs(est - 10.0) < 1e-9 and abs(lo - 10.0) < 1e-9 and abs(hi - 10.0) < 1e-9
    # live decoding: b needs fewer rounds for the same tokens → a positive gain
    est, lo, hi = paired_ratio_bootstrap(a_num, a_den, a_num, a_den * 0.8, n_boot=500)
    assert abs(est - 25.0) < 1e-9 and lo <= est <= hi
