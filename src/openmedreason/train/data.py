"""Training data: read sources, mix them by weight, and build TRL-ready datasets.

Sources (``[[data]]`` entries of a recipe, :class:`~openmedreason.train.config.DataSource`):

- **our dataset folder** (contract D: ``DATASET/data/{split}-*.parquet`` with ``image``,
  ``question``, ``reasoning``, ``answer``, ``options``) and the released ``neginb/OpenMedReason``
  parquet files (same columns without ``options``: they are parsed back from ``question``);
- **prompt-completion** rows (TRL's conversational prompt/completion layout, e.g. a TRL export);
- **messages** rows (``messages`` + ``images``, LLaVA/LLaMA-Factory style after conversion);
- **grpo** rows (``prompt`` + ``answer`` [+ ``options``]);
- any of these as ``.parquet``/``.jsonl`` files, folders of them, or ``hf:owner/name``.

Rows become TRL conversational rows whose message content is plain text (TRL inserts one image
placeholder per image before the first user turn):

- SFT: ``prompt`` (system? + user), ``completion`` (assistant trace), ``images``;
- GRPO: ``prompt``, ``images``, ``answer`` (gold letter), ``options``, ``letters`` — the extra
  columns reach the reward functions as keyword arguments.

Rows are dropped, never repaired or truncated, with a reason code each (counted in the train
manifest, listed in ``OUTPUT/dropped.jsonl``). Nothing here imports torch at module level.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from openmedreason.bench.answers import extract_answer, format_ok
from openmedreason.bench.protocol import strip_instruction
from openmedreason.reasons import reason
from openmedreason.train.config import DataSource, Recipe

BAD_ROW = reason("train.bad_row", "training row lacks what its layout needs (question and answer, prompt and completion, or messages)")
BAD_IMAGE = reason("train.bad_image", "training row's image is missing or cannot be decoded")
BAD_TRACE = reason(
    "train.bad_trace",
    "SFT row of our dataset whose trace is not <think>…</think> then one <answer>X</answer> with a valid "
    "letter, or whose answer is not the gold letter",
)
NO_GOLD = reason(
    "train.no_gold",
    "training row without a gold letter among its options (GRPO rewards and the SFT trace check need one)",
)
OVER_LENGTH = reason(
    "train.over_length",
    "training row longer than the recipe's max_length / max_prompt_length in tokens, image tokens counted "
    "(dropped, never truncated)",
)

Kind = Literal["sft", "grpo"]
#: data files a folder source may hold (.json = one JSON list of rows, LLaVA style)
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
LETTERS = "ABCDEFGHIJ"

#: an option line at the end of a question: "A. text" / "A) text"
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.)]\s+(.+?)\s*$")


def parse_options(question: str) -> tuple[str, list[str]]:
    """Split a released-style question (stem, then one ``X. option`` line per option) into the stem
    and the option texts. The option lines must be the last lines, lettered A, B, C… in order;
    otherwise the whole text is the stem and there are no options."""
    lines = question.rstrip().splitlines()
    opts: list[tuple[str, str]] = []
    i = len(lines) - 1
    while i >= 0:
        m = _OPTION_LINE.match(lines[i])
        if not m:
            break
        opts.append((m.group(1), m.group(2)))
        i -= 1
    opts.reverse()
    if not opts or "".join(l for l, _ in opts) != LETTERS[: len(opts)] or len(opts) < 2:
        return question.strip(), []
    return "\n".join(lines[: i + 1]).strip(), [t for _, t in opts]


# --------------------------------------------------------------------------------------------
# reading sources


def _split_files(root: Path, split: str) -> list[Path]:
    """The data files of ``split`` under a folder, in the layouts we know; else every data file."""
    candidates = [
        sorted((root / "data").glob(f"{split}-*.parquet")),
        sorted(root.glob(f"{split}-*.parquet")),
        sorted((root / split).glob("*.parquet")) if (root / split).is_dir() else [],
        [p for p in (root / f"{split}.parquet", root / f"{split}.jsonl", root / f"{split}.json") if p.exists()],
        sorted((root / "data").glob(f"{split}*.jsonl")) + sorted(root.glob(f"{split}*.jsonl")),
    ]
    for files in candidates:
        if files:
            return files
    rest = sorted(p for p in root.iterdir() if p.suffix in DATA_SUFFIXES and p.name != "rejected.parquet")
    return rest


def source_files(src: DataSource) -> list[Path]:
    """The files a local source reads (empty for ``hf:`` sources)."""
    if src.path.startswith("hf:"):
        return []
    p = Path(src.path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"data source not found: {src.path}")
    files = _split_files(p, src.split)
    if not files:
        raise FileNotFoundError(f"no .parquet, .jsonl or .json files for split {src.split!r} in {src.path}")
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_source(src: DataSource) -> dict[str, Any]:
    """Content hashes of a source's files (sha256 each, and one over all) for the manifest."""
    if src.path.startswith("hf:"):
        return {"hub": src.path[3:], "split": src.split, "files": [], "sha256": None}
    files = [{"name": str(f), "bytes": f.stat().st_size, "sha256": _sha256(f)} for f in source_files(src)]
    combined = hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest()
    return {"files": files, "sha256": combined}


def _count_rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    n = 0
    for f in files:
        if f.suffix == ".parquet":
            n += pq.ParquetFile(f).metadata.num_rows
        elif f.suffix == ".json":
            n += len(_json_list(f))
        else:
            with open(f, encoding="utf-8") as fh:
                n += sum(1 for line in fh if line.strip())
    return n


def _json_list(f: Path) -> list[dict[str, Any]]:
    rows = json.loads(f.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise ValueError(f"{f}: a .json data file must hold a list of rows")
    return rows


def _iter_file_rows(f: Path) -> Iterator[dict[str, Any]]:
    if f.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(f).iter_batches(batch_size=64):
            yield from batch.to_pylist()
    elif f.suffix == ".json":
        yield from _json_list(f)
    else:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


class _Source:
    """A source opened for reading: row count, columns, and a row iterator with each row's base folder."""

    def __init__(self, src: DataSource):
        self.src = src
        self.hf = None
        if src.path.startswith("hf:"):
            import datasets

            self.hf = datasets.load_dataset(src.path[3:], split=src.split)
            self.files: list[Path] = []
            self.n_rows = len(self.hf)
            self.columns = list(self.hf.column_names)
        else:
            self.files = source_files(src)
            self.n_rows = _count_rows(self.files)
            first = next(self._rows(), None)
            self.columns = list(first[0].keys()) if first else []
        if src.max_rows is not None:
            self.n_rows = min(self.n_rows, src.max_rows)
        self.format = src.format if src.format != "auto" else detect_format(self.columns, src.label)

    def _rows(self) -> Iterator[tuple[dict[str, Any], Path | None]]:
        if self.hf is not None:
            for row in self.hf:
                yield row, None
            return
        for f in self.files:
            for row in _iter_file_rows(f):
                yield row, f.parent

    def rows(self) -> Iterator[tuple[dict[str, Any], Path | None]]:
        for i, item in enumerate(self._rows()):
            if i >= self.n_rows:
                return
            yield item


def detect_format(columns: list[str], label: str = "") -> str:
    """Row layout from the column names (see :class:`~openmedreason.train.config.DataSource`)."""
    cols = set(columns)
    if {"prompt", "completion"} <= cols:
        return "prompt-completion"
    if "messages" in cols or "conversations" in cols:  # conversations: LLaVA's from/value turns
        return "messages"
    if "prompt" in cols:
        return "grpo"
    if {"question", "answer"} <= cols:
        return "omr"
    raise ValueError(f"data source {label!r}: cannot tell its layout from the columns {sorted(cols)}")


# --------------------------------------------------------------------------------------------
# rows → examples


@dataclass
class Example:
    """One training example before it becomes a TRL row (content as plain text)."""

    id: str
    images: list[dict[str, Any]]
    prompt: list[dict[str, str]]
    completion: str | None
    answer: str | None
    options: list[str]
    #: the images as decoded while checking them (PIL, same order): the length guard reuses them
    decoded: list[Any] = field(default_factory=list, repr=False, compare=False)


class Drop(Exception):
    """A row that cannot be used; ``code`` is a registered reason."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _image_value(value: Any, base: Path | None) -> tuple[dict[str, Any], Any]:
    """Normalise an image cell (``{bytes, path}``, a path, bytes or a PIL image) to RGB-safe
    ``{"bytes", "path"}``, returned with the decoded PIL image; raise :class:`Drop` when it cannot
    be read or decoded."""
    from PIL import Image

    data: bytes | None = None
    name: str | None = None
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if data is None and name:
            value = name
    if isinstance(value, str):
        p = Path(value).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        if not p.is_file():
            raise Drop(BAD_IMAGE, f"image file not found: {value}")
        data, name = p.read_bytes(), p.name
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
    if not data:
        raise Drop(BAD_IMAGE, "no image bytes")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        if im.mode not in ("RGB", "L"):  # 16-bit, CMYK, palette, alpha: one plain RGB form for every processor
            # the project's one conversion (as the exports): 16-bit stretched to 8 bits (a plain
            # convert clips a 12-bit scan to white), alpha composited on white
            from openmedreason.quality.pixels import to_mode

            im = to_mode(im, "RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            data = buf.getvalue()
    except Exception as exc:  # any decoder failure is a bad image
        raise Drop(BAD_IMAGE, f"cannot decode image: {exc}") from None
    return {"bytes": data, "path": name}, im


def _images_of(row: dict[str, Any], base: Path | None) -> tuple[list[dict[str, Any]], list[Any]]:
    """The row's images as ``({"bytes", "path"}`` cells, decoded PIL images``)``."""
    if row.get("images") is not None:
        values = list(row["images"])
    elif row.get("image") is not None:
        values = [row["image"]]
    else:
        return [], []
    pairs = [_image_value(v, base) for v in values]
    return [c for c, _ in pairs], [im for _, im in pairs]


def _text_of(content: Any) -> tuple[str, int]:
    """Plain text of a message content (string or blocks) and its number of image blocks."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content.replace("<image>", "").strip(), content.count("<image>")
    texts, n_img = [], 0
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "image":
            n_img += 1
        elif block.get("type") == "text" and block.get("text"):
            texts.append(block["text"])
    return "\n".join(texts).strip(), n_img


def _messages(raw: Any) -> list[dict[str, str]]:
    if isinstance(raw, str):
        raw = json.loads(raw)
    out = []
    for m in raw or []:
        role = m.get("role") or {"human": "user", "gpt": "assistant"}.get(m.get("from", ""), m.get("from"))
        text, _ = _text_of(m.get("content", m.get("value")))
        out.append({"role": role, "content": text})
    return out


def _user_text(prompt: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in prompt if m["role"] == "user")


def _gold(row: dict[str, Any], completion: str | None, letters: str, options: list[str]) -> str | None:
    """The gold letter: an ``answer``/``answer_letter``/``solution`` column holding a letter, an
    ``<answer>`` tag, one option's text, or EasyR1's packed JSON; else the completion's
    ``<answer>`` tag. None when nothing names one valid letter."""
    from openmedreason.train.rewards import parse_ground_truth

    for key in ("answer", "answer_letter", "solution"):
        v = row.get(key)
        if not (isinstance(v, str) and v.strip()):
            continue
        v = v.strip()
        if v.startswith("{"):
            letter = parse_ground_truth(v)[0]
            return letter if letter and letter in letters else None
        got = extract_answer(v, letters, options or None)
        return got.letter if got.method in ("answer_tag", "regex:whole", "option_text") else None
    if completion:
        got = extract_answer(completion, letters, options or None)
        return got.letter if got.method == "answer_tag" else None
    return None


def _options_of(row: dict[str, Any], text: str) -> list[str]:
    opts = row.get("options")
    if isinstance(opts, str):
        try:
            opts = json.loads(opts)
        except ValueError:
            opts = None
    if isinstance(opts, dict):
        opts = [opts[k] for k in sorted(opts)]
    if opts:
        return [str(o) for o in opts]
    return parse_options(text)[1]


def to_example(row: dict[str, Any], base: Path | None, fmt: str, kind: Kind, recipe: Recipe, index: int) -> Example:
    """Convert one source row to an :class:`Example`; raise :class:`Drop` with a reason code."""
    rid = str(row.get("id") or f"row{index}")
    if fmt == "omr":
        question = row.get("question")
        if not question and row.get("stem") and row.get("options"):
            letters = LETTERS[: len(row["options"])]
            question = row["stem"] + "\n" + "\n".join(f"{l}. {o}" for l, o in zip(letters, row["options"]))
        if not question or not row.get("answer"):
            raise Drop(BAD_ROW, "omr row needs question and answer")
        options = _options_of(row, question)
        letters = LETTERS[: len(options)] if options else "ABCDE"
        answer = str(row["answer"]).strip().upper()
        if answer not in letters:
            raise Drop(NO_GOLD, f"answer {answer!r} not among {letters}")
        trace = row.get("reasoning")
        if kind == "sft" and not format_ok(trace, letters):
            raise Drop(BAD_TRACE, (trace or "")[-80:])
        if kind == "sft" and extract_answer(trace, letters, options).letter != answer:
            raise Drop(BAD_TRACE, f"trace answers something other than the gold {answer}")
        prompt = ([{"role": "system", "content": recipe.system_prompt}] if recipe.system_prompt else []) + [
            {"role": "user", "content": question.strip() + (f"\n\n{recipe.instruction}" if recipe.instruction else "")}
        ]
        images, decoded = _images_of(row, base)
        if not images:
            raise Drop(BAD_IMAGE, "row has no image")
        return Example(rid, images, prompt, trace, answer, options, decoded)

    if fmt == "prompt-completion":
        prompt = _messages(row.get("prompt"))
        completion_msgs = _messages(row.get("completion"))
        completion = completion_msgs[-1]["content"] if completion_msgs else None
    elif fmt == "messages":
        msgs = _messages(row.get("messages") if row.get("messages") is not None else row.get("conversations"))
        if not msgs:
            raise Drop(BAD_ROW, "empty messages")
        if msgs[-1]["role"] == "assistant":
            prompt, completion = msgs[:-1], msgs[-1]["content"]
        else:
            prompt, completion = msgs, None
    elif fmt == "grpo":
        prompt = _messages(row.get("prompt")) if not isinstance(row.get("prompt"), str) else [
            {"role": "user", "content": row["prompt"].replace("<image>", "").strip()}
        ]
        completion = None
    else:
        raise ValueError(f"unknown data format {fmt!r}")
    if not prompt or not any(m["role"] == "user" for m in prompt):
        raise Drop(BAD_ROW, "no user turn in the prompt")
    if kind == "sft" and not completion:
        raise Drop(BAD_ROW, "no assistant completion")
    # a user turn made by the protocol (our exports) ends with the instruction, after the option lines
    options = _options_of(row, strip_instruction(_user_text(prompt)))
    letters = LETTERS[: len(options)] if options else "ABCDE"
    answer = _gold(row, completion, letters, options)
    if kind == "grpo" and answer is None:
        raise Drop(NO_GOLD, "no gold letter in answer/solution or the completion's <answer> tag")
    images, decoded = _images_of(row, base)
    return Example(rid, images, prompt, completion, answer, options, decoded)


# --------------------------------------------------------------------------------------------
# mixing and the TRL dataset


def multiplicities(n_rows: int, weight: float, rng: random.Random) -> list[int]:
    """How many times each of ``n_rows`` rows is used for a size multiplier ``weight``:
    ``floor(weight)`` each, plus one more for a seeded random ``frac(weight)`` share of the rows."""
    whole = math.floor(weight)
    extra = round((weight - whole) * n_rows)
    counts = [whole] * n_rows
    for i in rng.sample(range(n_rows), extra):
        counts[i] += 1
    return counts


@dataclass
class SourceReport:
    """What one source contributed (for the manifest)."""

    label: str
    path: str
    split: str
    format: str
    weight: float
    rows_read: int = 0
    rows_used: int = 0
    dropped: Counter = field(default_factory=Counter)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": self.path,
            "split": self.split,
            "format": self.format,
            "weight": self.weight,
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "dropped": dict(self.dropped),
            **self.fingerprint,
        }


@dataclass
class DataReport:
    """Per-source counts, drops and hashes of a built training set."""

    kind: str
    sources: list[SourceReport] = field(default_factory=list)
    drops: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(s.rows_used for s in self.sources)

    def as_dict(self) -> dict[str, Any]:
        dropped: Counter = Counter()
        for s in self.sources:
            dropped.update(s.dropped)
        return {"kind": self.kind, "rows": self.rows, "dropped": dict(dropped), "sources": [s.as_dict() for s in self.sources]}


def _trl_features(kind: Kind):
    import datasets

    msg = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    feats: dict[str, Any] = {"id": datasets.Value("string"), "prompt": msg, "images": datasets.List(datasets.Image())}
    if kind == "sft":
        feats["completion"] = msg
    else:
        feats["answer"] = datasets.Value("string")
        feats["options"] = datasets.List(datasets.Value("string"))
        feats["letters"] = datasets.Value("string")
    return datasets.Features(feats)


def _trl_row(ex: Example, kind: Kind) -> dict[str, Any]:
    row: dict[str, Any] = {"id": ex.id, "prompt": ex.prompt, "images": ex.images}
    if kind == "sft":
        row["completion"] = [{"role": "assistant", "content": ex.completion}]
    else:
        row["answer"] = ex.answer
        row["options"] = ex.options
        row["letters"] = LETTERS[: len(ex.options)] if ex.options else "ABCDE"
    return row


def length_counter(processor: Any, kind: Kind) -> Callable[[Example], int]:
    """A function giving a row's token count as the TRL collator will see it, image tokens
    included: prompt + completion for SFT, the prompt alone for GRPO."""
    from PIL import Image
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    tokenizer = getattr(processor, "tokenizer", processor)

    def count(ex: Example) -> int:
        # the images decoded when the row was checked; decode the bytes only for an Example built elsewhere
        images = ex.decoded or [Image.open(io.BytesIO(im["bytes"])) for im in ex.images]
        prompt = prepare_multimodal_messages(ex.prompt, images=images)
        if kind == "sft":
            completion = prepare_multimodal_messages([{"role": "assistant", "content": ex.completion}])
            texts = apply_chat_template({"prompt": prompt, "completion": completion}, processor)
            completion_len = len(tokenizer(texts["completion"], add_special_tokens=False)["input_ids"])
        else:
            texts = apply_chat_template({"prompt": prompt}, processor)
            completion_len = 0
        enc = processor(text=[texts["prompt"]], images=images or None, add_special_tokens=False)
        return len(enc["input_ids"][0]) + completion_len

    return count


def build_dataset(
    recipe: Recipe,
    kind: Kind,
    processor: Any = None,
    *,
    max_tokens: int | None = None,
    cache_dir: str | Path | None = None,
):
    """Read and mix ``recipe.data`` into a ``datasets.Dataset`` of TRL rows for ``kind``.

    With ``processor`` and ``max_tokens`` (and ``recipe.length_guard`` not ``off``) rows longer
    than ``max_tokens`` are dropped (``drop``) or stop the build (``error``). Returns
    ``(dataset, DataReport)``."""
    import datasets

    report = DataReport(kind)
    rng = random.Random(recipe.seed)
    count = length_counter(processor, kind) if (processor is not None and max_tokens and recipe.length_guard != "off") else None
    opened = []
    for src in recipe.data:
        s = _Source(src)
        if kind == "sft" and s.format == "grpo":
            raise ValueError(f"data source {src.label!r} has no completions (layout 'grpo'): it cannot train SFT")
        rep = SourceReport(src.label, src.path, src.split, s.format, src.weight, fingerprint=fingerprint_source(src))
        report.sources.append(rep)
        opened.append((s, rep, multiplicities(s.n_rows, src.weight, rng)))

    def gen():
        for s, rep, mult in opened:
            for i, (row, base) in enumerate(s.rows()):
                rep.rows_read += 1
                if mult[i] == 0:
                    continue
                try:
                    ex = to_example(row, base, s.format, kind, recipe, i)
                    if count is not None:
                        n = count(ex)
                        if n > max_tokens:
                            if recipe.length_guard == "error":
                                raise ValueError(
                                    f"row {ex.id} of {rep.label} has {n} tokens > {max_tokens} (length_guard = 'error')"
                                )
                            raise Drop(OVER_LENGTH, f"{n} tokens > {max_tokens}")
                except Drop as d:
                    rep.dropped[d.code] += 1
                    report.drops.append({"source": rep.label, "id": str(row.get("id") or f"row{i}"), "reason": d.code, "detail": d.detail})
                    continue
                for _ in range(mult[i]):
                    rep.rows_used += 1
                    yield _trl_row(ex, kind)

    cache = Path(cache_dir) if cache_dir else Path(recipe.output_dir) / ".data_cache"
    shutil.rmtree(cache, ignore_errors=True)
    # a fresh fingerprint: the build always reruns, so the report always describes this run's data
    fatal: list[BaseException] = []

    def guarded():
        try:
            yield from gen()
        except Exception as exc:  # `datasets` wraps generator errors; keep ours to re-raise as is
            fatal.append(exc)
            raise

    try:
        ds = datasets.Dataset.from_generator(
            guarded, features=_trl_features(kind), cache_dir=str(cache), fingerprint=uuid.uuid4().hex
        )
    except Exception as exc:
        if fatal:
            raise fatal[0] from None
        if report.rows == 0:  # `datasets` refuses an empty split
            raise ValueError(f"no usable training rows (dropped: {json.dumps(report.as_dict()['dropped'])})") from exc
        raise
    if len(ds) == 0:
        raise ValueError(f"no usable training rows (dropped: {json.dumps(report.as_dict()['dropped'])})")
    return ds, report
