"""Image pair search (multi-index hashing in ``build.dedup``): the same pairs and distances as the
all-pairs scan, for every block plan, on uniform and on skewed hashes, for one set and for two."""

from __future__ import annotations

import numpy as np
import pytest

from openmedreason.build import dedup
from openmedreason.build.dedup import _brute_cross_pairs, _brute_near_pairs, _mih_pairs, _plan, cross_pairs, near_pairs


def _flip(rng: np.random.Generator, value: np.uint64, k: int) -> np.uint64:
    bits = rng.choice(64, size=k, replace=False)
    return value ^ np.uint64(sum(1 << int(b) for b in bits))


def _planted(rng: np.random.Generator, n: int, threshold: int) -> np.ndarray:
    """Random hashes plus, for every distance 0..threshold+2, several partners of random base hashes
    (distance 0 = a repeated value), shuffled."""
    base = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    extra = [_flip(rng, base[rng.integers(n)], d) for d in range(threshold + 3) for _ in range(4)]
    h = np.concatenate([base, np.array(extra, dtype=np.uint64)])
    rng.shuffle(h)
    return h


def _skewed(rng: np.random.Generator, n: int) -> np.ndarray:
    """Hashes in a few tight families: every block value is shared by many hashes (as blank or
    near-blank figures do), plus near copies across families."""
    centres = rng.integers(0, 2**64, size=3, dtype=np.uint64)
    low = rng.integers(0, 1 << 10, size=n, dtype=np.uint64)  # only the low 10 bits vary...
    fam = centres[rng.integers(3, size=n)] ^ low
    flips = [_flip(rng, v, int(rng.integers(0, 10))) for v in fam[: n // 4]]  # ...and some more
    return np.concatenate([fam, np.array(flips, dtype=np.uint64)])  # repeated values included


def _sorted(pairs) -> list[tuple[int, int, int]]:
    got = list(pairs)
    assert len(set(got)) == len(got), "a pair was reported twice"
    return sorted(got)


def _plans(threshold: int) -> list[list]:
    """Every block plan for the threshold whose flip enumeration stays small (m = 1 .. t+1)."""
    out = []
    for m in range(1, threshold + 2):
        plan = _plan(threshold, m)
        if all(dedup._ball(w, r) <= 700 for _, w, r in plan):
            out.append(plan)
    return out


@pytest.mark.parametrize("threshold", [0, 6, 8, 12])
def test_every_plan_matches_the_scan_on_planted_pairs(threshold):
    rng = np.random.default_rng(threshold)
    h = _planted(rng, 600, threshold)
    want = _sorted(_brute_near_pairs(h, threshold))
    # every planted distance up to the threshold is there, nothing beyond it
    assert {d for *_, d in want} == set(range(threshold + 1))
    left, right = h[:250], h[250:]
    want_lr = _sorted(_brute_cross_pairs(left, right, threshold))
    want_rl = _sorted(_brute_cross_pairs(right, left, threshold))
    assert want_lr
    plans = _plans(threshold)
    assert len(plans) >= min(threshold + 1, 3)
    for plan in plans:
        assert _sorted(_mih_pairs(h, None, threshold, plan)) == want, plan
        assert _sorted(_mih_pairs(left, right, threshold, plan)) == want_lr, plan
        assert _sorted(_mih_pairs(right, left, threshold, plan)) == want_rl, plan


@pytest.mark.parametrize("threshold", [0, 6, 8, 12])
def test_every_plan_matches_the_scan_on_skewed_hashes(threshold):
    rng = np.random.default_rng(100 + threshold)
    h = _skewed(rng, 500)
    want = _sorted(_brute_near_pairs(h, threshold))
    assert len(want) > 40
    left, right = h[::3], h[1::3]
    want_lr = _sorted(_brute_cross_pairs(left, right, threshold))
    for plan in _plans(threshold):
        assert _sorted(_mih_pairs(h, None, threshold, plan)) == want, plan
        assert _sorted(_mih_pairs(left, right, threshold, plan)) == want_lr, plan


def test_chunking_of_huge_buckets(monkeypatch):
    """Buckets larger than a verification chunk are cut; results do not depend on the chunk size."""
    rng = np.random.default_rng(7)
    h = _skewed(rng, 200)
    want = _sorted(_brute_near_pairs(h, 8))
    monkeypatch.setattr(dedup, "_CHUNK", 7)
    for plan in _plans(8):
        assert _sorted(_mih_pairs(h, None, 8, plan)) == want, plan
        assert _sorted(_mih_pairs(h[:40], h[40:], 8, plan)) == _sorted(_brute_cross_pairs(h[:40], h[40:], 8))


@pytest.mark.parametrize("threshold", [0, 6, 8, 12])
def test_public_functions_match_the_scan_at_a_size_that_uses_the_index(threshold):
    rng = np.random.default_rng(200 + threshold)
    h = _planted(rng, 6000, threshold)
    assert dedup._choose_plan(threshold, len(h), len(h), len(h) * (len(h) - 1) / 2, True) is not None
    assert _sorted(near_pairs(h, threshold)) == _sorted(_brute_near_pairs(h, threshold))
    # a python list of ints, as the build passes it
    assert _sorted(near_pairs([int(v) for v in h[:3000]], threshold)) == _sorted(_brute_near_pairs(h[:3000], threshold))
    left, right = h[:1500], h[1500:]
    assert _sorted(cross_pairs(left, right, threshold)) == _sorted(_brute_cross_pairs(left, right, threshold))
    assert _sorted(cross_pairs(right, left, threshold)) == _sorted(_brute_cross_pairs(right, left, threshold))


def test_skewed_data_falls_back_to_the_scan(monkeypatch):
    """When the real candidate count would exceed the scan's cost, the scan runs instead."""
    rng = np.random.default_rng(3)
    fam = rng.integers(0, 2**64, dtype=np.uint64) ^ rng.integers(0, 1 << 13, size=6000, dtype=np.uint64)
    h = np.unique(fam)  # ~4,250 hashes, every block but the lowest shared by all of them
    pairs = len(h) * (len(h) - 1) / 2
    assert pairs > dedup._MIN_SCAN_PAIRS
    cost, plan = dedup._choose_plan(6, len(h), len(h), pairs, True)
    assert dedup._mih_candidates(h, None, plan, (pairs * dedup._COST_SCAN - cost) / dedup._COST_CAND) is None
    monkeypatch.setattr(dedup, "_brute_near_pairs", lambda *a: iter([("scan", *a[1:])]))
    assert list(near_pairs(h, 6, block=99)) == [("scan", 6, 99)]
    # the same number of uniform hashes takes the index
    u = np.random.default_rng(4).integers(0, 2**64, size=len(h), dtype=np.uint64)
    assert list(near_pairs(u, 6)) == []
    monkeypatch.setattr(dedup, "_brute_cross_pairs", lambda *a: iter([("scan", *a[2:])]))
    assert list(cross_pairs(h[:2000], h[2000:], 6, block=5)) == [("scan", 6, 5)]
    assert list(cross_pairs(u[:2000], u[2000:], 6)) == []


def test_edge_cases():
    assert list(near_pairs([], 6)) == [] and list(near_pairs([5], 6)) == []
    assert list(cross_pairs([], [1, 2], 6)) == [] and list(cross_pairs([1], [], 6)) == []
    assert list(near_pairs([3, 3, 2**64 - 1], 0)) == [(0, 1, 0)]
    assert list(cross_pairs([2**64 - 1], [0, 2**64 - 2], 1)) == [(0, 1, 1)]
    assert _sorted(near_pairs([0, 1, 3], 64)) == [(0, 1, 1), (0, 2, 2), (1, 2, 1)]
