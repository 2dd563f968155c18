"""Load evaluation items from our dataset, the released OpenMedReason parquet and the standard
medical VQA benchmarks, all as :class:`~openmedreason.bench.items.BenchItem`.

Supported layouts (``benchmark`` name → what ``path`` may be):

``omr-bench``      our dataset folder (``DIR/data/{split}-*.parquet``), one of its parquet files,
                   or parquet files of the released ``neginb/OpenMedReason`` (a folder of them or
                   one file); the stem and options are parsed back from ``question`` when the
                   ``stem``/``options`` columns are absent
``slake``          SLAKE folder with ``{split}.json`` and ``imgs/`` (or the json file itself)
``vqa-rad``        the public ``VQA_RAD Dataset Public.json`` (+ ``VQA_RAD Image Folder/``), or the
                   Hugging Face parquet layout (``data/{split}-*.parquet``: image, question, answer)
``pathvqa``        the Hugging Face parquet layout (image, question, answer); the original
                   ``*.pkl`` files are refused (unpickling runs code from the file)
``pmc-vqa``        ``{split}_clean.csv`` or ``{split}.csv`` with ``images/`` (or ``figures/``)
``medxpertqa-mm``  ``MM/{split}.jsonl`` with ``images/`` (or the jsonl file itself)

Closed questions answered yes/no become ``kind="mcq"`` with options ``["Yes", "No"]``; every
other free-text answer is ``kind="open"``.

Bad input is an error, never a silent skip: a malformed row, a missing image file or an
unreadable file raises :class:`BenchFormatError` naming the file and the row, so the denominator
of a benchmark never shrinks unnoticed. (Rows filtered on purpose — another split, another
language — are not errors.)
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openmedreason.bench.items import AXES, BenchItem, RubricUnit

__all__ = [
    "BENCHMARKS",
    "BenchFormatError",
    "detect_benchmark",
    "iter_items",
    "load_items",
    "parse_question_text",
]

BENCHMARKS = ("omr-bench", "slake", "vqa-rad", "pathvqa", "pmc-vqa", "medxpertqa-mm")
_ALIASES = {
    "omr": "omr-bench",
    "openmedreason": "omr-bench",
    "vqarad": "vqa-rad",
    "vqa_rad": "vqa-rad",
    "path-vqa": "pathvqa",
    "path_vqa": "pathvqa",
    "pmcvqa": "pmc-vqa",
    "pmc_vqa": "pmc-vqa",
    "medxpertqa": "medxpertqa-mm",
    "medxpertqa_mm": "medxpertqa-mm",
}
_BATCH = 64


class BenchFormatError(ValueError):
    """A benchmark file that cannot be read as its layout says, with the file and row named."""

    def __init__(self, path: Path | str, message: str, row: int | str | None = None) -> None:
        where = f"{path}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.row = row


# --------------------------------------------------------------------------------------------
# public API


def load_items(path: str | Path, *, benchmark: str | None = None, split: str = "test", limit: int | None = None) -> list[BenchItem]:
    """Every item of ``split`` in ``path`` (see the module docstring for layouts).

    ``benchmark`` forces the layout (a name of :data:`BENCHMARKS`); otherwise it is detected with
    :func:`detect_benchmark`. ``limit`` keeps the first ``limit`` items."""
    return list(iter_items(path, benchmark=benchmark, split=split, limit=limit))


def iter_items(path: str | Path, *, benchmark: str | None = None, split: str = "test", limit: int | None = None) -> Iterator[BenchItem]:
    """Streaming :func:`load_items`: parquet files are read in record batches."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark path not found: {path}")
    name = _canonical(benchmark) if benchmark else detect_benchmark(path)
    reader = {
        "omr-bench": _iter_omr,
        "slake": _iter_slake,
        "vqa-rad": _iter_vqa_rad,
        "pathvqa": _iter_pathvqa,
        "pmc-vqa": _iter_pmc_vqa,
        "medxpertqa-mm": _iter_medxpertqa,
    }[name]
    if limit is not None and limit <= 0:
        return
    n = 0
    for item in reader(path, split):
        yield item
        n += 1
        if limit is not None and n >= limit:
            return


def detect_benchmark(path: str | Path) -> str:
    """Name the benchmark layout of ``path`` (one of :data:`BENCHMARKS`) from its files.

    Parquet files whose columns are only image/question/answer are the Hugging Face layouts of
    VQA-RAD and PathVQA, told apart by the path's name; pass ``benchmark=`` when it has neither."""
    path = Path(path)
    if path.suffix == ".pkl" or (path.is_dir() and _has_pickles(path) and not _parquets(path, None)):
        raise BenchFormatError(path, _PICKLE_REFUSAL)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return _detect_parquet(path, [path])
        if suffix == ".jsonl":
            return "medxpertqa-mm"
        if suffix == ".csv":
            return "pmc-vqa"
        if suffix == ".json":
            return _detect_json(path)
        raise BenchFormatError(path, "unknown benchmark file type (expected .parquet, .json, .jsonl or .csv)")
    if not path.is_dir():
        raise FileNotFoundError(path)
    files = _parquets(path, None)
    if files:
        return _detect_parquet(path, files)
    if (path / "MM").is_dir() or any(path.glob("*.jsonl")):
        return "medxpertqa-mm"
    if (path / "imgs").is_dir() and any(path.glob("*.json")):
        return "slake"
    if any(path.glob("*.csv")):
        return "pmc-vqa"
    for j in sorted(path.glob("*.json")):
        return _detect_json(j)
    raise BenchFormatError(path, "no benchmark files found (parquet, SLAKE json + imgs/, VQA-RAD json, PMC-VQA csv, MedXpertQA MM/*.jsonl)")


def parse_question_text(text: str) -> tuple[str, list[str]]:
    """Split the released ``question`` column (stem, then one ``X. option`` line per option,
    starting at ``A``) into ``(stem, options)``. Text without such lines is all stem."""
    lines = text.rstrip().split("\n")
    options: list[str] = []
    # walk back over the option lines: the last must be the n-th letter, down to "A."
    i = len(lines)
    while i > 0 and re.match(r"^[A-J]\.\s", lines[i - 1].strip()):
        i -= 1
    block = [l.strip() for l in lines[i:]]
    letters = [l[0] for l in block]
    if block and letters == list("ABCDEFGHIJ"[: len(block)]):
        options = [l[2:].strip() for l in block]
        return "\n".join(lines[:i]).strip(), options
    return text.strip(), []


# --------------------------------------------------------------------------------------------
# helpers

_PICKLE_REFUSAL = (
    "refusing to read a pickle file: unpickling executes code stored in the file, so a "
    "benchmark download must never be unpickled. Use the Hugging Face parquet layout instead "
    "(e.g. flaviagiammarino/path-vqa: data/test-*.parquet with image, question, answer)"
)
_YES = {"yes"}
_NO = {"no"}


def _has_pickles(path: Path) -> bool:
    """Pickle files where the original PathVQA release keeps them (``qas/<split>/*.pkl``); a
    bounded glob, never a walk of an image folder."""
    return any(next(path.glob(p), None) for p in ("*.pkl", "*/*.pkl", "qas/*/*.pkl", "*/qas/*/*.pkl"))


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return key


def _parquets(path: Path, split: str | None) -> list[Path]:
    """Parquet files of ``split`` under ``path`` (``data/{split}-*.parquet`` first, then loose
    files named after the split, then — with ``split=None`` — any parquet file)."""
    if path.is_file():
        return [path]
    for d in (path / "data", path):
        if not d.is_dir():
            continue
        files = sorted(p for p in d.glob("*.parquet") if p.name != "rejected.parquet")
        if split is not None:
            files = [p for p in files if re.match(rf"^{re.escape(split)}[-_.]", p.name)]
        if files:
            return files
    return []


def _detect_parquet(path: Path, files: list[Path]) -> str:
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(files[0]).names)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise BenchFormatError(files[0], f"not a readable parquet file ({exc})") from exc
    if "reasoning" in names or {"stem", "options"} <= names:
        return "omr-bench"
    if {"image", "question", "answer"} <= names:
        hint = str(path.resolve()).lower()
        if re.search(r"path[-_]?vqa", hint):
            return "pathvqa"
        if re.search(r"vqa[-_]?rad", hint):
            return "vqa-rad"
        raise BenchFormatError(path, "image/question/answer parquet: cannot tell VQA-RAD from PathVQA by its name; pass benchmark=")
    raise BenchFormatError(files[0], f"unknown parquet columns {sorted(names)}")


def _detect_json(path: Path) -> str:
    rows = _read_json_list(path)
    keys = set(rows[0]) if rows else set()
    if "img_name" in keys or "q_lang" in keys:
        return "slake"
    if "image_name" in keys:
        return "vqa-rad"
    raise BenchFormatError(path, f"unknown json layout (keys {sorted(keys)})")


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchFormatError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise BenchFormatError(path, "expected a JSON list of question records")
    return data


def _need(row: dict[str, Any], key: str, path: Path, i: int | str) -> Any:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BenchFormatError(path, f"missing or empty field {key!r}", i)
    return value


def _image_file(root: Path, name: str, path: Path, i: int | str) -> str:
    """Absolute path of an image named by a row; a missing file is an error."""
    rel = Path(str(name))
    if rel.is_absolute() or ".." in rel.parts:
        raise BenchFormatError(path, f"image path {name!r} must be relative and stay inside the benchmark folder", i)
    p = root / rel
    if not p.is_file():
        raise BenchFormatError(path, f"image file not found: {p}", i)
    return str(p.resolve())


def _closed_or_open(question: str, answer: Any, closed: bool | None) -> tuple[str, list[str], str]:
    """Yes/no answers of closed (or untyped) questions become a Yes/No MCQ; others stay open."""
    text = str(answer).strip()
    low = text.lower().rstrip(".")
    if closed is not False and low in _YES | _NO:
        return "mcq", ["Yes", "No"], "A" if low in _YES else "B"
    return "open", [], text


def _image_struct(value: Any, path: Path, i: int | str) -> tuple[bytes | None, str | None]:
    """``(bytes, name)`` of an HF ``Image`` struct cell ({bytes, path})."""
    if value is None:
        return None, None
    if isinstance(value, dict):
        data = value.get("bytes")
        name = value.get("path")
        if data is None and name:
            raise BenchFormatError(path, f"image {name!r} has no embedded bytes", i)
        return (bytes(data) if data is not None else None), name
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    raise BenchFormatError(path, f"unexpected image cell of type {type(value).__name__}", i)


def _iter_parquet_rows(files: list[Path], columns: list[str] | None = None) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:  # noqa: BLE001
            raise BenchFormatError(f, f"not a readable parquet file ({exc})") from exc
        cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        i = 0
        for batch in pf.iter_batches(batch_size=_BATCH, columns=cols):
            for row in batch.to_pylist():
                yield f, i, row
                i += 1


# --------------------------------------------------------------------------------------------
# our dataset and the released OpenMedReason parquet


def _units(value: Any, axis: str, path: Path, i: int) -> list[RubricUnit]:
    if value is None:
        return []
    if isinstance(value, str):  # a JSON-encoded list (some re-uploads store the units as text)
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BenchFormatError(path, f"{axis}: not a list of units ({exc})", i) from exc
    if not isinstance(value, list):
        raise BenchFormatError(path, f"{axis}: expected a list of units", i)
    out = []
    for k, u in enumerate(value):
        if not isinstance(u, dict):
            raise BenchFormatError(path, f"{axis}[{k}]: expected an object", i)
        u = {key: v for key, v in u.items() if v is not None}
        u.setdefault("unit_id", f"{axis[0].upper()}{k + 1}")
        try:
            out.append(RubricUnit(**u))
        except Exception as exc:  # pydantic ValidationError
            raise BenchFormatError(path, f"{axis}[{k}]: invalid rubric unit ({exc})", i) from exc
    return out


def _iter_omr(path: Path, split: str) -> Iterator[BenchItem]:
    files = _parquets(path, split) if path.is_dir() else [path]
    if not files:
        raise BenchFormatError(path, f"no parquet files for split {split!r} (expected data/{split}-*.parquet)")
    for f, i, row in _iter_parquet_rows(files):
        question = row.get("question") or ""
        stem, options = row.get("stem"), row.get("options")
        if not stem or not options:
            stem, options = parse_question_text(question)
        if not stem:
            raise BenchFormatError(f, "empty question", i)
        if not options:
            raise BenchFormatError(f, "no 'A. …' option lines in the question", i)
        answer = str(_need(row, "answer", f, i)).strip().upper()
        letters = "ABCDEFGHIJ"[: len(options)]
        if len(answer) != 1 or answer not in letters:
            raise BenchFormatError(f, f"answer {answer!r} is not one of the option letters {letters}", i)
        image, image_name = _image_struct(row.get("image"), f, i)
        if image is None:
            raise BenchFormatError(f, "row has no image bytes", i)
        released = "id" not in row
        item_id = row.get("id") or f"omr:{f.stem}:{i}"
        cluster = row.get("article_id") or row.get("pmcid") or ("img:" + hashlib.sha1(image).hexdigest()[:16])
        meta = {k: row.get(k) for k in ("pmcid", "doi", "license", "figure_id", "panel", "style", "image_scope",
                                         "answer_format", "engine", "modality_group", "title", "image_phash") if row.get(k)}
        meta.update(source_format="omr-release" if released else "omr-dataset", file=f.name, row=i)
        if image_name:
            meta["image_name"] = image_name
        yield BenchItem(
            id=str(item_id),
            benchmark="omr-bench",
            split=split,
            kind="mcq",
            question=stem,
            options=list(options),
            answer=answer,
            image=image,
            cluster=str(cluster),
            category=row.get("category"),
            family=row.get("family"),
            modality=row.get("modality"),
            reference_reasoning=row.get("reasoning"),
            meta=meta,
            **{axis: _units(row.get(axis), axis, f, i) for axis in AXES},
        )


# --------------------------------------------------------------------------------------------
# SLAKE


def _iter_slake(path: Path, split: str, language: str = "en") -> Iterator[BenchItem]:
    jf = path if path.is_file() else path / f"{split}.json"
    if not jf.is_file():
        raise BenchFormatError(path, f"SLAKE: {split}.json not found")
    root = jf.parent / "imgs"
    for i, row in enumerate(_read_json_list(jf)):
        if not isinstance(row, dict):
            raise BenchFormatError(jf, "expected an object", i)
        if language and row.get("q_lang", "en") != language:
            continue
        q = str(_need(row, "question", jf, i)).strip()
        answer = _need(row, "answer", jf, i)
        img = _image_file(root, _need(row, "img_name", jf, i), jf, i)
        atype = str(row.get("answer_type", "")).strip().upper()
        kind, options, gold = _closed_or_open(q, answer, True if atype == "CLOSED" else (False if atype == "OPEN" else None))
        qid = row.get("qid", i)
        yield BenchItem(
            id=f"slake:{qid}", benchmark="slake", split=split, kind=kind, question=q, options=options, answer=gold,
            image_path=img, cluster=f"slake-img:{row.get('img_id', row['img_name'])}", modality=row.get("modality"),
            meta={"answer_type": atype or None, "content_type": row.get("content_type"), "location": row.get("location"),
                  "answer_text": str(answer).strip(), "img_name": row["img_name"], "q_lang": row.get("q_lang")},
        )


# --------------------------------------------------------------------------------------------
# VQA-RAD


def _vqa_rad_json(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir():
        named = sorted(path.glob("VQA_RAD*Public*.json"))
        if named:
            return named[0]
        if _parquets(path, None):  # the HF layout (its folder may hold other json files)
            return None
        others = sorted(path.glob("*.json"))
        return others[0] if others else None
    return None


def _iter_vqa_rad(path: Path, split: str) -> Iterator[BenchItem]:
    jf = _vqa_rad_json(path)
    if jf is None:
        yield from _iter_hf_vqa(path, split, "vqa-rad")
        return
    folder = next((d for d in (jf.parent / "VQA_RAD Image Folder", jf.parent / "images") if d.is_dir()), jf.parent)
    for i, row in enumerate(_read_json_list(jf)):
        if not isinstance(row, dict):
            raise BenchFormatError(jf, "expected an object", i)
        # the public json marks its test questions with phrase_type test_freeform / test_para
        phrase = str(row.get("phrase_type", "")).strip().lower()
        is_test = phrase.startswith("test")
        if (split == "test") != is_test:
            continue
        q = str(_need(row, "question", jf, i)).strip()
        answer = _need(row, "answer", jf, i)
        img = _image_file(folder, _need(row, "image_name", jf, i), jf, i)
        atype = str(row.get("answer_type", "")).strip().upper()
        kind, options, gold = _closed_or_open(q, answer, True if atype == "CLOSED" else (False if atype == "OPEN" else None))
        yield BenchItem(
            id=f"vqa-rad:{row.get('qid', i)}", benchmark="vqa-rad", split=split, kind=kind, question=q, options=options,
            answer=gold, image_path=img, cluster=f"vqa-rad-img:{row['image_name']}", modality=row.get("image_organ"),
            meta={"answer_type": atype or None, "question_type": row.get("question_type"), "phrase_type": phrase or None,
                  "answer_text": str(answer).strip(), "image_name": row["image_name"]},
        )


# --------------------------------------------------------------------------------------------
# Hugging Face image/question/answer parquet (VQA-RAD, PathVQA)


def _iter_hf_vqa(path: Path, split: str, name: str) -> Iterator[BenchItem]:
    files = _parquets(path, split)
    if not files:
        raise BenchFormatError(path, f"no parquet files for split {split!r} (expected data/{split}-*.parquet)")
    for f, i, row in _iter_parquet_rows(files, ["image", "question", "answer"]):
        q = str(_need(row, "question", f, i)).strip()
        answer = _need(row, "answer", f, i)
        image, image_name = _image_struct(row.get("image"), f, i)
        if image is None:
            raise BenchFormatError(f, "row has no image bytes", i)
        kind, options, gold = _closed_or_open(q, answer, None)
        digest = hashlib.sha1(image).hexdigest()[:16]
        yield BenchItem(
            id=f"{name}:{f.stem}:{i}", benchmark=name, split=split, kind=kind, question=q, options=options, answer=gold,
            image=image, cluster=f"img:{digest}",
            meta={"answer_text": str(answer).strip(), "file": f.name, "row": i, **({"image_name": image_name} if image_name else {})},
        )


def _iter_pathvqa(path: Path, split: str) -> Iterator[BenchItem]:
    if path.suffix == ".pkl" or (path.is_dir() and not _parquets(path, split) and _has_pickles(path)):
        raise BenchFormatError(path, _PICKLE_REFUSAL)
    yield from _iter_hf_vqa(path, split, "pathvqa")


# --------------------------------------------------------------------------------------------
# PMC-VQA

_CHOICE_PREFIX = re.compile(r"^\s*\(?([A-D])\s*[:.)]\s*")


def _iter_pmc_vqa(path: Path, split: str) -> Iterator[BenchItem]:
    if path.is_file():
        cf = path
    else:
        cands = [path / f"{split}_clean.csv", path / f"{split}.csv", path / f"{split}_2.csv"]
        cf = next((c for c in cands if c.is_file()), None)
        if cf is None:
            raise BenchFormatError(path, f"PMC-VQA: none of {', '.join(c.name for c in cands)} found")
    folder = next((d for d in (cf.parent / "images", cf.parent / "figures", cf.parent / "images_2") if d.is_dir()), cf.parent)
    try:
        handle = cf.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise BenchFormatError(cf, str(exc)) from exc
    with handle:
        reader = csv.DictReader(handle)
        need = {"Figure_path", "Question", "Choice A", "Choice B"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise BenchFormatError(cf, f"missing columns {sorted(missing)}")
        for i, row in enumerate(reader):
            q = str(_need(row, "Question", cf, i)).strip()
            options, letters = [], []
            for L in "ABCD":
                raw = (row.get(f"Choice {L}") or "").strip()
                if not raw:
                    continue
                m = _CHOICE_PREFIX.match(raw)
                if m and m.group(1) != L:
                    raise BenchFormatError(cf, f"'Choice {L}' is labelled {m.group(1)}", i)
                options.append(raw[m.end():].strip() if m else raw)
                letters.append(L)
            if letters != list("ABCD"[: len(letters)]) or len(options) < 2:
                raise BenchFormatError(cf, "choices must be A, B[, C, D] without gaps", i)
            gold = _pmc_gold(row, options)
            if gold is None:
                raise BenchFormatError(cf, f"cannot read the gold answer (Answer_label={row.get('Answer_label')!r}, Answer={row.get('Answer')!r})", i)
            fig = _need(row, "Figure_path", cf, i)
            img = _image_file(folder, fig, cf, i)
            m = re.match(r"^(PMC\d+)_", Path(fig).name)
            cluster = m.group(1) if m else Path(fig).stem.rsplit("_", 1)[0]
            yield BenchItem(
                id=f"pmc-vqa:{row.get('index') or f'{cf.stem}:{i}'}", benchmark="pmc-vqa", split=split, kind="mcq",
                question=q, options=options, answer=gold, image_path=img, cluster=cluster,
                meta={"figure_path": fig, "file": cf.name, "row": i},
            )


def _pmc_gold(row: dict[str, str], options: list[str]) -> str | None:
    letters = "ABCD"[: len(options)]
    label = (row.get("Answer_label") or "").strip().upper()
    if label in letters and len(label) == 1:
        return label
    answer = (row.get("Answer") or "").strip()
    m = _CHOICE_PREFIX.match(answer)
    if answer.upper() in letters and len(answer) == 1:
        return answer.upper()
    if m and m.group(1) in letters:
        return m.group(1)
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    hits = [letters[k] for k, o in enumerate(options) if norm(o) == norm(answer)]
    return hits[0] if len(hits) == 1 else None


# --------------------------------------------------------------------------------------------
# MedXpertQA MM

# the question text repeats the options after "Answer Choices:"; the stem is what comes before
_ANSWER_CHOICES = re.compile(r"\n*\s*Answer Choices:\s*\(A\).*\Z", re.S)


def _iter_medxpertqa(path: Path, split: str) -> Iterator[BenchItem]:
    if path.is_file():
        jf = path
    else:
        jf = next((c for c in (path / "MM" / f"{split}.jsonl", path / f"{split}.jsonl") if c.is_file()), None)
        if jf is None:
            raise BenchFormatError(path, f"MedXpertQA: MM/{split}.jsonl not found")
    folder = next((d for d in (jf.parent / "images", jf.parent.parent / "images") if d.is_dir()), jf.parent)
    with jf.open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchFormatError(jf, f"not valid JSON ({exc})", i + 1) from exc
            if not isinstance(row, dict):
                raise BenchFormatError(jf, "expected an object", i + 1)
            opts = _need(row, "options", jf, i + 1)
            if not isinstance(opts, dict) or not opts:
                raise BenchFormatError(jf, "'options' must be an object {A: …}", i + 1)
            keys = sorted(opts)
            if keys != list("ABCDEFGHIJ"[: len(keys)]):
                raise BenchFormatError(jf, f"option keys {keys} are not A, B, …", i + 1)
            label = str(_need(row, "label", jf, i + 1)).strip().upper()
            if label not in keys:
                raise BenchFormatError(jf, f"label {label!r} is not an option key", i + 1)
            images = row.get("images") or []
            if not isinstance(images, list) or not images:
                raise BenchFormatError(jf, "'images' must be a non-empty list of file names", i + 1)
            paths = [_image_file(folder, name, jf, i + 1) for name in images]
            stem = _ANSWER_CHOICES.sub("", str(_need(row, "question", jf, i + 1))).strip()
            yield BenchItem(
                id=str(row.get("id") or f"medxpertqa-mm:{i}"), benchmark="medxpertqa-mm", split=split, kind="mcq",
                question=stem, options=[str(opts[k]).strip() for k in keys], answer=label, image_path=paths[0],
                meta={"image_paths": paths, "medical_task": row.get("medical_task"), "body_system": row.get("body_system"),
                      "question_type": row.get("question_type")},
            )
