"""Near-duplicate detection: perceptual image hashes, question MinHash, union-find clusters.

* Images: 64-bit pHash (``imagehash.phash`` on the grey image); two images are near-duplicates
  when the Hamming distance of their hashes is at most a threshold. Pairs are found by a
  vectorised all-pairs scan over the *distinct* hash values (numpy XOR + popcount, in blocks),
  so the cost is O(U²) in distinct images, with no per-instance memory.
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
    """``(i, j, distance)`` for every pair ``i < j`` of ``hashes`` with Hamming distance <= threshold."""
    h = np.asarray(hashes, dtype=np.uint64)
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


def cross_pairs(
    left: Sequence[int] | np.ndarray, right: Sequence[int] | np.ndarray, threshold: int, block: int = 2048
) -> Iterator[tuple[int, int, int]]:
    """``(i, j, distance)`` for every ``left[i]``, ``right[j]`` within ``threshold``."""
    a_all = np.asarray(left, dtype=np.uint64)
    b = np.asarray(right, dtype=np.uint64)
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
