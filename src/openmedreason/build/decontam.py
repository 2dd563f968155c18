"""Decontamination registry: fingerprints of benchmark items, matched against the build.

The registry is a directory (default ``~/.cache/openmedreason/decontam``, ``$OMR_DECONTAM_DIR``
or ``[build] decontam_registry``) with, per benchmark ``NAME``:

* ``NAME.parquet``: one row per item: ``item_id``, ``image_phash`` (16 hex, null without image),
  ``question`` (the normalised stem), ``signature`` (MinHash of the stem's word set),
  ``n_words`` (distinct words of the stem), ``article_ids`` (PMCID / article ids, OMR-Bench only);
* ``NAME.json``: source path, item count, MinHash permutations, when it was added.

An instance matches an item when (checked in this order) its article id or PMCID is one of the
item's article ids, its image is within ``image_hamming`` pHash bits of the item's image, or its
stem is a near-duplicate of the item's stem (MinHash LSH, Jaccard >= ``decontam_question_threshold``,
both stems with at least ``decontam_min_tokens`` distinct words).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openmedreason.build.dedup import (
    cross_pairs,
    jaccard,
    minhash,
    minhash_object,
    normalise_text,
    phash_bytes,
    phash_hex,
)
from openmedreason.reasons import reason
from openmedreason.run.store import write_json_atomic

CONTAMINATED = reason(
    "build.contaminated",
    "the instance matches a registered benchmark item (same article, near-duplicate image, or near-duplicate question); "
    "detail names the benchmark and the item",
)

REGISTRY_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string()),
        pa.field("image_phash", pa.string()),
        pa.field("question", pa.string()),
        pa.field("n_words", pa.int32()),
        pa.field("signature", pa.list_(pa.uint64())),
        pa.field("article_ids", pa.list_(pa.string())),
    ]
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: benchmarks whose items carry article ids (``cluster`` = article / PMCID): ours and the released corpus
ARTICLE_BENCHMARKS = ("omr-bench", "openmedreason", "omr")


def norm_article(value: str | None) -> str | None:
    """Comparable article key: PMCIDs upper case (``PMC123``), anything else lower case."""
    if not value:
        return None
    v = value.strip()
    if v.upper().startswith("PMC") and v[3:].isdigit():
        return v.upper()
    return v.lower()


def item_fingerprint(item, num_perm: int, *, articles: bool) -> dict:  # noqa: ANN001 - BenchItem
    """One registry row for a :class:`~openmedreason.bench.items.BenchItem`."""
    ph = None
    try:
        data = item.image_bytes()
        if data:
            ph = phash_hex(phash_bytes(data))
    except Exception:  # an unreadable benchmark image: keep the text fingerprint
        ph = None
    text = normalise_text(item.question)
    words = set(text.split())
    art: list[str] = []
    if articles:
        meta = item.meta or {}
        for v in (item.cluster, meta.get("pmcid"), meta.get("article_id")):
            k = norm_article(v if isinstance(v, str) else None)
            if k and k not in art:
                art.append(k)
    return {
        "item_id": item.id,
        "image_phash": ph,
        "question": text,
        "n_words": len(words),
        "signature": minhash(words, num_perm).astype(np.uint64).tolist(),
        "article_ids": art,
    }


class Registry:
    """A directory of registered benchmarks."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def path(self, name: str) -> Path:
        return self.root / f"{name}.parquet"

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.parquet") if (self.root / f"{p.stem}.json").exists())

    def info(self, name: str) -> dict:
        return json.loads((self.root / f"{name}.json").read_text())

    def add(
        self,
        name: str,
        items: Iterable,
        *,
        source: str | None = None,
        num_perm: int = 64,
        articles: bool | None = None,
        batch: int = 1000,
    ) -> dict:
        """Fingerprint ``items`` (BenchItems, streamed) into ``NAME.parquet`` (replacing an earlier
        registration of the same name). ``articles`` = record article ids; default: only for
        OMR-Bench-like names (:data:`ARTICLE_BENCHMARKS`) or items whose ``benchmark`` is one."""
        if not _NAME.match(name):
            raise ValueError(f"benchmark name must be letters, digits, '.', '_' or '-': {name!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(name)
        tmp = final.with_name(final.name + ".tmp")
        n = n_img = n_art = 0
        rows: list[dict] = []
        with pq.ParquetWriter(tmp, REGISTRY_SCHEMA, compression="zstd") as w:
            for item in items:
                rec_articles = articles if articles is not None else (
                    name.lower() in ARTICLE_BENCHMARKS or (item.benchmark or "").lower() in ARTICLE_BENCHMARKS
                )
                row = item_fingerprint(item, num_perm, articles=rec_articles)
                n += 1
                n_img += row["image_phash"] is not None
                n_art += bool(row["article_ids"])
                rows.append(row)
                if len(rows) >= batch:
                    w.write_table(pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA))
                    rows = []
            if rows:
                w.write_table(pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA))
        tmp.replace(final)
        info = {
            "name": name,
            "source": source,
            "items": n,
            "with_image": n_img,
            "with_article": n_art,
            "num_perm": num_perm,
            "added": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(info, self.root / f"{name}.json")
        return info

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
        (self.root / f"{name}.json").unlink(missing_ok=True)

    def index(
        self,
        names: Iterable[str] | None = None,
        *,
        num_perm: int = 64,
        image_hamming: int = 6,
        question_threshold: float = 0.8,
        min_tokens: int = 10,
    ) -> "DecontamIndex":
        """Load the chosen benchmarks (None = all registered) into an in-memory match index."""
        known = self.names()
        chosen = known if names is None else list(names)
        missing = [n for n in chosen if n not in known]
        if missing:
            raise KeyError(f"benchmark(s) not registered in {self.root}: {missing}; registered: {known}")
        idx = DecontamIndex(num_perm=num_perm, image_hamming=image_hamming, question_threshold=question_threshold, min_tokens=min_tokens)
        for name in chosen:
            idx.load(name, self.path(name))
        idx.freeze()
        return idx


@dataclass(frozen=True)
class Match:
    benchmark: str
    item_id: str
    how: str  # article | image | question
    value: str  # the matched article id, pHash distance, or Jaccard

    def detail(self) -> str:
        return f"{self.benchmark}:{self.item_id} ({self.how} {self.value})"


class DecontamIndex:
    """Registered items in memory: article ids (dict), image hashes (array), stems (MinHash LSH).

    Its size depends on the registry only, never on the number of instances built."""

    def __init__(self, *, num_perm: int, image_hamming: int, question_threshold: float, min_tokens: int) -> None:
        from datasketch import MinHashLSH

        self.num_perm = num_perm
        self.image_hamming = image_hamming
        self.question_threshold = question_threshold
        self.min_tokens = min_tokens
        self.benchmarks: list[str] = []
        self.items: list[tuple[str, str]] = []  # (benchmark, item id)
        self.articles: dict[str, int] = {}
        self._ph: list[int] = []
        self._ph_item: list[int] = []
        self.phashes = np.zeros(0, dtype=np.uint64)
        self.phash_items = np.zeros(0, dtype=np.int64)
        self.signatures: dict[int, np.ndarray] = {}
        self._sig_dtype = minhash(set(), num_perm).dtype  # stored signatures are cast to the build's dtype
        self.lsh = MinHashLSH(threshold=question_threshold, num_perm=num_perm)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, name: str, path: Path) -> None:
        self.benchmarks.append(name)
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                k = len(self.items)
                self.items.append((name, row["item_id"]))
                for a in row["article_ids"] or []:
                    self.articles.setdefault(a, k)
                if row["image_phash"]:
                    self._ph.append(int(row["image_phash"], 16))
                    self._ph_item.append(k)
                if (row["n_words"] or 0) >= self.min_tokens:
                    sig = row["signature"]
                    if sig is None or len(sig) != self.num_perm:  # registered with other permutations
                        sig = minhash(set((row["question"] or "").split()), self.num_perm)
                    sig = np.asarray(sig, dtype=np.uint64).astype(self._sig_dtype)
                    self.signatures[k] = sig
                    self.lsh.insert(k, minhash_object(sig), check_duplication=False)

    def freeze(self) -> None:
        self.phashes = np.asarray(self._ph, dtype=np.uint64)
        self.phash_items = np.asarray(self._ph_item, dtype=np.int64)
        self._ph, self._ph_item = [], []

    def match_article(self, *keys: str | None) -> Match | None:
        for key in keys:
            k = norm_article(key)
            if k is not None and k in self.articles:
                bench, item = self.items[self.articles[k]]
                return Match(bench, item, "article", k)
        return None

    def match_images(self, hashes: np.ndarray) -> dict[int, Match]:
        """For each position of ``hashes`` (distinct image hashes) the closest registered image
        within the threshold (ties: the earliest registered)."""
        best: dict[int, tuple[int, int]] = {}
        for i, j, d in cross_pairs(hashes, self.phashes, self.image_hamming):
            k = int(self.phash_items[j])
            if i not in best or (d, k) < best[i]:
                best[i] = (d, k)
        return {i: Match(*self.items[k], "image", f"pHash distance {d}") for i, (d, k) in best.items()}

    def match_question(self, stem: str) -> Match | None:
        words = set(normalise_text(stem).split())
        if len(words) < self.min_tokens or not self.signatures:
            return None
        sig = minhash(words, self.num_perm)
        best: tuple[float, int] | None = None
        for k in self.lsh.query(minhash_object(sig)):
            j = jaccard(sig, self.signatures[k])
            if j >= self.question_threshold and (best is None or (-j, k) < (-best[0], best[1])):
                best = (j, k)
        if best is None:
            return None
        return Match(*self.items[best[1]], "question", f"Jaccard {best[0]:.2f}")


def iter_bench_items(path: Path, benchmark: str | None) -> Iterator:
    """BenchItems of a benchmark copy via :func:`openmedreason.bench.loaders.iter_items`."""
    from openmedreason.bench.loaders import iter_items  # written by BENCH-CORE (contract B)

    kw = {"benchmark": benchmark} if benchmark else {}
    yield from iter_items(path, **kw)
