"""The built dataset's Parquet layout (contract D): one Arrow schema for both splits, with the
Hugging Face ``features`` metadata in the schema so ``datasets`` decodes ``image`` as ``Image()``.

Layout of a dataset folder::

    DATASET/data/train-00000-of-0000N.parquet
    DATASET/data/test-00000-of-0000M.parquet     (a split with no rows has no file)
    DATASET/rejected.parquet      build rejects (id, reason, detail, kept_id, benchmark, article_id)
    DATASET/build.json            build config, funnel, split sizes, input fingerprint, versions
    DATASET/README.md             dataset card (openmedreason.build.card.write_card)

Image bytes are embedded by us (``datasets`` 5 keeps only the path of an image column built from
paths), so the files load anywhere without the source images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "test")
#: rubric unit fields, in the released order (openmedreason.bench.items.RubricUnit)
UNIT_FIELDS = ("unit_id", "topic", "claim", "presence_question", "correctness_question", "source_quote", "importance")
AXES = ("perception", "knowledge", "rationale")
#: our string columns after the released ones (all nullable)
META_STRINGS = (
    "id",
    "article_id",
    "pmcid",
    "doi",
    "license",
    "figure_id",
    "panel",
    "title",
    "category",
    "family",
    "modality_group",
    "modality",
    "style",
    "image_scope",
    "answer_format",
    "engine",
)

_UNIT = pa.struct([pa.field(n, pa.string()) for n in UNIT_FIELDS])
_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def _hf_features() -> dict[str, Any]:
    value = {"dtype": "string", "_type": "Value"}
    unit = {"feature": {n: dict(value) for n in UNIT_FIELDS}, "_type": "List"}
    feats: dict[str, Any] = {"image": {"_type": "Image"}}
    for name in ("question", "reasoning", "answer"):
        feats[name] = dict(value)
    for axis in AXES:
        feats[axis] = json.loads(json.dumps(unit))
    for name in META_STRINGS:
        feats[name] = dict(value)
    feats["models"] = {"feature": dict(value), "_type": "List"}
    feats["stem"] = dict(value)
    feats["options"] = {"feature": dict(value), "_type": "List"}
    feats["image_phash"] = dict(value)
    return feats


def _schema() -> pa.Schema:
    fields = [pa.field("image", _IMAGE)]
    fields += [pa.field(n, pa.string()) for n in ("question", "reasoning", "answer")]
    fields += [pa.field(a, pa.list_(_UNIT)) for a in AXES]
    fields += [pa.field(n, pa.string()) for n in META_STRINGS]
    fields += [
        pa.field("models", pa.list_(pa.string())),
        pa.field("stem", pa.string()),
        pa.field("options", pa.list_(pa.string())),
        pa.field("image_phash", pa.string()),
    ]
    meta = {b"huggingface": json.dumps({"info": {"features": _hf_features()}}).encode()}
    return pa.schema(fields, metadata=meta)


#: The Arrow schema of both splits (column order = released columns, then ours).
DATASET_SCHEMA: pa.Schema = _schema()
COLUMNS: tuple[str, ...] = tuple(DATASET_SCHEMA.names)

_FILE_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.parquet$")


def data_dir(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / "data"


def file_name(split: str, index: int, n_files: int) -> str:
    """HF shard naming ``{split}-{i:05d}-of-{n:05d}.parquet``."""
    return f"{split}-{index:05d}-of-{n_files:05d}.parquet"


def split_files(dataset_dir: Path, split: str) -> list[Path]:
    """The Parquet files of one split, in shard order (empty list when the split has none)."""
    d = data_dir(dataset_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _FILE_RE.match(p.name)
        if m and m["split"] == split:
            out.append((int(m["i"]), p))
    return [p for _, p in sorted(out)]


def n_files_for(n_rows: int, rows_per_file: int) -> int:
    """Number of shard files for ``n_rows`` rows. An empty split has no file: ``datasets`` refuses
    to load a split whose files hold no rows, and loads the other split alone."""
    return -(-n_rows // rows_per_file)


class SplitWriter:
    """Write one split's rows into ``n_files`` shard files of at most ``rows_per_file`` rows,
    flushing a row group every ``row_group_rows`` rows (memory stays bounded by one row group).

    Rows are dicts with the schema's columns; missing columns are written as null / empty lists.
    Files are written under temporary names and renamed on :meth:`close`.
    """

    def __init__(self, out_dir: Path, split: str, n_rows: int, *, rows_per_file: int, row_group_rows: int) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.n_rows = n_rows
        self.rows_per_file = rows_per_file
        self.row_group_rows = max(1, row_group_rows)
        self.n_files = n_files_for(n_rows, rows_per_file)
        self.written = 0
        self.paths: list[Path] = []
        self._file_index = -1
        self._rows_in_file = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._buf: list[dict[str, Any]] = []

    def _open_next(self) -> None:
        self._close_file()
        self._file_index += 1
        if self._file_index >= self.n_files:
            raise RuntimeError(f"{self.split}: more rows than announced ({self.n_rows})")
        final = self.out_dir / file_name(self.split, self._file_index, self.n_files)
        self._tmp = final.with_name(final.name + ".tmp")
        self._writer = pq.ParquetWriter(self._tmp, DATASET_SCHEMA, compression="zstd", write_statistics=False)
        self.paths.append(final)
        self._rows_in_file = 0

    def _flush(self) -> None:
        if not self._buf:
            return
        table = pa.Table.from_pylist([normalise_row(r) for r in self._buf], schema=DATASET_SCHEMA)
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        self._buf = []

    def _close_file(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            assert self._tmp is not None
            os.replace(self._tmp, self.paths[-1])
            self._writer = None

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None or self._rows_in_file >= self.rows_per_file:
            self._open_next()
        self._buf.append(row)
        self._rows_in_file += 1
        self.written += 1
        if len(self._buf) >= self.row_group_rows:
            self._flush()

    def close(self) -> list[Path]:
        if self.written != self.n_rows:
            raise RuntimeError(f"{self.split}: wrote {self.written} rows, announced {self.n_rows}")
        self._close_file()
        return list(self.paths)


def normalise_row(row: dict[str, Any]) -> dict[str, Any]:
    """Fill absent columns: null strings, empty lists for list columns."""
    out = {}
    for name in COLUMNS:
        value = row.get(name)
        if value is None and name in (*AXES, "models", "options"):
            value = []
        out[name] = value
    return out


def read_build_json(dataset_dir: Path) -> dict[str, Any]:
    """``DATASET/build.json`` as a dict; empty when it is absent or unreadable."""
    from openmedreason.report import _load_json

    return _load_json(Path(dataset_dir) / "build.json") or {}


def write_split(
    dataset_dir: Path,
    split: str,
    rows: Iterable[dict[str, Any]],
    n_rows: int,
    *,
    rows_per_file: int | None = None,
    row_group_rows: int | None = None,
) -> list[Path]:
    """Write ``n_rows`` rows of ``split`` into ``DATASET/data/`` (HF shard names), replacing the
    split's previous files. ``n_rows`` must be known up front for the ``-of-N`` names. File and
    row-group sizes default to the build's (``build.json``), else 5000 and 100. Each file is
    written under a temporary name and renamed, so rows may be streamed from the old files."""
    cfg = read_build_json(dataset_dir).get("config") or {}
    rows_per_file = rows_per_file or int(cfg.get("rows_per_file") or 5000)
    row_group_rows = row_group_rows or int(cfg.get("row_group_rows") or 100)
    d = data_dir(dataset_dir)
    old = split_files(dataset_dir, split)
    w = SplitWriter(d, split, n_rows, rows_per_file=rows_per_file, row_group_rows=row_group_rows)
    for row in rows:
        w.write(row)
    paths = w.close()
    for p in old:
        if p not in paths:
            p.unlink(missing_ok=True)
    return paths


def read_rows(
    dataset_dir: Path,
    split: str,
    columns: Sequence[str] | None = None,
    *,
    batch_rows: int = 256,
) -> Iterator[dict[str, Any]]:
    """Stream a split's rows as dicts, ``batch_rows`` at a time (``columns`` = a subset, e.g. all
    but ``image`` for statistics). ``image`` comes back as ``{"bytes": …, "path": …}``."""
    cols = list(columns) if columns is not None else None
    for path in split_files(dataset_dir, split):
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            yield from batch.to_pylist()


def files_sha256(paths: Iterable[Path]) -> "hashlib._Hash":
    """sha256 over files' names and bytes, in the given order, streamed (1 MiB at a time)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h


def count_rows(dataset_dir: Path, split: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in split_files(dataset_dir, split))
