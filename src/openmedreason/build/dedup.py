"""Near-duplicate detection: perceptual image hashes, question MinHash, union-find clusters.

* Images: 64-bit pHash (``imagehash.phash`` on the grey image); two images are near-duplicates
  when the Hamming distance of their hashes is at most a threshold. Pairs are found exactly
  by multi-index hashing over the *distinct* hash values (see ``_mih_pairs``; the all-pairs numpy
  scan where that is cheaper), with O(U) memory.
* Questions: a MinHash signature of the set of normalised words of the stem plus the options
  (a set, so reshuffled options give the same signature); Jaccard estimated as the share of
  equal signature slots.

The build applies them in :mod:`openmedreason.build.dataset`; this module declares the reasons.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from openmedreason.reasons import reason

DUP_ID = reason("build.dup_id", "the same instance id was given twice (e.g. one article in two shards); the first is kept")
DUP_IMAGE = reason(
    "build.dup_image",
    "the image is a near-duplicate (pHash) of an image of another article (a reused or republished figure); "
    "the earliest article id is kept",
)
DUP_QUESTION = reason(
    "build.dup_question",
    "a near-duplicate question (MinHash of stem + options) about the same near-duplicate image cluster; the smallest id is kept",
)
IMAGE_MISSING = reason("build.image_missing", "the instance's image file is missing or cannot be decoded")


# --------------------------------------------------------------------------- images


def phash_image(image) -> int:  # noqa: ANN001 - a PIL image
    """64-bit pHash of a PIL image as an int (grey conversion first, so colour mode does not matter)."""
    import imagehash

    return int(str(imagehash.phash(image.convert("L"))), 16)


def phash_file(path: str | Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return phash_image(im)


def phash_bytes(data: bytes) -> int:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return phash_image(im)


def phash_hex(value: int) -> str:
    """The ``image_phash`` column: 16 lower-case hex characters."""
    return f"{value:016x}"


def _popcount64(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    b = x.view(np.uint8).reshape(*x.shape, 8)
    return _BYTE_POP[b].sum(axis=-1)


_BYTE_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def near_pairs(hashes: Sequence[int] | np.ndarray, threshold: int, block: int = 2048) -> Iterator[tuple[int, int, int]]:
    """``(i, j, distance)`` for every pair ``i < j`` of ``hashes`` with Hamming distance <= threshold.

    Exact. Uses multi-index hashing (see :func:`_mih_pairs`) when its estimated cost is below the
    all-pairs scan, else the scan (``block`` rows at a time). Each pair is yielded once; the order
    of the pairs is deterministic but unspecified (callers use them as a set).
    """
    h = np.asarray(hashes, dtype=np.uint64).ravel()
    yield from _pairs(h, None, int(threshold), block)


def cross_pairs(
    left: Sequence[int] | np.ndarray, right: Sequence[int] | np.ndarray, threshold: int, block: int = 2048
) -> Iterator[tuple[int, int, int]]:
    """``(i, j, distance)`` for every ``left[i]``, ``right[j]`` within ``threshold``.

    Exact, each pair once, order unspecified; method chosen as in :func:`near_pairs`.
    """
    a = np.asarray(left, dtype=np.uint64).ravel()
    b = np.asarray(right, dtype=np.uint64).ravel()
    if not len(a) or not len(b):
        return
    yield from _pairs(a, b, int(threshold), block)


# The all-pairs scans: the fallback, and the reference the tests compare against.


def _brute_near_pairs(h: np.ndarray, threshold: int, block: int = 2048) -> Iterator[tuple[int, int, int]]:
    h = np.asarray(h, dtype=np.uint64)
    n = len(h)
    for start in range(0, n, block):
        a = h[start : start + block]
        # compare the block with itself and everything after it
        rest = h[start:]
        d = _popcount64(a[:, None] ^ rest[None, :])
        ii, jj = np.nonzero(d <= threshold)
        for i, j in zip(ii.tolist(), jj.tolist()):
            gi, gj = start + i, start + j
            if gi < gj:
                yield gi, gj, int(d[i, j])


def _brute_cross_pairs(
    a_all: np.ndarray, b: np.ndarray, threshold: int, block: int = 2048
) -> Iterator[tuple[int, int, int]]:
    a_all = np.asarray(a_all, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    if not len(a_all) or not len(b):
        return
    for start in range(0, len(a_all), block):
        a = a_all[start : start + block]
        for bstart in range(0, len(b), 1 << 15):
            bb = b[bstart : bstart + (1 << 15)]
            d = _popcount64(a[:, None] ^ bb[None, :])
            ii, jj = np.nonzero(d <= threshold)
            for i, j in zip(ii.tolist(), jj.tolist()):
                yield start + i, bstart + j, int(d[i, j])


# Multi-index hashing. The 64 bits are cut into m contiguous blocks. With t = m*r + a (0 <= a < m),
# two hashes within distance t are within r of each other on one of the first a+1 blocks or within
# r-1 on one of the others (otherwise the distance would be at least (a+1)(r+1) + (m-a-1)r = t+1).
# m = t+1 is the plain pigeonhole (one block equal); fewer, wider blocks with a small radius give far
# fewer chance collisions for the price of enumerating the 1..r-bit flips of each block value.
# Per block, both sides are sorted by block value; for every flip mask, the buckets of value v and
# v^mask are paired; their cross product is verified with XOR + popcount in bounded chunks. A pair
# is reported by the first block that can catch it (later blocks drop it: no global set needed).

_CHUNK = 1 << 20  # candidate pairs verified per numpy batch (a few tens of MB of temporaries)
_DENSE_BITS = 22  # bucket lookup through a dense table up to this block width, else binary search
_MAX_MASKS = 4096  # flip masks per block at most (plans needing more are not considered)
# rough per-operation costs in ns on one core (measured with numpy 2.x on a 2-core Xeon): the scan
# per pair; ours per candidate pair verified, per bucket lookup (table in / out of the L2 cache, binary
# search), per hash per block (sorting, twice)
_COST_SCAN, _COST_CAND, _COST_SORT = 8.0, 8.0, 150.0
_COST_LOOKUP_SMALL, _COST_LOOKUP_BIG, _COST_SEARCH = 5.0, 12.0, 60.0
_MIN_SCAN_PAIRS = 1 << 22  # below this many pairs the scan is always used


def _ball(w: int, r: int) -> int:
    from math import comb

    return sum(comb(w, k) for k in range(r + 1))


def _plan(threshold: int, m: int) -> list[tuple[int, int, int]]:
    """``(shift, width, radius)`` of each of ``m`` blocks for ``threshold`` (blocks of radius -1 dropped)."""
    q, wide = divmod(64, m)
    r, a = divmod(threshold, m)
    out, shift = [], 0
    for b in range(m):
        w = q + (b < wide)  # the wider blocks get the larger radius
        rad = r if b <= a else r - 1
        if rad >= 0:
            out.append((shift, w, rad))
        shift += w
    return out


def _plan_cost(plan: list[tuple[int, int, int]], n_query: int, n_table: int, pairs: float, same: bool) -> float:
    """Expected cost (ns) of a plan on uniformly random hashes: chance candidates + lookups + sorting."""
    cost = 0.0
    for _, w, r in plan:
        masks = _ball(w, r)
        size = 2.0**w
        cost += pairs * masks / size * _COST_CAND + (n_query + (0 if same else n_table)) * _COST_SORT
        if masks > 1:
            distinct = size * -np.expm1(-n_query / size)  # expected distinct block values
            keys = n_query if distinct > n_query / 2 else distinct
            dense = w <= _DENSE_BITS and size <= 64 * n_table
            per = (_COST_LOOKUP_SMALL if size <= 1 << 18 else _COST_LOOKUP_BIG) if dense else _COST_SEARCH
            cost += keys * (masks - 1) * (0.5 if same else 1.0) * per
    return cost


def _flip_masks(w: int, r: int) -> list[int]:
    """All ``w``-bit masks with 1..r bits set, grouped by their top bit."""
    from itertools import combinations

    masks = [sum(1 << i for i in bits) for k in range(1, r + 1) for bits in combinations(range(w), k)]
    return sorted(masks, key=lambda mk: (mk.bit_length(), mk))


class _Side:
    """One set of hashes sorted by one block's value, grouped into buckets."""

    def __init__(self, h: np.ndarray, shift: int, width: int) -> None:
        keys = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        if width < 64:
            keys = keys.astype(np.int64)
        self.order = np.argsort(keys, kind="stable")
        self.hashes = h[self.order]
        k = keys[self.order]
        edge = np.flatnonzero(k[1:] != k[:-1]) + 1
        self.start = np.concatenate(([0], edge)).astype(np.int64)
        self.count = np.diff(np.append(self.start, len(k)))
        self.keys = k[self.start]
        self.item_keys = k
        self.width = width
        self.dense: tuple[np.ndarray, np.ndarray] | None = None

    def make_dense(self) -> None:
        """Bucket start and size by block value in two flat tables (int32 to stay cache friendly)."""
        dt = np.int32 if len(self.hashes) < 2**31 else np.int64
        cnt = np.zeros(1 << self.width, dtype=dt)
        st = np.zeros(1 << self.width, dtype=dt)
        cnt[self.keys], st[self.keys] = self.count, self.start
        self.dense = (st, cnt)

    def lookup(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices into ``q`` of the keys present, their buckets' starts, their buckets' sizes)."""
        if self.dense is not None:
            hit = np.flatnonzero(self.dense[1][q])
            q = q[hit]
            return hit, self.dense[0][q].astype(np.int64), self.dense[1][q].astype(np.int64)
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        hit = np.flatnonzero(self.keys[pos] == q)
        pos = pos[hit]
        return hit, self.start[pos], self.count[pos]


def _hits(
    qs: _Side | _Items, ts: _Side, masks: list[int], same: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per flip mask: (query bucket indices, table bucket starts, table bucket sizes) of the bucket
    pairs with values v, v ^ mask, both present. ``same``: each unordered bucket pair once, from the
    smaller value (v < v ^ mask exactly when the mask's top bit is clear in v; masks come grouped by
    top bit, so the subset is computed once per bit)."""
    top, sub, keys = -1, None, qs.keys
    for mk in masks:
        if same:
            bit = mk.bit_length() - 1
            if bit != top:
                top = bit
                sub = np.flatnonzero(((qs.keys >> bit) & 1) == 0)
                keys = qs.keys[sub]
        hit, ps, pc = ts.lookup(keys ^ keys.dtype.type(mk))
        if len(hit):
            yield (sub[hit] if same else hit), ps, pc


def _block_rows(
    qs: _Side, ts: _Side, masks: list[int], same: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows ``(x, y0, length)``: query position x against table positions y0..y0+length-1.

    ``same``: query and table are one set (``masks`` without 0); only pairs x < y are produced.
    """
    if same:  # mask 0 inside a bucket: the upper triangle
        big = qs.count > 1
        st, ct = qs.start[big], qs.count[big]
        if len(st):
            x = np.repeat(st, ct) + _ranks(ct)
            end = np.repeat(st + ct, ct)
            keep = end - x > 1
            yield x[keep], x[keep] + 1, (end - x - 1)[keep]
    if len(qs.keys) > len(qs.item_keys) // 2:
        # mostly single-hash buckets (wide blocks): look up every hash on its own, one row per hit,
        # instead of expanding query buckets into rows
        yield from _hits(_Items(qs), ts, masks, same)
        return
    for qb, ps, pc in _hits(qs, ts, masks, same):
        qct = qs.count[qb]
        yield np.repeat(qs.start[qb], qct) + _ranks(qct), np.repeat(ps, qct), np.repeat(pc, qct)


class _Items:
    """A side's hashes each as its own bucket (query view)."""

    def __init__(self, side: _Side) -> None:
        self.keys = side.item_keys


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each c of ``counts``, concatenated."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def _expand(x: np.ndarray, y0: np.ndarray, length: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate pairs of the rows, at most about 2 * _CHUNK at a time."""
    if len(x) <= _CHUNK and length.max() == 1:  # one candidate per row
        yield x, y0
        return
    long = length > _CHUNK
    if long.any():  # a huge bucket: cut its rows so that every row fits in a chunk
        pieces = (length + _CHUNK - 1) // _CHUNK
        x, y0 = np.repeat(x, pieces), np.repeat(y0, pieces)
        k = _ranks(pieces)
        y0 = y0 + k * _CHUNK
        length = np.minimum(np.repeat(length, pieces) - k * _CHUNK, _CHUNK)
    ends = np.cumsum(length)
    cuts = np.searchsorted(ends, np.arange(_CHUNK, int(ends[-1]), _CHUNK), side="right")
    lo = 0
    for hi in [*np.unique(cuts).tolist(), len(x)]:
        if hi <= lo:
            continue
        ln = length[lo:hi]
        base = np.cumsum(ln) - ln
        yy = np.repeat(y0[lo:hi] - base, ln) + np.arange(int(ln.sum()), dtype=np.int64)
        yield np.repeat(x[lo:hi], ln), yy
        lo = hi


def _count_candidates(qs: _Side, ts: _Side, masks: list[int], same: bool) -> float:
    """Candidate pairs a block will verify: exact for equal block values, estimated from at most
    32 evenly spaced flip masks for the others (this only decides between the methods)."""
    total = float((qs.count * (qs.count - 1) // 2).sum()) if same else 0.0
    flips = [mk for mk in masks if mk]
    if not same and masks and masks[0] == 0:
        total += sum(float(np.dot(qs.count[qb], pc)) for qb, _, pc in _hits(qs, ts, [0], same))
    if flips:
        step = max(1, len(flips) // 32)
        sample = flips[::step]
        got = sum(float(np.dot(qs.count[qb], pc)) for qb, _, pc in _hits(qs, ts, sample, same))
        total += got * len(flips) / len(sample)
    return total


def _pairs(a: np.ndarray, b: np.ndarray | None, t: int, block: int) -> Iterator[tuple[int, int, int]]:
    """Pairs of ``a`` (``b is None``) or of ``a`` x ``b`` within ``t``: multi-index hashing or the scan."""
    same = b is None
    n_b = len(a) if same else len(b)
    pairs = len(a) * (len(a) - 1) / 2 if same else float(len(a)) * n_b
    if t < 0 or pairs == 0:
        return
    chosen = None
    if t < 64 and pairs >= _MIN_SCAN_PAIRS:
        chosen = _choose_plan(t, min(len(a), n_b), max(len(a), n_b), pairs, same)
    if chosen is not None:
        cost, plan = chosen
        scan_cost = pairs * _COST_SCAN
        # the real candidate count (skewed data: many hashes sharing block values) decides,
        # before any pair is yielded
        if _mih_candidates(a, b, plan, (scan_cost - cost) / _COST_CAND) is not None:
            yield from _mih_pairs(a, b, t, plan)
            return
    if same:
        yield from _brute_near_pairs(a, t, block)
    else:
        yield from _brute_cross_pairs(a, b, t, block)


def _choose_plan(t: int, n_query: int, n_table: int, pairs: float, same: bool) -> tuple[float, list] | None:
    """The cheapest block plan by expected cost, or None where the scan is expected to be cheaper."""
    plans = []
    for m in range(1, min(t + 1, 64) + 1):
        plan = _plan(t, m)
        if all(_ball(w, r) - 1 <= _MAX_MASKS for _, w, r in plan):
            plans.append((_plan_cost(plan, n_query, n_table, pairs, same), plan))
    if not plans:
        return None
    best = min(plans, key=lambda p: p[0])
    return best if best[0] < pairs * _COST_SCAN else None


def _query_table(a: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """(query side, table side, same, swapped): the smaller set queries (fewer lookups)."""
    if b is None:
        return a, a, True, False
    if len(a) > len(b):
        return b, a, False, True
    return a, b, False, False


def _mih_candidates(a: np.ndarray, b: np.ndarray | None, plan: list, limit: float) -> float | None:
    """Candidate pairs the plan will verify, or None as soon as they pass ``limit``."""
    q_h, t_h, same, _ = _query_table(a, b)
    seen = 0.0
    for block_plan in plan:
        qs, ts, masks = _sides(q_h, t_h, same, *block_plan)
        seen += _count_candidates(qs, ts, masks, same)
        if seen > limit:
            return None
    return seen


def _mih_pairs(a: np.ndarray, b: np.ndarray | None, t: int, plan: list) -> Iterator[tuple[int, int, int]]:
    """Multi-index hashing with a given plan (each block's buckets are rebuilt here, one block at a
    time: holding all blocks at once would cost m times the memory)."""
    q_h, t_h, same, swap = _query_table(a, b)
    for b_ix, block_plan in enumerate(plan):
        qs, ts, masks = _sides(q_h, t_h, same, *block_plan)
        earlier = [(np.uint64(s), np.uint64((1 << ww) - 1), rr) for s, ww, rr in plan[:b_ix]]
        for rows in _block_rows(qs, ts, masks, same):
            if not len(rows[0]):
                continue
            for x, y in _expand(*rows):
                xor = qs.hashes[x] ^ ts.hashes[y]
                d = _popcount64(xor)
                ok = np.flatnonzero(d <= t)
                if not len(ok):
                    continue
                xor, d, x, y = xor[ok], d[ok], x[ok], y[ok]
                new = np.ones(len(ok), dtype=bool)
                for s, mk, rr in earlier:  # found already by an earlier block
                    new &= _popcount64((xor >> s) & mk) > rr
                i, j, d = qs.order[x[new]], ts.order[y[new]], d[new]
                if same:
                    i, j = np.minimum(i, j), np.maximum(i, j)
                elif swap:
                    i, j = j, i
                yield from zip(i.tolist(), j.tolist(), d.tolist())


def _sides(q_h: np.ndarray, t_h: np.ndarray, same: bool, shift: int, w: int, r: int) -> tuple[_Side, _Side, list[int]]:
    qs = _Side(q_h, shift, w)
    ts = qs if same else _Side(t_h, shift, w)
    if r > 0 and w <= _DENSE_BITS and (1 << w) <= 64 * len(t_h):
        ts.make_dense()
    flips = _flip_masks(w, r)
    return qs, ts, flips if same else [0, *flips]


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class UnionFind:
    """Disjoint sets over ``0..n-1`` (path halving, union by size)."""

    def __init__(self, n: int = 0) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def add(self) -> int:
        self.parent.append(len(self.parent))
        self.size.append(1)
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra


# --------------------------------------------------------------------------- questions

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def normalise_text(text: str) -> str:
    """NFKC, lower case, words only (punctuation and extra spaces dropped)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    return " ".join(_WORD.findall(text))


def question_words(stem: str, options: Iterable[str] = ()) -> set[str]:
    """The word set compared for question near-duplicates: stem + every option (order-free)."""
    words = set(normalise_text(stem).split())
    for o in options:
        words.update(normalise_text(o).split())
    return words


@lru_cache(maxsize=8)
def _template(num_perm: int):  # noqa: ANN202
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1)


def minhash(words: Iterable[str], num_perm: int) -> np.ndarray:
    """MinHash signature (datasketch, seed 1) of a word set, as a numpy array."""
    from datasketch import MinHash

    t = _template(num_perm)
    kw = {"scheme": t.scheme} if hasattr(t, "scheme") else {}
    m = MinHash(num_perm=num_perm, seed=1, permutations=t.permutations, **kw)
    data = sorted({w.encode() for w in words})
    if data:
        m.update_batch(data)
    return np.asarray(m.hashvalues).copy()


def minhash_object(signature: np.ndarray):  # noqa: ANN201
    """A datasketch MinHash wrapping a stored signature (for MinHashLSH)."""
    from datasketch import MinHash

    t = _template(len(signature))
    kw = {"scheme": t.scheme} if hasattr(t, "scheme") else {}
    return MinHash(num_perm=len(signature), seed=1, hashvalues=signature, **kw)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two signatures."""
    return float(np.count_nonzero(sig_a == sig_b)) / len(sig_a)
