"""The one validator every export goes through, and the reject-reason codes of ``omr export``.

Two stages, both shared by all formats:

* :func:`normalize_row` turns a dataset row (contract D) into an :class:`ExportItem`: every required
  field present and typed, 2–5 options, the gold letter among the item's letters, the split known,
  the image decoded and converted to RGB (CMYK, alpha, palette, grey and 16-bit images are converted,
  never a crash; undecodable bytes are rejected with the reason recorded).
* :func:`check_record` checks the record a format built from the item against that format's
  :class:`RecordSpec`: required fields present and typed, placeholder count (``<image>`` tokens or
  ``{"type": "image"}`` blocks) equal to the image count, the gold letter within the letters *as the
  target encodes them* (so an encoding bug cannot slip through), and the split recorded.

A failure raises :class:`Reject`; the caller writes the row to ``<format>/rejected.jsonl``.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from openmedreason.bench.loaders import parse_question_text
from openmedreason.build.hf import META_STRINGS
from openmedreason.reasons import reason

BAD_IMAGE = reason("export.bad_image", "image bytes missing or not decodable (the decoder's error is recorded)")
IMAGE_TOO_SMALL = reason("export.image_too_small", "image side below the export's minimum (28 px by default, Qwen-VL's patch)")
MISSING_FIELD = reason("export.missing_field", "a required field is missing, empty or of the wrong type (source row or exported record)")
BAD_OPTIONS = reason("export.bad_options", "fewer than 2 or more than 5 options, or an empty option")
BAD_ANSWER = reason("export.bad_answer", "gold letter not among the item's option letters (as the target encodes them)")
BAD_SPLIT = reason("export.bad_split", "split missing or not train/test, or not the split the row was read from")
PLACEHOLDER_MISMATCH = reason("export.placeholder_mismatch", "number of image placeholders differs from the number of images")
TRACE_ANSWER_MISMATCH = reason(
    "export.trace_answer_mismatch", "the letter in the reasoning trace's final answer tag differs from the gold letter (formats that train on the trace)"
)
DUPLICATE_ID = reason("export.duplicate_id", "an earlier row of the export has the same id")

SPLITS = ("train", "test")
LETTERS = "ABCDE"
MIN_IMAGE_SIDE = 28

#: string metadata columns of contract D carried into the exports that keep metadata
META_FIELDS = tuple(c for c in META_STRINGS if c != "id") + ("image_phash",)

_ANSWER_TAG = re.compile(r"<answer>\s*([^<]*?)\s*</answer>", re.S)


class Reject(Exception):
    """A row that cannot be exported: ``code`` is a registered reason, ``detail`` says why."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass
class ExportItem:
    """One dataset row, checked and normalised; every format builds its record from this."""

    id: str
    split: str
    index: int  # position of the row in its split of the source dataset
    stem: str
    options: list[str]
    answer: str  # gold letter
    reasoning: str  # may be empty; formats that train on it require it
    image: bytes  # RGB, JPEG or PNG
    image_ext: str  # "jpg" | "png"
    image_size: tuple[int, int]
    image_source_name: str | None = None
    image_converted: str | None = None  # e.g. "CMYK->RGB", None when the original bytes are kept
    meta: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    @property
    def answer_text(self) -> str:
        return self.options[self.letters.index(self.answer)]

    @property
    def question(self) -> str:
        """The released ``question`` text: the stem, then one ``X. option`` line per option."""
        return self.stem + "\n" + "\n".join(f"{l}. {o}" for l, o in zip(self.letters, self.options))

    @property
    def options_map(self) -> dict[str, str]:
        return dict(zip(self.letters, self.options))


# --------------------------------------------------------------------------------------------------
# images


@dataclass
class NormImage:
    data: bytes
    ext: str
    size: tuple[int, int]
    converted: str | None


def normalize_image(data: Any, *, min_side: int = MIN_IMAGE_SIDE) -> NormImage:
    """Decode ``data`` and return RGB JPEG/PNG bytes; raise :class:`Reject` when it cannot be used.

    RGB JPEG and PNG keep their original bytes (no generation loss). Anything else is converted:
    16-bit and float greyscale are min–max scaled to 8 bits (a plain ``convert`` would clip them to
    white), alpha is composited on white, CMYK / palette / grey go through ``convert("RGB")``; the
    result is re-encoded as JPEG (quality 95) when the source was a JPEG, else as PNG.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise Reject(BAD_IMAGE, "no image bytes")
    data = bytes(data)
    # rows of one panel share its image: decode and convert each distinct image once
    key = (hashlib.sha1(data).digest(), min_side)
    with _NORM_LOCK:
        hit = _NORM_MEMO.get(key)
        if hit is not None:
            _NORM_MEMO.move_to_end(key)
    if hit is None:
        try:
            hit = _normalize_image(data, min_side)
        except Reject as exc:
            hit = exc
        with _NORM_LOCK:
            _NORM_MEMO[key] = hit
            while len(_NORM_MEMO) > _NORM_MEMO_MAX:
                _NORM_MEMO.popitem(last=False)
    if isinstance(hit, Reject):
        raise Reject(hit.code, hit.detail)
    # a pass-through image is returned with the caller's bytes (the memo keeps metadata only)
    return NormImage(data, hit.ext, hit.size, None) if hit.converted is None else hit


_NORM_MEMO: OrderedDict[tuple[bytes, int], Any] = OrderedDict()
_NORM_MEMO_MAX = 256
_NORM_LOCK = threading.Lock()


def _normalize_image(data: bytes, min_side: int) -> NormImage:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "?"
            w, h = im.size
            keep = im.mode == "RGB" and fmt in ("JPEG", "PNG") and getattr(im, "n_frames", 1) == 1
            if keep and fmt == "JPEG":
                # the bytes are kept as they are, so the decode only proves they are sound: a
                # DCT-scaled decode (1/8) still reads every scan, and costs a fraction of a full one
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
            im.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, bomb errors)
        raise Reject(BAD_IMAGE, f"undecodable: {type(exc).__name__}: {exc}"[:300]) from None
    if min(w, h) < min_side:
        raise Reject(IMAGE_TOO_SMALL, f"{w}x{h} px < {min_side}")
    if keep:
        return NormImage(b"", "jpg" if fmt == "JPEG" else "png", (w, h), None)
    mode = im.mode
    try:
        rgb = _to_rgb(im)
        out = io.BytesIO()
        if fmt == "JPEG":
            rgb.save(out, format="JPEG", quality=95)
            ext = "jpg"
        else:
            rgb.save(out, format="PNG")
            ext = "png"
    except Exception as exc:
        raise Reject(BAD_IMAGE, f"cannot convert {fmt}/{mode} to RGB: {type(exc).__name__}: {exc}"[:300]) from None
    return NormImage(out.getvalue(), ext, (w, h), f"{fmt}/{mode}->RGB")


def _to_rgb(im: Any) -> Any:
    # the project's one conversion (A1 pixels): 16-bit/float stretched to 8 bits, alpha on white
    from openmedreason.quality.pixels import to_mode

    return to_mode(im, "RGB")


# --------------------------------------------------------------------------------------------------
# source rows


def _str(row: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Reject(MISSING_FIELD, f"{key} is missing or empty")
        return None
    if not isinstance(value, str):
        if required:
            raise Reject(MISSING_FIELD, f"{key} is {type(value).__name__}, not a string")
        return str(value)
    return value


def parse_question(question: str) -> tuple[str, list[str]]:
    """Split a released ``question`` (stem, then ``A. …`` lines) into stem and options.

    Only a trailing run of lines lettered A, B, C… in order counts as options; otherwise the whole
    text is the stem and the option list is empty (the row is then rejected as ``export.bad_options``).
    The one parser shared with the benchmark loader (:func:`openmedreason.bench.loaders.parse_question_text`).
    """
    return parse_question_text(question)


def normalize_row(row: dict[str, Any], split: str, index: int, *, min_image_side: int = MIN_IMAGE_SIDE) -> ExportItem:
    """Check one contract-D row and return the :class:`ExportItem` the formats build from."""
    if split not in SPLITS:
        raise Reject(BAD_SPLIT, f"split {split!r}")
    # the released neginb/OpenMedReason parquet has no id column: a positional id, stable for a
    # given dataset revision, stands in
    rid = _str(row, "id") if row.get("id") is not None else f"{split}-{index:06d}"
    assert rid is not None
    stem = row.get("stem")
    options = row.get("options")
    if not (isinstance(stem, str) and stem.strip()) or not options:
        question = _str(row, "question")
        assert question is not None
        parsed_stem, parsed_options = parse_question(question)
        stem = stem if isinstance(stem, str) and stem.strip() else parsed_stem
        options = options or parsed_options
    if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options):
        raise Reject(MISSING_FIELD, f"options is {type(options).__name__}, not a list of strings")
    options = [o.strip() for o in options]
    if not 2 <= len(options) <= len(LETTERS) or any(not o for o in options):
        raise Reject(BAD_OPTIONS, f"{len(options)} options" + (" (one empty)" if any(not o for o in options) else ""))
    answer = (_str(row, "answer") or "").strip().upper()
    letters = LETTERS[: len(options)]
    if len(answer) != 1 or answer not in letters:
        raise Reject(BAD_ANSWER, f"answer {answer!r} not in {letters}")
    reasoning = row.get("reasoning") or ""
    if not isinstance(reasoning, str):
        raise Reject(MISSING_FIELD, f"reasoning is {type(reasoning).__name__}, not a string")
    image = row.get("image")
    name = None
    if isinstance(image, dict):
        name = image.get("path")
        image = image.get("bytes")
    norm = normalize_image(image, min_side=min_image_side)
    meta = {k: (row.get(k) if isinstance(row.get(k), str) else (None if row.get(k) is None else str(row.get(k)))) for k in META_FIELDS}
    models = row.get("models") or []
    if not isinstance(models, (list, tuple)):
        models = [str(models)]
    return ExportItem(
        id=rid,
        split=split,
        index=index,
        stem=str(stem).strip(),
        options=list(options),
        answer=answer,
        reasoning=reasoning,
        image=norm.data,
        image_ext=norm.ext,
        image_size=norm.size,
        image_source_name=name if isinstance(name, str) else None,
        image_converted=norm.converted,
        meta=meta,
        models=[str(m) for m in models],
    )


def trace_letter(reasoning: str) -> str | None:
    """The letter inside the last ``<answer>…</answer>`` of a trace (None when absent)."""
    found = _ANSWER_TAG.findall(reasoning or "")
    if not found:
        return None
    value = found[-1].strip().rstrip(".").strip()
    return value.upper() if len(value) == 1 else value


def require_trace(item: ExportItem) -> str:
    """The item's trace, checked for formats that train on it (present, answers the gold letter)."""
    if not item.reasoning.strip():
        raise Reject(MISSING_FIELD, "reasoning is empty")
    letter = trace_letter(item.reasoning)
    if letter != item.answer:
        raise Reject(TRACE_ANSWER_MISMATCH, f"trace answers {letter!r}, gold is {item.answer!r}")
    return item.reasoning


# --------------------------------------------------------------------------------------------------
# exported records


@dataclass
class RecordSpec:
    """What the shared validator checks on one format's record.

    ``required`` maps dotted paths (``reward_model.ground_truth``) to the expected type(s); strings
    must be non-empty. ``placeholders`` returns the number of image placeholders in the record, or
    None for targets without placeholders in the text (the harness inserts the image itself).
    ``images`` returns the number of images the record carries; ``gold``/``letters`` read the gold
    letter and the option letters back *from the record*; ``split`` reads the recorded split.
    """

    required: dict[str, type | tuple[type, ...]]
    images: Callable[[dict[str, Any]], int]
    gold: Callable[[dict[str, Any]], str]
    letters: Callable[[dict[str, Any]], str]
    split: Callable[[dict[str, Any]], str]
    placeholders: Callable[[dict[str, Any]], int] | None = None


def _get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise Reject(MISSING_FIELD, f"record has no {path}")
        value = value[part]
    return value


def check_record(record: dict[str, Any], spec: RecordSpec, item: ExportItem, *, expected_images: int = 1) -> None:
    """Validate one exported record against ``spec``; raise :class:`Reject` on the first failure."""
    for path, typ in spec.required.items():
        value = _get(record, path)
        if isinstance(value, bool) and typ in (int, (int,)):
            raise Reject(MISSING_FIELD, f"{path} is bool, not int")
        if not isinstance(value, typ):
            raise Reject(MISSING_FIELD, f"{path} is {type(value).__name__}, expected {typ}")
        if isinstance(value, str) and not value.strip():
            raise Reject(MISSING_FIELD, f"{path} is empty")
    try:
        n_images = spec.images(record)
        n_place = spec.placeholders(record) if spec.placeholders is not None else None
        gold = spec.gold(record)
        letters = spec.letters(record)
        split = spec.split(record)
    except Reject:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Reject(MISSING_FIELD, f"cannot read the record back: {type(exc).__name__}: {exc}") from None
    if n_images != expected_images:
        raise Reject(PLACEHOLDER_MISMATCH, f"{n_images} images, expected {expected_images}")
    if n_place is not None and n_place != n_images:
        raise Reject(PLACEHOLDER_MISMATCH, f"{n_place} placeholders for {n_images} images")
    if not letters or gold not in letters or len(gold) != 1:
        raise Reject(BAD_ANSWER, f"gold {gold!r} not in letters {letters!r}")
    if gold != item.answer:
        raise Reject(BAD_ANSWER, f"record's gold {gold!r} differs from the dataset's {item.answer!r}")
    if split not in SPLITS or split != item.split:
        raise Reject(BAD_SPLIT, f"record split {split!r}, row read from {item.split!r}")


def count_image_blocks(messages: list[dict[str, Any]]) -> int:
    """Number of ``{"type": "image"}`` content blocks in conversational messages."""
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for block in content if isinstance(block, dict) and block.get("type") == "image")
        elif isinstance(content, str):
            n += content.count("<image>")
    return n


def count_image_tokens(messages: list[dict[str, Any]]) -> int:
    """Number of literal ``<image>`` tokens in messages with string content."""
    return sum(m["content"].count("<image>") for m in messages if isinstance(m.get("content"), str))
