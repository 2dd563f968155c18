"""Cluster bootstrap statistics (``openmedreason.bench.stats``) on synthetic data."""

from __future__ import annotations

import time

import numpy as np
import pytest

from openmedreason.bench.stats import accuracy_summary, bootstrap_ci, breakdown, paired_bootstrap


def clustered(rng: np.random.Generator, n_clusters: int, per: int, sd_between: float, sd_within: float = 1.0):
    effects = rng.normal(0, sd_between, n_clusters)
    values = np.repeat(effects, per) + rng.normal(0, sd_within, n_clusters * per)
    return values, np.repeat(np.arange(n_clusters), per)


def test_mean_and_determinism():
    vals = [0, 1, 1, 0, 1, 1, 1, 0]
    m, lo, hi = bootstrap_ci(vals, seed=3)
    assert m == pytest.approx(0.625) and lo <= m <= hi
    assert bootstrap_ci(vals, seed=3) == (m, lo, hi)
    assert bootstrap_ci(vals, seed=4) != (m, lo, hi)


def test_edge_cases():
    assert bootstrap_ci([]) == (None, None, None)
    assert bootstrap_ci([None, float("nan")]) == (None, None, None)
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    # one cluster: every resample is the same data, the interval collapses onto the mean
    assert bootstrap_ci([0, 1, 1], ["a", "a", "a"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # None cluster labels are singletons, not one shared cluster
    assert bootstrap_ci([0, 1, 1], [None, None, None]) != bootstrap_ci([0, 1, 1], ["a", "a", "a"])
    # missing values are dropped
    assert bootstrap_ci([1, None, 0, 1])[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        bootstrap_ci([1, 2], ["a"])
    empty = paired_bootstrap([], [], [])
    assert empty["diff"] is None and empty["n"] == 0
    with pytest.raises(ValueError):
        paired_bootstrap([1], [1, 2])


def test_clustered_data_gives_a_wider_interval_than_the_naive_one():
    rng = np.random.default_rng(0)
    vals, cl = clustered(rng, n_clusters=40, per=25, sd_between=1.0)
    _, lo_c, hi_c = bootstrap_ci(vals, cl)
    _, lo_n, hi_n = bootstrap_ci(vals)
    # design effect 1 + (m-1)·ICC = 1 + 24·0.5 = 13 → intervals about √13 ≈ 3.6× wider
    assert (hi_c - lo_c) > 2.5 * (hi_n - lo_n)


def test_coverage_iid_and_clustered():
    rng = np.random.default_rng(1)
    reps = 150
    iid_hits = clu_hits = naive_hits = 0
    for r in range(reps):
        x = rng.normal(0.3, 1.0, 80)
        _, lo, hi = bootstrap_ci(x, n_boot=400, seed=r)
        iid_hits += lo <= 0.3 <= hi
        vals, cl = clustered(rng, n_clusters=30, per=10, sd_between=1.0)
        _, lo, hi = bootstrap_ci(vals, cl, n_boot=400, seed=r)
        clu_hits += lo <= 0.0 <= hi
        _, lo, hi = bootstrap_ci(vals, n_boot=400, seed=r)
        naive_hits += lo <= 0.0 <= hi
    # nominal 95%: the percentile bootstrap is a little liberal at these sizes
    assert iid_hits / reps >= 0.88
    assert clu_hits / reps >= 0.85
    assert naive_hits / reps < 0.75  # ignoring clusters under-covers badly


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    vals, cl = clustered(rng, n_clusters=50, per=4, sd_between=0.5)
    a = (vals + 0.4 > 0).astype(float)
    b = (vals > 0).astype(float)
    res = paired_bootstrap(a, b, cl, seed=0)
    assert res["diff"] == pytest.approx(a.mean() - b.mean()) and res["n"] == 200 and res["n_clusters"] == 50
    assert res["lo"] > 0 and res["p_two_sided"] < 0.01
    same = paired_bootstrap(a, a.copy(), cl)
    assert same["diff"] == 0 and same["p_two_sided"] == 1.0
    noise = paired_bootstrap(rng.integers(0, 2, 200), rng.integers(0, 2, 200), cl, seed=1)
    assert noise["lo"] < 0 < noise["hi"] and noise["p_two_sided"] > 0.05
    assert paired_bootstrap(a, b, cl, seed=5) == paired_bootstrap(a, b, cl, seed=5)
    # pairs with a missing side are dropped
    assert paired_bootstrap([1, None, 0], [0, 1, 0])["n"] == 2


def test_breakdown_per_key():
    vals = [1, 0, 1, 1, 0, 0]
    keys = ["ct", "ct", "mri", "mri", "xr", None]
    out = breakdown(vals, keys, clusters=["a", "a", "b", "c", "d", "e"], n_boot=200)
    assert list(out) == ["ct", "mri", "xr", None]
    assert out["ct"] == {"n": 2, "mean": 0.5, "lo": 0.5, "hi": 0.5}  # one cluster
    assert out["mri"]["mean"] == 1.0 and out["xr"]["n"] == 1
    with pytest.raises(ValueError):
        breakdown([1], ["a", "b"])


def test_accuracy_summary_keeps_invalid_in_the_denominator():
    correct = [True, False, False, True, False]
    invalid = [False, True, False, False, True]
    s = accuracy_summary(correct, invalid, clusters=["a", "a", "b", "c", "d"], keys={"modality": ["ct", "ct", "xr", "xr", "xr"]}, n_boot=200)
    assert s["n"] == 5 and s["n_invalid"] == 2
    assert s["acc_strict"]["mean"] == pytest.approx(2 / 5)
    assert s["invalid_rate"]["mean"] == pytest.approx(2 / 5)
    assert s["acc_valid_only"]["mean"] == pytest.approx(2 / 3) and s["acc_valid_only"]["n"] == 3
    assert s["by"]["modality"]["ct"]["mean"] == 0.5 and s["by"]["modality"]["xr"]["n"] == 3
    with pytest.raises(ValueError, match="both correct and invalid"):
        accuracy_summary([True], [True])


def test_fast_on_ten_thousand_items():
    rng = np.random.default_rng(3)
    vals = rng.integers(0, 2, 10_000).astype(float)
    cl = rng.integers(0, 3_000, 10_000)
    t = time.perf_counter()
    m, lo, hi = bootstrap_ci(vals, cl, n_boot=1000)
    naive = bootstrap_ci(vals, n_boot=1000)
    assert time.perf_counter() - t < 5.0
    assert lo < m < hi and naive[1] < m < naive[2]
