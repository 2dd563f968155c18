"""Pieces every format shares: the exporter base class, streaming sinks, image files, prompts."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmedreason.bench.protocol import FORMAT_INSTRUCTION, system_prompt
from openmedreason.build.export.validate import ExportItem, RecordSpec

#: system prompt of the conversational exports: the evaluation protocol's, so a model trained on an
#: export is evaluated with the turns it learned (openmedreason.bench.protocol)
SYSTEM_PROMPT = system_prompt()

#: instruction appended to the question where a target has no system turn (EasyR1, verl)
ANSWER_INSTRUCTION = FORMAT_INSTRUCTION


@dataclass
class ExportOptions:
    """Options of one export run (every default documented in docs/export.md)."""

    images: str = "embed"  # "embed" | "files"
    system_prompt: str | None = SYSTEM_PROMPT
    easyr1_answer: str = "json"  # "json" | "letter"
    task_name: str = "openmedreason_mcq"
    min_image_side: int = 28
    rows_per_group: int = 64  # parquet row-group size (rows)
    bytes_per_group: int = 32 << 20  # … or this many image bytes, whichever comes first
    data_source: str = "openmedreason"


@dataclass
class ExportContext:
    """Where one format writes (``work``, renamed to ``final`` when done) and how."""

    work: Path
    final: Path
    options: ExportOptions
    splits: list[str]
    source: Path
    extra: dict[str, Any] = field(default_factory=dict)


class Exporter:
    """One target format. Subclasses set ``name``, ``spec`` and implement :meth:`convert` and :meth:`write`.

    The driver calls ``begin_split`` / (``convert`` → shared check → ``write``) per row /
    ``end_split`` for each split, then ``finish`` (returns extra manifest fields).
    """

    name: str = ""
    spec: RecordSpec
    #: image modes the target supports (LLaMA-Factory: files only; VLMEvalKit: embedded only)
    image_modes: tuple[str, ...] = ("embed", "files")

    def __init__(self, ctx: ExportContext) -> None:
        self.ctx = ctx
        self.files: list[str] = []
        self._image_dir: Path | None = None

    @property
    def image_mode(self) -> str:
        mode = self.ctx.options.images
        return mode if mode in self.image_modes else self.image_modes[0]

    def begin_split(self, split: str) -> None:  # pragma: no cover - default no-op
        pass

    def convert(self, item: ExportItem) -> dict[str, Any]:
        raise NotImplementedError

    def write(self, record: dict[str, Any], item: ExportItem) -> None:
        raise NotImplementedError

    def end_split(self, split: str) -> None:  # pragma: no cover - default no-op
        pass

    def finish(self) -> dict[str, Any]:
        return {}

    # helpers ---------------------------------------------------------------------------------------

    def image_relpath(self, item: ExportItem) -> str:
        """``images/<safe id>.<ext>``: where the item's image goes in files mode (relative to the format dir)."""
        return f"images/{safe_name(item.id)}.{item.image_ext}"

    def write_image_file(self, item: ExportItem) -> str:
        """Write the item's (RGB) image under ``images/`` and return its relative path."""
        rel = self.image_relpath(item)
        path = self.ctx.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.image)
        return rel

    def image_struct(self, item: ExportItem) -> dict[str, Any]:
        """HF ``Image`` storage for the item: embedded bytes, or (files mode) the relative path that
        :meth:`write` fills with :meth:`write_image_file`."""
        if self.image_mode == "files":
            return {"bytes": None, "path": self.image_relpath(item)}
        return {"bytes": item.image, "path": f"{safe_name(item.id)}.{item.image_ext}"}


def safe_name(rid: str) -> str:
    """A file-system-safe, unique name for an id (an id hash is appended when characters were replaced)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", rid).strip("._")[:80] or "item"
    if safe != rid:
        safe += "-" + hashlib.sha1(rid.encode()).hexdigest()[:8]
    return safe


def meta_columns(item: ExportItem) -> dict[str, Any]:
    """Metadata every table-like export carries (strings, nullable)."""
    out: dict[str, Any] = {"id": item.id, "split": item.split}
    out.update(item.meta)
    return out


def meta_features() -> dict[str, Any]:
    from datasets import Value

    from openmedreason.build.export.validate import META_FIELDS

    feats: dict[str, Any] = {"id": Value("string"), "split": Value("string")}
    feats.update({k: Value("string") for k in META_FIELDS})
    return feats


def list_feature(inner: Any) -> Any:
    import datasets

    return datasets.List(inner) if hasattr(datasets, "List") else datasets.Sequence(inner)


class ParquetSink:
    """Append rows to one parquet file in row groups; the schema carries HF ``features`` metadata."""

    def __init__(self, path: Path, features: Any, *, rows_per_group: int, bytes_per_group: int) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.schema = features.arrow_schema
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0
        self.rows_per_group = rows_per_group
        self.bytes_per_group = bytes_per_group
        self.count = 0

    def add(self, row: dict[str, Any], nbytes: int = 0) -> None:
        self._rows.append(row)
        self._bytes += nbytes
        self.count += 1
        if len(self._rows) >= self.rows_per_group or self._bytes >= self.bytes_per_group:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows, self._bytes = [], 0

    def close(self) -> None:
        self.flush()
        self._writer.close()


class JsonListSink:
    """Write a JSON list one element at a time (LLaMA-Factory reads a plain JSON list)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("w", encoding="utf-8")
        self._f.write("[")
        self.count = 0

    def add(self, obj: Any) -> None:
        self._f.write(("," if self.count else "") + "\n" + json.dumps(obj, ensure_ascii=False))
        self.count += 1

    def close(self) -> None:
        self._f.write("\n]\n" if self.count else "]\n")
        self._f.close()


class ParquetExporter(Exporter):
    """A format whose data is one parquet file per split (``<split>.parquet``) with fixed features."""

    def features(self) -> Any:
        raise NotImplementedError

    def begin_split(self, split: str) -> None:
        opts = self.ctx.options
        self._sink = ParquetSink(
            self.ctx.work / self.parquet_name(split),
            self.features(),
            rows_per_group=opts.rows_per_group,
            bytes_per_group=opts.bytes_per_group,
        )

    def parquet_name(self, split: str) -> str:
        return f"{split}.parquet"

    def write(self, record: dict[str, Any], item: ExportItem) -> None:
        if self.image_mode == "files":
            self.write_image_file(item)
        self._sink.add(record, len(item.image) if self.image_mode == "embed" else 0)

    def end_split(self, split: str) -> None:
        self._sink.close()
        self.files.append(self.parquet_name(split))
