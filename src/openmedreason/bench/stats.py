"""Cluster bootstrap intervals for benchmark numbers (accuracy, PKR scores, paired differences).

Items that share an article or an image are not independent, so intervals resample *clusters*
(``BenchItem.cluster_key``: article / image id, or the item itself) with replacement and
recompute the item-level mean of each resample (a ratio estimator: Σ values / Σ counts over the
drawn clusters). Intervals are percentile intervals. Everything is vectorised with numpy, seeded
and deterministic: the same inputs and seed give the same numbers.

Missing values (``None`` / NaN) are dropped with their clusters' share before resampling; the
returned ``n`` says how many values were used. With no values the mean and bounds are ``None``;
with one cluster every resample is the same, so the interval collapses onto the mean.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["accuracy_summary", "bootstrap_ci", "breakdown", "paired_bootstrap"]

_CHUNK_CELLS = 4_000_000  # resample index cells per chunk (≈32 MB of int64)


def _clean(values: Sequence[Any], clusters: Sequence[Hashable] | None) -> tuple[np.ndarray, np.ndarray]:
    """Float values and integer cluster codes, NaN/None values dropped."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=float)
    if clusters is None:
        codes = np.arange(len(v))
    else:
        if len(clusters) != len(v):
            raise ValueError(f"{len(v)} values but {len(clusters)} cluster labels")
        # a None label is its own cluster (an item with no known article or image)
        labels = [f"\x00{i}" if c is None else str(c) for i, c in enumerate(clusters)]
        _, codes = np.unique(np.array(labels, dtype=object), return_inverse=True)
        codes = np.asarray(codes).reshape(-1)
    keep = ~np.isnan(v)
    return v[keep], codes[keep]


def _cluster_sums(v: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, dense = np.unique(codes, return_inverse=True)
    dense = np.asarray(dense).reshape(-1)
    k = int(dense.max()) + 1 if len(dense) else 0
    return np.bincount(dense, weights=v, minlength=k), np.bincount(dense, minlength=k).astype(float)


def _boot_means(sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` cluster resamples, in chunks so memory stays bounded."""
    rng = np.random.default_rng(seed)
    k = len(sums)
    out = np.empty(n_boot)
    step = max(1, _CHUNK_CELLS // max(k, 1))
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, k, size=(stop - start, k))
        out[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return out


def bootstrap_ci(
    values: Sequence[Any],
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float | None, float | None, float | None]:
    """``(mean, lo, hi)``: the item mean and its ``1 - alpha`` cluster-bootstrap interval.

    ``clusters`` labels each value's cluster (``None``: every value its own cluster; a ``None``
    label is a cluster of its own too)."""
    v, codes = _clean(values, clusters)
    if len(v) == 0:
        return None, None, None
    mean = float(v.mean())
    sums, counts = _cluster_sums(v, codes)
    if len(sums) == 1 or n_boot <= 0:
        return mean, mean, mean
    boots = _boot_means(sums, counts, n_boot, seed)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)


def paired_bootstrap(
    a: Sequence[Any],
    b: Sequence[Any],
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Difference ``mean(a) - mean(b)`` on the same items, with a cluster-bootstrap interval.

    Items where either value is missing are dropped. ``p_two_sided`` is the bootstrap share on
    the far side of zero, doubled: 2·min((#boot ≤ 0) + 1, (#boot ≥ 0) + 1) / (n_boot + 1), capped at 1
    (a resolution of about 2 / n_boot; not an exact test)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    av = np.array([np.nan if x is None else float(x) for x in a], dtype=float)
    bv = np.array([np.nan if x is None else float(x) for x in b], dtype=float)
    d = av - bv
    cl = list(clusters) if clusters is not None else None
    v, codes = _clean(list(d), cl)
    out: dict[str, Any] = {"diff": None, "lo": None, "hi": None, "p_two_sided": None, "n": int(len(v)), "n_clusters": int(len(np.unique(codes)))}
    if len(v) == 0:
        return out
    diff = float(v.mean())
    sums, counts = _cluster_sums(v, codes)
    out["diff"] = diff
    if len(sums) == 1 or n_boot <= 0:
        out.update(lo=diff, hi=diff, p_two_sided=1.0 if diff == 0 else None)
        return out
    boots = _boot_means(sums, counts, n_boot, seed)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    below = int((boots <= 0).sum())
    above = int((boots >= 0).sum())
    p = min(1.0, 2 * min(below + 1, above + 1) / (n_boot + 1))
    out.update(lo=float(lo), hi=float(hi), p_two_sided=p)
    return out


def breakdown(
    values: Sequence[Any],
    keys: Sequence[Hashable],
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[Any, dict[str, Any]]:
    """Per-key ``{"n", "mean", "lo", "hi"}`` (keys sorted as strings; ``None`` keys kept).

    Each key's interval resamples the clusters of that key's items only."""
    if len(keys) != len(values):
        raise ValueError(f"{len(values)} values but {len(keys)} keys")
    if clusters is not None and len(clusters) != len(values):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    groups: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    out: dict[Any, dict[str, Any]] = {}
    for k in sorted(groups, key=lambda x: (x is None, str(x))):
        idx = groups[k]
        vals = [values[i] for i in idx]
        cl = [clusters[i] for i in idx] if clusters is not None else None
        mean, lo, hi = bootstrap_ci(vals, cl, n_boot=n_boot, seed=seed, alpha=alpha)
        n = sum(1 for x in vals if x is not None and not (isinstance(x, float) and np.isnan(x)))
        out[k] = {"n": n, "mean": mean, "lo": lo, "hi": hi}
    return out


def accuracy_summary(
    correct: Sequence[bool],
    invalid: Sequence[bool],
    clusters: Sequence[Hashable] | None = None,
    *,
    keys: Mapping[str, Sequence[Hashable]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Strict accuracy (an invalid answer counts as wrong), the invalid rate, and accuracy among
    valid answers, each as ``{"mean", "lo", "hi"}``, plus per-key breakdowns of strict accuracy
    (``keys``: ``{"category": [...], "modality": [...]}``) under ``"by"``.

    The denominator is every item given: nothing is dropped for being invalid."""
    if len(correct) != len(invalid):
        raise ValueError(f"{len(correct)} correctness flags but {len(invalid)} invalid flags")
    for i, (c, inv) in enumerate(zip(correct, invalid)):
        if c and inv:
            raise ValueError(f"item {i} is both correct and invalid")
    corr = [1.0 if c else 0.0 for c in correct]
    inval = [1.0 if x else 0.0 for x in invalid]

    def ci(vals: Sequence[Any], cl: Sequence[Hashable] | None) -> dict[str, Any]:
        m, lo, hi = bootstrap_ci(vals, cl, n_boot=n_boot, seed=seed, alpha=alpha)
        return {"mean": m, "lo": lo, "hi": hi}

    valid_vals = [c if not x else None for c, x in zip(corr, invalid)]
    out: dict[str, Any] = {
        "n": len(corr),
        "n_invalid": int(sum(inval)),
        "acc_strict": ci(corr, clusters),
        "invalid_rate": ci(inval, clusters),
        "acc_valid_only": {**ci(valid_vals, clusters), "n": len(corr) - int(sum(inval))},
        "n_boot": n_boot,
        "alpha": alpha,
        "seed": seed,
        "clustered": clusters is not None,
        "by": {},
    }
    for name, ks in (keys or {}).items():
        out["by"][name] = breakdown(corr, ks, clusters, n_boot=n_boot, seed=seed, alpha=alpha)
    return out
