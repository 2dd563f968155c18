"""Reading a built dataset (contract D) for export: rows streamed by batches, and its content hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from openmedreason.build.hf import AXES, DATASET_SCHEMA, files_sha256, read_build_json, read_rows, split_files

#: source columns the exports use: contract D without the rubric lists (not exported)
COLUMNS = tuple(n for n in DATASET_SCHEMA.names if n not in AXES)


def iter_rows(dataset_dir: Path, split: str, *, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Stream the rows of one split as dicts, a batch at a time (memory stays flat). Only the
    columns the exports use are read; ones a dataset lacks come back as None."""
    files = split_files(Path(dataset_dir), split)
    if not files:
        if not (Path(dataset_dir) / "data").is_dir():
            raise FileNotFoundError(f"{dataset_dir} has no data/ folder (not a built dataset?)")
        return
    import pyarrow.parquet as pq

    present = set(pq.read_schema(files[0]).names)
    cols = [c for c in COLUMNS if c in present]
    for row in read_rows(Path(dataset_dir), split, cols, batch_rows=batch_size):
        yield {c: row.get(c) for c in COLUMNS}


def dataset_hash(dataset_dir: Path) -> str:
    """``sha256:`` of the dataset's data files (names and bytes, in name order), streamed."""
    return "sha256:" + files_sha256(sorted((Path(dataset_dir) / "data").glob("*.parquet"))).hexdigest()


def build_info(dataset_dir: Path) -> dict[str, Any]:
    """A few fields of ``build.json`` worth repeating in an export manifest (empty when absent)."""
    info = read_build_json(Path(dataset_dir))
    return {k: info[k] for k in ("format", "seed", "input", "split", "versions") if k in info}
