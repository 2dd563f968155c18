"""Reading a built dataset (contract D) for export: rows streamed by batches, and its content hash."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

#: source columns the exports use (``perception``/``knowledge``/``rationale`` are not exported)
COLUMNS = (
    "id",
    "image",
    "question",
    "stem",
    "options",
    "answer",
    "reasoning",
    "models",
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
    "image_phash",
)

_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d{5}-of-\d{5}\.parquet$")


def split_files(dataset_dir: Path, split: str) -> list[Path]:
    """The parquet shards of ``split`` (``data/{split}-00000-of-0000N.parquet``), in order."""
    data = Path(dataset_dir) / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"{dataset_dir} has no data/ folder (not a built dataset?)")
    return sorted(p for p in data.glob(f"{split}-*.parquet") if (m := _SHARD.match(p.name)) and m.group("split") == split)


def iter_rows(dataset_dir: Path, split: str, *, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Stream the rows of one split as dicts, a batch at a time (memory stays flat).

    Uses ``openmedreason.build.hf.read_rows`` when the build package provides it; otherwise reads
    the shards with pyarrow. Only the columns the exports use are read (missing ones are None).
    """
    files = split_files(Path(dataset_dir), split)
    if not files:
        return
    try:
        from openmedreason.build.hf import read_rows  # type: ignore[attr-defined]
    except ImportError:
        read_rows = None
    if read_rows is not None:
        import inspect

        present = _present_columns(files[0])
        kw: dict[str, Any] = {"columns": [c for c in COLUMNS if c in present]}
        if "batch_rows" in inspect.signature(read_rows).parameters:
            kw["batch_rows"] = batch_size
        yield from read_rows(Path(dataset_dir), split, **kw)
        return
    import pyarrow.parquet as pq

    for path in files:
        pf = pq.ParquetFile(path)
        cols = [c for c in COLUMNS if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            yield from batch.to_pylist()


def _present_columns(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_schema(path).names)


def count_rows(dataset_dir: Path, split: str) -> int:
    """Rows of ``split`` from the parquet footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in split_files(Path(dataset_dir), split))


def dataset_hash(dataset_dir: Path) -> str:
    """``sha256:`` of the dataset's data files (names and bytes, in name order), streamed."""
    h = hashlib.sha256()
    data = Path(dataset_dir) / "data"
    for p in sorted(data.glob("*.parquet")):
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def build_info(dataset_dir: Path) -> dict[str, Any]:
    """A few fields of ``build.json`` worth repeating in an export manifest (empty when absent)."""
    path = Path(dataset_dir) / "build.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: info[k] for k in ("version", "seed", "created", "dataset_hash", "content_hash", "counts") if k in info}
