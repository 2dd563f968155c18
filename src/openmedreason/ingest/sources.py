"""Expand the SOURCES given on the command line into ingest units, deterministically.

A unit is one JATS article file, one PMC OA package, or a bounded row range of a record file
(JSONL / Parquet), so that a record file of millions of rows is spread over many shards.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Literal

from lxml import etree
from pydantic import BaseModel, ConfigDict

JATS_SUFFIXES = (".nxml", ".xml")
PACKAGE_SUFFIXES = (".tar.gz", ".tgz")
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


class SourceUnit(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["jats", "oa_package", "records"]
    path: str
    start: int = 0
    stop: int | None = None
    size: int = 0

    def key(self) -> str:
        return f"{self.kind}:{self.path}:{self.start}:{self.stop}:{self.size}"


class SourceError(ValueError):
    """A SOURCES argument that cannot be used (missing path, unsupported file)."""


def _suffix_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(PACKAGE_SUFFIXES):
        return "oa_package"
    if name.endswith(RECORD_SUFFIXES):
        return "records"
    if name.endswith(JATS_SUFFIXES):
        return "jats"
    return None


def is_jats_article(path: Path) -> bool:
    """Cheap check of the root element (first start event only), so that MECA manifests and other
    XML files found in a folder are not taken for articles."""
    parser_kwargs = dict(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
    try:
        for _, elem in etree.iterparse(str(path), events=("start",), **parser_kwargs):
            return etree.QName(elem).localname == "article"
    except (etree.XMLSyntaxError, OSError):
        return True  # let the parser report the error as a reject reason instead of hiding the file
    return False


def plan_sources(sources: Iterable[str | os.PathLike[str]], rows_per_unit: int = 2000) -> list[SourceUnit]:
    """Resolve files and folders to a sorted, de-duplicated list of units."""
    from openmedreason.ingest.records_source import count_rows

    files: dict[Path, str] = {}
    for src in sources:
        p = Path(src).expanduser()
        if not p.exists():
            raise SourceError(f"source not found: {src}")
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.is_symlink():
                    kind = _suffix_kind(f)
                    if kind == "jats" and not is_jats_article(f):
                        continue
                    if kind:
                        files[f.resolve()] = kind
        else:
            kind = _suffix_kind(p)
            if kind is None:
                raise SourceError(f"unsupported source file (want .nxml/.xml/.tar.gz/.jsonl/.parquet): {src}")
            files[p.resolve()] = kind
    units: list[SourceUnit] = []
    for f in sorted(files):
        kind = files[f]
        size = f.stat().st_size
        if kind == "records":
            n = count_rows(f)
            for start in range(0, max(n, 1), rows_per_unit):
                units.append(SourceUnit(kind="records", path=str(f), start=start, stop=min(start + rows_per_unit, n), size=size))
        else:
            units.append(SourceUnit(kind=kind, path=str(f), size=size))
    return units


def units_fingerprint(units: Iterable[SourceUnit]) -> str:
    h = hashlib.sha256()
    for u in units:
        h.update(u.key().encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
