"""Ingest of record sets: one row = one figure panel (image + caption + context).

Inputs are JSON Lines (``.jsonl``, ``.jsonl.gz``) or Parquet (``.parquet``) files whose rows
name an image file and carry its caption and the text around it, for example Open-PMC-18M
(``subfig_path``, ``full_fig_path``, ``sub_caption``, ``full_caption``, ``image_context``) or
the medical demo corpus (``image``, ``caption``, ``case_text``, ``discussion_text``).

Field maps
    A :class:`FieldMap` names, for each Panel field, the input field(s) that feed it. Each entry
    is a list of input field names: for ``context`` every named field that is present
    contributes paragraphs, in order; for every other entry the first named field with a
    non-empty value wins. Presets: ``openpmc`` and ``medcorpus`` (see :data:`PRESETS`); the CLI's
    ``--field-map`` string (:func:`parse_field_map`) picks or extends a preset. With no map the
    preset is detected from the first record's keys (:func:`detect_preset`).

Reading in bounded chunks
    A record file is never loaded whole. JSONL is streamed line by line (one non-blank line =
    one row; blank lines are not rows); Parquet is read by row groups with
    ``ParquetFile.iter_batches``, only the mapped columns. :func:`iter_record_units` cuts a file
    into ``(path, start, stop)`` row ranges and :func:`ingest_records` reads one range. For plain
    ``.jsonl`` the byte offset of every 4096th row is remembered per process (and units carry
    the byte offset of their first row), so reading a range does not re-scan the file from the
    start; ``.jsonl.gz`` cannot seek, so each range decompresses from the beginning (use plain
    JSONL or Parquet for very large inputs).

Rows and ids
    Every row gives exactly one Panel or one :class:`Rejected` - a bad JSON line is rejected,
    never skipped and never a crash. The article key is ``PMC…`` when the row has a PMCID, else
    ``doi:<doi>``, else ``file:<record file stem>``; the panel id is
    ``<key>|<figure_id or ->|<panel letter, else the row's own id, else <stem>:<row index>>``.
    ``article_id`` is the key, except for rows without PMCID or DOI: there it is
    ``file:<stem>:<file name of the full figure image>``, so the dataset split groups a figure's
    panels rather than every keyless row of the file.
    Ids built from the row's own id field trust that field to be unique in the file.

Image paths
    A relative image path is resolved against the folder of the record file and must stay
    inside that folder tree (``../`` escapes are rejected as ``ingest.record_invalid``); an
    absolute path is taken as given. Panels carry absolute, normalised paths (the raw value
    is kept in ``graphic_href``). A panel or full-figure image that is not on disk is rejected
    as ``ingest.image_missing`` (unmap ``full_image`` with ``full_image=`` when full figures
    were not downloaded). Images embedded in the rows (bytes) are not supported.

Context
    A string is one citing paragraph (a string holding a JSON object or list of strings is
    decoded first, which is how a ``{figure_id: [paragraphs]}`` dict survives a string-typed
    Parquet column); a list gives one paragraph per item; a dict ``{figure_id: [paragraphs]}``
    gives the entries of this row's figure id (exact key, else the key equal ignoring case and
    spaces, else none), or every entry when the row has no figure id. Mentions are empty and
    ``panels`` is empty: the paragraphs apply to the whole figure.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from pydantic import BaseModel, ConfigDict, field_validator

from openmedreason.ingest.license import normalize_license
from openmedreason.ingest import IMAGE_MISSING
from openmedreason.reasons import reason
from openmedreason.records import CitingParagraph, Panel
from openmedreason.run.steps import Rejected

__all__ = [
    "RECORD_INVALID",
    "IMAGE_MISSING",
    "FieldMap",
    "PRESETS",
    "RecordUnit",
    "parse_field_map",
    "detect_preset",
    "resolve_field_map",
    "record_keys",
    "is_record_file",
    "count_rows",
    "iter_record_units",
    "iter_rows",
    "iter_records",
    "ingest_records",
]


RECORD_INVALID = reason(
    "ingest.record_invalid",
    "a record-file row is not a JSON object, lacks the mapped image field or has a field of the wrong type",
)

SOURCE_KIND = "records"
DEFAULT_ROWS_PER_UNIT = 2000
_CHECKPOINT_EVERY = 4096
_PARQUET_BATCH = 1024


# --------------------------------------------------------------------------- field maps


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out: list[str] = []
    for v in value:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"input field names must be non-empty strings, got {v!r}")
        out.append(v.strip())
    return out


class FieldMap(BaseModel):
    """Which input field(s) feed each Panel field.

    Each entry is a list of input field names (a single string is accepted). ``context``
    concatenates the paragraphs of every named field present; the other entries take the first
    named field with a non-empty value. An empty list leaves the Panel field at its default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: list[str] = []
    image: list[str] = []
    full_image: list[str] = []
    caption: list[str] = []
    sub_caption: list[str] = []
    context: list[str] = []
    license: list[str] = []
    doi: list[str] = []
    pmcid: list[str] = []
    title: list[str] = []
    journal: list[str] = []
    year: list[str] = []
    figure_id: list[str] = []
    panel: list[str] = []

    @field_validator("*", mode="before")
    @classmethod
    def _to_names(cls, v: Any) -> list[str]:
        return _names(v)

    def input_fields(self) -> list[str]:
        """Every input field the map reads, de-duplicated, in field order."""
        seen: dict[str, None] = {}
        for target in type(self).model_fields:
            for name in getattr(self, target):
                seen.setdefault(name, None)
        return list(seen)

    def describe(self) -> str:
        """The map in ``--field-map`` syntax (mapped entries only)."""
        return ",".join(
            f"{t}={'+'.join(getattr(self, t))}" for t in type(self).model_fields if getattr(self, t)
        )


FIELDS: tuple[str, ...] = tuple(FieldMap.model_fields)

PRESETS: dict[str, FieldMap] = {
    # Open-PMC-18M: sub-figure crops with the full figure, full caption and in-text references.
    # `image`, `caption` and `intext_refs` cover the released webdataset's JSON field names.
    "openpmc": FieldMap(
        id=["id", "__key__", "key"],
        image=["subfig_path", "image"],
        full_image=["full_fig_path"],
        caption=["full_caption", "caption"],
        sub_caption=["sub_caption"],
        context=["image_context", "intext_refs"],
        license=["license"],
        doi=["doi"],
        pmcid=["PMC_ID", "pmcid", "PMCID"],
        title=["title"],
        journal=["journal"],
        year=["year"],
        figure_id=["figure_id", "fig_id"],
        panel=["panel", "subfig_label"],
    ),
    # The medical demo corpus (examples/corpus/medical) and other image+caption record sets.
    "medcorpus": FieldMap(
        id=["id"],
        image=["image"],
        full_image=["full_image"],
        caption=["caption"],
        sub_caption=["sub_caption"],
        context=["case_text", "discussion_text"],
        license=["license"],
        doi=["source_doi", "doi"],
        pmcid=["pmcid", "PMC_ID"],
        title=["title"],
        journal=["journal"],
        year=["year"],
        figure_id=["figure_id"],
        panel=["panel"],
    ),
}


def parse_field_map(spec: str, base: FieldMap | str | None = None) -> FieldMap:
    """Parse a ``--field-map`` value: ``target=source[+source…],…``.

    ``target`` is a Panel-side name (see :class:`FieldMap`); several sources are joined with
    ``+`` (or ``|``); ``target=`` with nothing after it unmaps the target. An entry
    ``preset=NAME`` starts from that preset; otherwise the entries override/extend ``base`` (a
    FieldMap or a preset name), or an empty map when ``base`` is None. A bare preset name is
    accepted as the whole spec. Raises ValueError with the offending entry on any error.
    """
    if not isinstance(spec, str):
        raise ValueError(f"field map must be a string, got {type(spec).__name__}")
    text = spec.strip()
    if text in PRESETS:
        return PRESETS[text]
    start = _preset(base) if isinstance(base, str) else (base or FieldMap())
    updates: dict[str, list[str]] = {}
    preset_name: str | None = None
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if "=" not in entry:
            raise ValueError(
                f"field map entry {entry!r} has no '=': write target=source, e.g. 'image=img,caption=cap'"
            )
        target, _, source = (s.strip() for s in entry.partition("="))
        if target == "preset":
            if preset_name is not None:
                raise ValueError(f"field map names a preset twice: {preset_name!r} and {source!r}")
            preset_name = source
            start = _preset(source)
            continue
        if target not in FIELDS:
            raise ValueError(f"unknown field map target {target!r} in {entry!r}; known targets: {', '.join(FIELDS)}, preset")
        if target in updates:
            raise ValueError(f"field map target {target!r} given twice")
        names = [s.strip() for s in re.split(r"[+|]", source)] if source else []
        if any(not n for n in names):
            raise ValueError(f"empty source field name in {entry!r}")
        updates[target] = names
    if not updates and preset_name is None and base is None:
        raise ValueError(f"empty field map {spec!r}; give a preset ({', '.join(PRESETS)}) or target=source entries")
    return start.model_copy(update=updates)


def _preset(name: str) -> FieldMap:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown field map preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def detect_preset(keys: Any) -> str | None:
    """The preset that fits a record with these keys: ``openpmc`` when it has ``subfig_path``
    (or Open-PMC's ``image`` + ``full_caption``/``sub_caption``/``image_context``/``PMC_ID``),
    ``medcorpus`` (a generic image+caption mapping) when it has ``image`` and ``caption``."""
    k = set(keys)
    if "subfig_path" in k or ("image" in k and k & {"full_caption", "sub_caption", "image_context", "PMC_ID"}):
        return "openpmc"
    if "image" in k and "caption" in k:
        return "medcorpus"
    return None


def resolve_field_map(path: str | os.PathLike[str], field_map: FieldMap | str | None = None) -> FieldMap:
    """The field map to use for a record file.

    A FieldMap is used as is; a string is a preset name or a ``--field-map`` spec, which
    extends the preset detected from the file (unless it names ``preset=``); None detects the
    preset from the first record's keys (Parquet: the schema's column names).
    """
    if isinstance(field_map, FieldMap):
        fm = field_map
    elif isinstance(field_map, str) and field_map.strip() in PRESETS:
        fm = PRESETS[field_map.strip()]
    else:
        keys = record_keys(path)
        detected = detect_preset(keys) if keys is not None else None
        if field_map is None:
            if detected is None:
                shown = ", ".join(sorted(keys)[:30]) if keys else "no readable record"
                raise ValueError(
                    f"cannot tell the record schema of {path} (keys: {shown}); "
                    f"give --field-map with a preset ({', '.join(PRESETS)}) or target=source entries"
                )
            fm = PRESETS[detected]
        else:
            fm = parse_field_map(field_map, base=detected)
    if not fm.image:
        raise ValueError(f"field map names no image field: {fm.describe() or '(empty)'}")
    return fm


# --------------------------------------------------------------------------- files and units


class RecordUnit(NamedTuple):
    """Rows ``[start, stop)`` of one record file; ``offset`` is the byte offset of row ``start``
    in a plain ``.jsonl`` file (None otherwise) and only speeds reading up."""

    path: str
    start: int
    stop: int
    offset: int | None = None


def _kind(path: str | os.PathLike[str]) -> str:
    name = os.fspath(path).lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"unsupported record file (want .jsonl, .jsonl.gz or .parquet): {path}")


def is_record_file(path: str | os.PathLike[str]) -> bool:
    try:
        _kind(path)
    except ValueError:
        return False
    return True


def _stem(path: str | os.PathLike[str]) -> str:
    name = os.path.basename(os.fspath(path))
    for suffix in (".jsonl.gz", ".jsonl", ".parquet"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _open_binary(path: str | os.PathLike[str]):
    return gzip.open(path, "rb") if _kind(path) == "jsonl.gz" else open(path, "rb")


def _scan_jsonl(path: str | os.PathLike[str], every: int) -> tuple[int, list[int] | None]:
    """Count the rows (non-blank lines); for plain JSONL also the byte offset of every
    ``every``-th row."""
    seekable = _kind(path) == "jsonl"
    offsets: list[int] | None = [] if seekable else None
    rows = pos = 0
    with _open_binary(path) as f:
        for line in f:
            if line.strip():
                if offsets is not None and rows % every == 0:
                    offsets.append(pos)
                rows += 1
            pos += len(line)
    return rows, offsets


_INDEX: OrderedDict[tuple[str, int, int], tuple[int, list[int] | None]] = OrderedDict()
_INDEX_MAX = 64


def _index(path: str | os.PathLike[str]) -> tuple[int, list[int] | None]:
    """Row count and checkpoint offsets of a JSONL file, cached per process by (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    hit = _INDEX.get(key)
    if hit is None:
        hit = _scan_jsonl(path, _CHECKPOINT_EVERY)
        _INDEX[key] = hit
        while len(_INDEX) > _INDEX_MAX:
            _INDEX.popitem(last=False)
    else:
        _INDEX.move_to_end(key)
    return hit


def count_rows(path: str | os.PathLike[str]) -> int:
    """Number of rows: non-blank lines of a JSONL file (one streaming pass), or the Parquet
    footer's row count (no data read)."""
    if _kind(path) == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return _index(path)[0]


def iter_record_units(path: str | os.PathLike[str], rows_per_unit: int = DEFAULT_ROWS_PER_UNIT) -> Iterator[RecordUnit]:
    """Cut a record file into consecutive row ranges of at most ``rows_per_unit`` rows."""
    if rows_per_unit < 1:
        raise ValueError(f"rows_per_unit must be >= 1, got {rows_per_unit}")
    p = os.fspath(path)
    kind = _kind(p)
    if kind == "parquet":
        n, offsets = count_rows(p), None
    else:
        n, offsets = _scan_jsonl(p, rows_per_unit)
    for i, start in enumerate(range(0, n, rows_per_unit)):
        yield RecordUnit(p, start, min(start + rows_per_unit, n), offsets[i] if offsets is not None else None)


def iter_rows(
    path: str | os.PathLike[str],
    start: int = 0,
    stop: int | None = None,
    columns: list[str] | None = None,
    offset: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(row_index, row)`` for rows ``[start, stop)``. A JSONL row is the decoded JSON value,
    or a :class:`_BadLine` when the line is not valid UTF-8 JSON; a Parquet row is a dict
    (restricted to ``columns`` that exist, when given)."""
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"bad row range [{start}, {stop})")
    if stop == start:
        return
    if _kind(path) == "parquet":
        yield from _iter_parquet(path, start, stop, columns)
    else:
        yield from _iter_jsonl(path, start, stop, offset)


class _BadLine(NamedTuple):
    error: str


def _iter_jsonl(path, start: int, stop: int | None, offset: int | None) -> Iterator[tuple[int, Any]]:
    row = 0
    seek = 0
    if start > 0:
        if offset is not None and _kind(path) == "jsonl":
            row, seek = start, offset
        elif _kind(path) == "jsonl":
            _, checkpoints = _index(path)
            k = min(start // _CHECKPOINT_EVERY, len(checkpoints or []) - 1)
            if checkpoints and k >= 0:
                row, seek = k * _CHECKPOINT_EVERY, checkpoints[k]
    with _open_binary(path) as f:
        if seek:
            f.seek(seek)
        for line in f:
            if not line.strip():
                continue
            if stop is not None and row >= stop:
                break
            if row >= start:
                yield row, _decode(line, first=(row == 0))
            row += 1


def _decode(line: bytes, first: bool) -> Any:
    try:
        text = line.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        return _BadLine(f"not UTF-8 ({e.reason} at byte {e.start})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return _BadLine(f"invalid JSON ({e.msg} at column {e.colno})")
    except RecursionError:
        return _BadLine("invalid JSON (nested too deeply)")


def _iter_parquet(path, start: int, stop: int | None, columns: list[str] | None) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    md = pf.metadata
    stop = md.num_rows if stop is None else min(stop, md.num_rows)
    groups: list[int] = []
    first_row = None
    at = 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if at < stop and at + n > start:
            groups.append(g)
            if first_row is None:
                first_row = at
        at += n
    if not groups:
        return
    if columns is not None:
        present = set(pf.schema_arrow.names)
        columns = [c for c in dict.fromkeys(columns) if c in present] or None
    row = first_row or 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, row_groups=groups, columns=columns, use_threads=False):
        n = batch.num_rows
        lo, hi = max(start - row, 0), min(stop - row, n)
        if lo < hi:
            for i, rec in enumerate(batch.slice(lo, hi - lo).to_pylist()):
                yield row + lo + i, rec
        row += n
        if row >= stop:
            break


def record_keys(path: str | os.PathLike[str], max_lines: int = 1000) -> list[str] | None:
    """Keys of the first record: the Parquet schema's column names, or the keys of the first JSONL
    line that is a JSON object (within ``max_lines`` rows); None when there is none."""
    if _kind(path) == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    for _, rec in _iter_jsonl(path, 0, max_lines, None):
        if isinstance(rec, dict):
            return list(rec)
    return None


# --------------------------------------------------------------------------- rows to panels


class _RowError(Exception):
    pass


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _first(row: dict, names: list[str]) -> tuple[str | None, Any]:
    for name in names:
        value = row.get(name)
        if _present(value):
            return name, value
    return None, None


def _text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    raise _RowError(f"{name}: expected a string, got {type(value).__name__}")


def _ident(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _RowError(f"{name}: expected a string or integer, got {type(value).__name__}")
    return str(value).strip()


_PMCID = re.compile(r"^(?:PMC)?\s*(\d+)$", re.I)
_DOI_PREFIX = re.compile(r"^(?:https?://(?:dx\.)?doi\.org/|doi:\s*)", re.I)
_YEAR = re.compile(r"^\s*(\d{4})(?!\d)")
_PANEL = re.compile(r"^\(?([A-Za-z]{1,2})\)?$")


def _pmcid(name: str, value: Any) -> str:
    m = _PMCID.match(_ident(name, value))
    if not m:
        raise _RowError(f"{name}: not a PMC id: {str(value)[:40]!r}")
    return f"PMC{m.group(1)}"


def _doi(name: str, value: Any) -> str:
    doi = _DOI_PREFIX.sub("", _text(name, value)).strip()
    if not doi:
        raise _RowError(f"{name}: empty DOI")
    return doi


def _year(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _RowError(f"{name}: expected a year, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _YEAR.match(value)
        if m:
            return int(m.group(1))
    raise _RowError(f"{name}: not a year: {str(value)[:40]!r}")


def _panel_letter(name: str, value: Any) -> str:
    s = _ident(name, value)
    m = _PANEL.match(s)
    return m.group(1).upper() if m else s


def _paragraph_texts(name: str, value: Any, figure_id: str | None) -> list[str]:
    """Paragraph texts of one context value: str, list of str, or {figure_id: str | [str]}."""
    if isinstance(value, str):
        s = value.strip()
        if s[:1] in "{[":
            try:
                decoded = json.loads(s)
            except (json.JSONDecodeError, RecursionError):
                decoded = None
            if isinstance(decoded, dict) or (
                isinstance(decoded, list) and all(isinstance(x, str) for x in decoded)
            ):
                return _paragraph_texts(name, decoded, figure_id)
        return [s] if s else []
    if isinstance(value, list) and value and all(isinstance(x, tuple) and len(x) == 2 for x in value):
        value = dict(value)  # an Arrow map column comes back as a list of (key, value) tuples
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if item is None:
                continue
            if not isinstance(item, str):
                raise _RowError(f"{name}[{i}]: expected a string paragraph, got {type(item).__name__}")
            if item.strip():
                out.append(item.strip())
        return out
    if isinstance(value, dict):
        if figure_id is None:
            chosen = list(value.items())
        elif figure_id in value:
            chosen = [(figure_id, value[figure_id])]
        else:
            norm = "".join(figure_id.split()).casefold()
            chosen = [(k, v) for k, v in value.items() if "".join(str(k).split()).casefold() == norm]
        out = []
        for key, paras in chosen:
            if paras is None:
                continue  # a Parquet struct column holds every key, null where a row lacks it
            if isinstance(paras, str):
                paras = [paras]
            if not isinstance(paras, list):
                raise _RowError(f"{name}[{key!r}]: expected a list of paragraphs, got {type(paras).__name__}")
            out.extend(_paragraph_texts(f"{name}[{key!r}]", paras, None))
        return out
    raise _RowError(f"{name}: expected a string, list or {{figure_id: [paragraphs]}}, got {type(value).__name__}")


def _resolve_image(name: str, value: Any, folder: str) -> str:
    raw = _text(name, value)
    if os.path.isabs(raw):
        return os.path.normpath(raw)
    candidate = os.path.normpath(os.path.join(folder, raw))
    if os.path.commonpath([folder, candidate]) != folder:
        raise _RowError(f"{name}: relative image path leaves the record file's folder: {raw!r}")
    return candidate


def _row_to_panel(row: Any, index: int, fm: FieldMap, source: str, folder: str, stem: str) -> Panel | Rejected:
    where = f"row {index}"
    if isinstance(row, _BadLine):
        return _rejected(RECORD_INVALID, f"{where}: {row.error}", source, stem, index, {})
    if not isinstance(row, dict):
        return _rejected(RECORD_INVALID, f"{where}: expected a JSON object, got {type(row).__name__}", source, stem, index, {})

    errors: list[str] = []
    got: dict[str, Any] = {}

    def read(target: str, conv) -> None:
        name, value = _first(row, getattr(fm, target))
        if name is None:
            return
        try:
            got[target] = conv(name, value)
        except _RowError as e:
            errors.append(str(e))

    read("id", _ident)
    read("pmcid", _pmcid)
    read("doi", _doi)
    read("title", _text)
    read("journal", _text)
    read("year", _year)
    read("figure_id", _ident)
    read("panel", _panel_letter)
    read("caption", _text)
    read("sub_caption", _text)
    read("license", _text)

    paragraphs: list[str] = []
    for name in fm.context:
        value = row.get(name)
        if not _present(value):
            continue
        try:
            paragraphs.extend(_paragraph_texts(name, value, got.get("figure_id") or None))
        except _RowError as e:
            errors.append(str(e))

    raw_image = None
    name, value = _first(row, fm.image)
    if name is None:
        errors.append(f"no image: none of the mapped image fields ({', '.join(fm.image)}) has a value")
    else:
        raw_image = value if isinstance(value, str) else None
        try:
            got["image_path"] = _resolve_image(name, value, folder)
        except _RowError as e:
            errors.append(str(e))
    name, value = _first(row, fm.full_image)
    if name is not None:
        try:
            got["full_image_path"] = _resolve_image(name, value, folder)
        except _RowError as e:
            errors.append(str(e))

    license_text = got.pop("license", None) or None
    fields: dict[str, Any] = {
        "pmcid": got.get("pmcid"),
        "doi": got.get("doi"),
        "title": got.get("title") or None,
        "journal": got.get("journal") or None,
        "year": got.get("year"),
        "figure_id": got.get("figure_id") or None,
        "panel": got.get("panel") or None,
        "caption": got.get("caption", ""),
        "sub_caption": got.get("sub_caption") or None,
        "license": normalize_license(
            license_text if license_text and license_text.lower().startswith("http") else None, license_text, None
        ),
        "license_url": license_text if license_text and license_text.lower().startswith("http") else None,
        "license_text": license_text,
        "graphic_href": raw_image.strip() if raw_image else None,
        "citing_paragraphs": [CitingParagraph(text=t, mention="") for t in paragraphs],
        "image_path": got.get("image_path"),
        "full_image_path": got.get("full_image_path") or got.get("image_path"),
    }
    if errors:
        return _rejected(RECORD_INVALID, f"{where}: " + "; ".join(errors), source, stem, index, fields, got.get("id"))
    panel = _make_panel(source, stem, index, fields, got.get("id"))
    for label, p in (("image", panel.image_path), ("full figure image", panel.full_image_path)):
        if p is not None and not os.path.isfile(p):
            return Rejected(panel, IMAGE_MISSING, detail=f"{where}: {label} not found: {p}")
    return panel


def _make_panel(source: str, stem: str, index: int, fields: dict[str, Any], row_id: str | None) -> Panel:
    if fields.get("pmcid"):
        article_id = key = fields["pmcid"]
    elif fields.get("doi"):
        article_id = key = f"doi:{fields['doi']}"
    else:
        key = f"file:{stem}"
        # no article key: the figure (its full image) stands for the article, so that the split
        # keeps a figure's panels together without tying every unrelated row of the file into one group
        figure = fields.get("full_image_path") or fields.get("image_path")
        article_id = f"{key}:{Path(figure).name}" if figure else key
    last = fields.get("panel") or row_id or f"{stem}:{index}"
    pid = f"{key}|{fields.get('figure_id') or '-'}|{last}"
    return Panel(id=pid, source=source, source_kind=SOURCE_KIND, article_id=article_id, **fields)


def _rejected(code: str, detail: str, source: str, stem: str, index: int, fields: dict[str, Any], row_id: str | None = None) -> Rejected:
    return Rejected(_make_panel(source, stem, index, fields, row_id), code, detail=detail)


# --------------------------------------------------------------------------- entry points


def iter_records(
    path: str | os.PathLike[str],
    field_map: FieldMap | str | None = None,
    start: int = 0,
    stop: int | None = None,
    offset: int | None = None,
) -> Iterator[Panel | Rejected]:
    """Stream one Panel or Rejected per row of ``[start, stop)`` (``stop=None``: to the end)."""
    fm = resolve_field_map(path, field_map)
    source = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(source)
    stem = _stem(source)
    for index, row in iter_rows(source, start, stop, columns=fm.input_fields(), offset=offset):
        yield _row_to_panel(row, index, fm, source, folder, stem)


def ingest_records(
    path: str | os.PathLike[str],
    field_map: FieldMap | str | None = None,
    start: int = 0,
    stop: int | None = None,
    offset: int | None = None,
) -> list[Panel | Rejected]:
    """Read rows ``[start, stop)`` of a JSONL / JSONL.gz / Parquet record file into Panels.

    ``field_map``: a FieldMap, a preset name, a ``--field-map`` spec extending the detected
    preset, or None to detect. ``offset``: byte offset of row ``start`` in a plain JSONL file
    (from :class:`RecordUnit`), optional. ``Panel.source`` is the absolute path of the file.
    """
    return list(iter_records(path, field_map, start, stop, offset))
