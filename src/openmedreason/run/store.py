"""Parquet shards for pydantic records: Arrow schemas derived from the models, atomic writes,
streaming reads.

Kept records are stored with exactly the model's fields. Rejected records are stored with all the
model's fields plus ``reject_step``, ``reject_reason``, ``reject_value`` and ``reject_detail``, so a
reviewer can read them with the same model and re-admit them.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from openmedreason.records import Record
from openmedreason.run.steps import Rejected

REJECT_FIELDS = [
    pa.field("reject_step", pa.string()),
    pa.field("reject_reason", pa.string()),
    pa.field("reject_value", pa.float64()),
    pa.field("reject_detail", pa.string()),
]

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
}


def _arrow_type(annotation: Any) -> pa.DataType:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cannot map union {annotation} to Arrow")
        return _arrow_type(args[0])
    if origin in (list, tuple, typing.Sequence):
        (item,) = typing.get_args(annotation)[:1]
        return pa.list_(_arrow_type(item))
    if origin is dict:
        # free-form mappings (metrics, usage) are stored as JSON text
        return pa.string()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(schema_for(annotation))
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return pa.string()
    raise TypeError(f"cannot map {annotation!r} to Arrow")


def _dict_fields(model: type[BaseModel]) -> list[str]:
    return [n for n, f in model.model_fields.items() if typing.get_origin(_strip_optional(f.annotation)) is dict]


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def schema_for(model: type[BaseModel], rejected: bool = False) -> pa.Schema:
    fields = [pa.field(name, _arrow_type(f.annotation)) for name, f in model.model_fields.items()]
    if rejected:
        fields += REJECT_FIELDS
    return pa.schema(fields)


def _row(record: BaseModel, dict_fields: list[str]) -> dict[str, Any]:
    row = record.model_dump(mode="python")
    for name in dict_fields:
        if row.get(name) is not None:
            row[name] = json.dumps(row[name], sort_keys=True)
    return row


def records_table(records: Iterable[BaseModel], model: type[BaseModel]) -> pa.Table:
    dict_fields = _dict_fields(model)
    return pa.Table.from_pylist([_row(r, dict_fields) for r in records], schema=schema_for(model))


def rejected_table(rejects: Iterable[Rejected], model: type[BaseModel], step: str) -> pa.Table:
    dict_fields = _dict_fields(model)
    rows = []
    for r in rejects:
        row = _row(r.record, dict_fields)
        row.update(reject_step=step, reject_reason=r.reason, reject_value=r.value, reject_detail=r.detail)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema_for(model, rejected=True))


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temporary name, then rename: a killed process never leaves a half-written shard."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_json_atomic(obj: Any, path: Path, sort_keys: bool = False) -> None:
    """Atomic JSON write; key order is kept (the funnel lists steps in pipeline order)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=str))
    os.replace(tmp, path)


def _from_row(row: dict[str, Any], model: type[Record], dict_fields: list[str]) -> Record:
    for name in dict_fields:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return model.model_validate(row)


def iter_records(paths: Iterable[Path], model: type[Record], batch_rows: int = 1024) -> Iterator[Record]:
    """Stream records from Parquet files in order, ``batch_rows`` rows in memory at a time."""
    names = list(model.model_fields)
    dict_fields = _dict_fields(model)
    for path in paths:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=names):
            for row in batch.to_pylist():
                yield _from_row(row, model, dict_fields)


def iter_rejected(paths: Iterable[Path], model: type[Record]) -> Iterator[tuple[Record, dict[str, Any]]]:
    """Stream (record, reject info) pairs from rejected shards."""
    names = list(model.model_fields)
    dict_fields = _dict_fields(model)
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                info = {f.name: row.pop(f.name) for f in REJECT_FIELDS}
                rec = _from_row({k: row[k] for k in names}, model, dict_fields)
                yield rec, info
