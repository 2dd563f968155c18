"""PKR rubric units: distilled from a reference trace (LLM) or cut from its sections (offline),
then validated deterministically (METHOD §7).

Two engines produce *candidate* units; one validator decides what is kept:

* **llm** (:func:`extract_many` with an engine): one structured call per trace (prompt
  ``prompts/rubric.md``) returns perception / knowledge / rationale units with a topic, a claim, a
  verbatim source quote, an importance and, optionally, the two judge questions.
* **offline** (``engine=None``): units are cut from the labelled sections of our traces:
  ``Perception:`` sentences → perception; ``Interpretation and medical knowledge:`` sentences →
  knowledge when they hold without the case (no case reference, no inferential cue), rationale when
  they link to this case; ``Answer justification:`` → rationale (the "therefore the answer is X"
  clause is cut: no option-letter framing). ``Clinical context:`` is skipped, because its
  sentences restate the stem, which the rubric rules exclude, and so are the offline engine's fixed
  connective sentences. The claim is the sentence itself (a long one cut at a clause boundary), the
  quote is the same span, the topic a noun phrase found by simple heuristics. A baseline for
  running the benchmark without a model, not a substitute for one.

:func:`validate_units` (both engines, deterministic): required fields and importance; word bounds
(topic 1–12, claim 8–25, quote 3–30); the quote must occur in the trace after normalising case,
whitespace, curly quotes and dashes; dedupe on (axis, normalised claim); per-axis and total caps
(core units before supporting ones, then trace order); missing or malformed judge questions are
synthesised from the topic / claim. Kept units are renumbered ``P1…``, ``K1…``, ``R1…`` in trace
order. Every dropped unit is returned with a reason code and a detail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from openmedreason.bench.items import AXES, AXIS_PREFIX, RubricUnit
from openmedreason.reasons import reason

MISSING_FIELD = reason("rubric.missing_field", "a rubric unit lacks a topic, claim or source quote")
BAD_IMPORTANCE = reason("rubric.bad_importance", "a rubric unit's importance is not core or supporting")
TOPIC_LENGTH = reason("rubric.topic_length", "a rubric unit's topic is outside 1–12 words")
CLAIM_LENGTH = reason("rubric.claim_length", "a rubric unit's claim is outside 8–25 words")
QUOTE_LENGTH = reason("rubric.quote_length", "a rubric unit's source quote is outside 3–30 words")
QUOTE_NOT_FOUND = reason(
    "rubric.quote_not_found",
    "a rubric unit's source quote does not occur in the trace (after normalising case, whitespace, quotes and dashes)",
)
DUPLICATE = reason("rubric.duplicate", "a rubric unit repeats the claim of an earlier unit of the same axis")
OVER_CAP = reason("rubric.over_cap", "a rubric unit beyond the per-axis or total cap (core units are kept first)")
NO_SECTIONS = reason(
    "rubric.no_sections", "offline rubric: the trace has none of the labelled Perception / Interpretation / Answer justification sections"
)

RUBRIC_REASONS = (MISSING_FIELD, BAD_IMPORTANCE, TOPIC_LENGTH, CLAIM_LENGTH, QUOTE_LENGTH, QUOTE_NOT_FOUND, DUPLICATE, OVER_CAP, NO_SECTIONS)

PROMPT = "rubric"
BOUNDS = {"topic": (1, 12), "claim": (8, 25), "quote": (3, 30)}
# a supplied judge question is used when it is a question of reasonable length, else synthesised
QUESTION_WORDS = (4, 45)


class RubricCaps(BaseModel):
    """Per-axis and total unit caps. The release's extractor used 4 / 3 / 3 and a total of 8, but
    released test items carry up to 10 units, so the default total is 10 (set 8 to match the code)."""

    model_config = ConfigDict(extra="forbid")
    perception: int = Field(default=4, ge=0, description="most perception units kept per item")
    knowledge: int = Field(default=3, ge=0, description="most knowledge units kept per item")
    rationale: int = Field(default=3, ge=0, description="most rationale units kept per item")
    total: int = Field(default=10, ge=0, description="most units kept per item over all axes")

    def of(self, axis: str) -> int:
        return int(getattr(self, axis))


@dataclass
class RubricResult:
    """Units kept per axis, every dropped candidate (``{"axis", "unit", "reason", "detail"}``) and
    where the units came from (``engine``, ``model``, ``template``, ``cache_key``…)."""

    units: dict[str, list[RubricUnit]] = field(default_factory=lambda: {a: [] for a in AXES})
    rejected: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    item_id: str | None = None

    @property
    def n_units(self) -> int:
        return sum(len(v) for v in self.units.values())

    def columns(self) -> dict[str, list[dict[str, str]]]:
        """The three dataset columns (lists of unit dicts, released field names)."""
        return {a: [u.model_dump() for u in self.units.get(a, [])] for a in AXES}


# --------------------------------------------------------------------------- normalisation
_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'", "“": '"', "”": '"', "„": '"', "‟": '"', "″": '"', "«": '"', "»": '"'})
_DASHES = re.compile(r"[\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d]")
_SPACE = re.compile(r"\s+")
_TAGS = re.compile(r"</?\s*(?:think|answer)\s*>", re.I)


def normalise(text: str | None) -> str:
    """Lower case, straight quotes, ASCII hyphens, single spaces: the form quotes are matched in."""
    t = (text or "").translate(_QUOTES)
    t = _DASHES.sub("-", t)
    return _SPACE.sub(" ", t).strip().lower()


def n_words(text: str | None) -> int:
    return len((text or "").split())


def quote_in_trace(quote: str, trace: str) -> bool:
    """True when ``quote`` occurs in ``trace`` after :func:`normalise` of both (tags ignored)."""
    q = normalise(quote)
    return bool(q) and q in normalise(_TAGS.sub(" ", trace or ""))


def _claim_key(claim: str) -> str:
    return re.sub(r"[^\w ]+", "", normalise(claim)).strip()


def presence_question(axis: str, topic: str) -> str:
    topic = topic.strip().rstrip(".?")
    if axis == "rationale":
        return f"Does the response make an inferential link about {topic}?"
    return f"Does the response discuss {topic}?"


def correctness_question(axis: str, claim: str) -> str:
    claim = claim.strip().rstrip(".")
    if claim and claim[0].isupper() and not claim[:2].isupper():  # keep acronyms (CT, MRI) as they are
        claim = claim[0].lower() + claim[1:]
    verb = "conclude" if axis == "rationale" else "state"
    return f"Does the response correctly {verb} that {claim}?"


def _usable_question(q: Any) -> bool:
    if not isinstance(q, str) or not q.strip().endswith("?"):
        return False
    lo, hi = QUESTION_WORDS
    return lo <= n_words(q) <= hi


# --------------------------------------------------------------------------- validation
def _field(unit: Any, name: str) -> Any:
    if isinstance(unit, Mapping):
        return unit.get(name)
    return getattr(unit, name, None)


def _as_dict(unit: Any) -> dict[str, Any]:
    if isinstance(unit, BaseModel):
        return unit.model_dump()
    return dict(unit) if isinstance(unit, Mapping) else {"value": repr(unit)}


def validate_units(
    trace: str, raw_units: Mapping[str, Sequence[Any]], caps: RubricCaps | None = None
) -> tuple[dict[str, list[RubricUnit]], list[dict[str, Any]]]:
    """Keep the candidate units that pass every deterministic check; return ``(kept, rejected)``.

    ``raw_units`` maps each axis to candidate units (dicts or objects with ``topic``, ``claim``,
    ``source_quote``, ``importance`` and optional ``presence_question`` / ``correctness_question``;
    any ``unit_id`` is replaced). ``kept`` maps every axis to its units, renumbered in trace order;
    ``rejected`` holds ``{"axis", "unit", "reason", "detail"}`` per dropped candidate.
    """
    caps = caps or RubricCaps()
    rejected: list[dict[str, Any]] = []
    passed: dict[str, list[tuple[int, dict[str, str]]]] = {a: [] for a in AXES}

    def drop(axis: str, unit: Any, code: str, detail: str) -> None:
        rejected.append({"axis": axis, "unit": _as_dict(unit), "reason": code, "detail": detail})

    for axis in list(raw_units):
        if axis not in AXES:
            for u in raw_units[axis]:
                drop(axis, u, MISSING_FIELD, f"unknown axis {axis!r}")
    for axis in AXES:
        seen: set[str] = set()
        for order, unit in enumerate(raw_units.get(axis) or ()):
            topic, claim, quote = (_field(unit, k) for k in ("topic", "claim", "source_quote"))
            missing = [k for k, v in (("topic", topic), ("claim", claim), ("source_quote", quote)) if not isinstance(v, str) or not v.strip()]
            if missing:
                drop(axis, unit, MISSING_FIELD, "missing " + ", ".join(missing))
                continue
            topic, claim, quote = topic.strip(), claim.strip(), quote.strip()
            importance = _field(unit, "importance")
            importance = importance.strip().lower() if isinstance(importance, str) else importance
            if importance in (None, ""):
                importance = "supporting"  # the rubric treats an unmarked unit as not needed to defend the answer
            if importance not in ("core", "supporting"):
                drop(axis, unit, BAD_IMPORTANCE, f"importance {importance!r}")
                continue
            bad = None
            for name, text, code in (("topic", topic, TOPIC_LENGTH), ("claim", claim, CLAIM_LENGTH), ("quote", quote, QUOTE_LENGTH)):
                lo, hi = BOUNDS[name]
                if not lo <= n_words(text) <= hi:
                    bad = (code, f"{name} has {n_words(text)} words (allowed {lo}–{hi})")
                    break
            if bad:
                drop(axis, unit, *bad)
                continue
            if not quote_in_trace(quote, trace):
                drop(axis, unit, QUOTE_NOT_FOUND, quote[:200])
                continue
            key = _claim_key(claim)
            if key in seen:
                drop(axis, unit, DUPLICATE, claim[:200])
                continue
            seen.add(key)
            pq, cq = _field(unit, "presence_question"), _field(unit, "correctness_question")
            passed[axis].append((order, {
                "topic": topic,
                "claim": claim,
                "presence_question": pq.strip() if _usable_question(pq) else presence_question(axis, topic),
                "correctness_question": cq.strip() if _usable_question(cq) else correctness_question(axis, claim),
                "source_quote": quote,
                "importance": importance,
            }))

    # caps: per axis (core first, then trace order), then the total across axes, interleaving the
    # axes by rank so that a tight total keeps each axis's best units rather than emptying one axis
    ranked: list[tuple[int, int, int, str, int, dict[str, str]]] = []
    for ai, axis in enumerate(AXES):
        order = sorted(passed[axis], key=lambda t: (t[1]["importance"] != "core", t[0]))
        for rank, (pos, u) in enumerate(order):
            if rank >= caps.of(axis):
                drop(axis, u, OVER_CAP, f"{axis} cap {caps.of(axis)}")
            else:
                ranked.append((u["importance"] != "core", rank, ai, axis, pos, u))
    ranked.sort(key=lambda t: t[:3])
    survivors = ranked[: caps.total]
    for *_, axis, _pos, u in ranked[caps.total :]:
        drop(axis, u, OVER_CAP, f"total cap {caps.total}")
    kept: dict[str, list[RubricUnit]] = {a: [] for a in AXES}
    for axis in AXES:
        mine = sorted((pos, u) for _i, _r, _a, ax, pos, u in survivors if ax == axis)
        kept[axis] = [RubricUnit(unit_id=f"{AXIS_PREFIX[axis]}{i}", **u) for i, (_pos, u) in enumerate(mine, 1)]
    return kept, rejected


# --------------------------------------------------------------------------- offline extraction
_SECTION = re.compile(
    r"^\s*(?:\*\*)?(Perception|Clinical context|Interpretation and medical knowledge|Answer justification)(?:\*\*)?\s*:\s*(?:\*\*)?",
    re.I | re.M,
)
_THINK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.S | re.I)
_BOILERPLATE = re.compile(
    r"^(?:these image findings are the features that point to\b|no clinical history is given\b)", re.I
)
_LETTER_TAIL = re.compile(r"\s*[;,]?\s*(?:and\s+)?(?:therefore|thus|so|hence)?,?\s*the (?:correct )?answer is\b.*$", re.I | re.S)
_CASE_LINK = re.compile(
    r"\b(?:this|these|the)\s+(?:patient|case|image|images|findings?|lesions?|appearance|panel|radiograph|scan|section|specimen|biopsy)\b|"
    r"\bhere\b|\bin this\b|\bshown\b|\bseen\b|\bconsistent\s+with|\bcompatible\s+with|\bin\s+keeping\s+with|\bsuggest\w*|"
    r"\bindicat\w*|\bpoints?\s+to|\bpointing\s+to|\bconfirm\w*|\btherefore\b|\bthus\b|\bhence\b|\bfavou?rs?\b|\bexplains?\b",
    re.I,
)
_CUE_AFTER = re.compile(
    r"\b(?:consistent with|compatible with|in keeping with|suggest(?:s|ing|ive of)?|indicat(?:es|ing|ive of)|points? to|"
    r"pointing to|diagnosis of|favou?rs?|confirms?)\s+(.+)$",
    re.I,
)
_VIEW_AFTER = re.compile(r"\b(?:shows?|showing|showed|demonstrates?|demonstrating|reveals?|revealing|depicts?|displays?|contains?|has|have)\s+(.+)$", re.I)
_VERB = re.compile(
    r"\b(?:is|are|was|were|has|have|had|can|may|might|will|causes?|results?|leads?|occurs?|presents?|involves?|affects?|"
    r"arises?|develops?|appears?|refers?|represents?|reflects?|shows?|tends?|requires?|argues?|supports?|excludes?|rules?|"
    r"makes?|explains?|favou?rs?|points?|suggests?|indicates?|confirms?|helps?|distinguish(?:es)?|differentiates?)\b",
    re.I,
)
_CLAUSE_END = re.compile(
    r"\s*(?:[,;:(]|\bconsistent with\b|\bcompatible with\b|\bsuggest\w*\b|\bindicat\w*\b|\bwhich\b|\bthat\b|\bwhere\b|"
    r"\bwhile\b|\bwhereas\b|\bbecause\b|\bdue to\b|\bpoint(?:s|ing)? to\b|\bas\b|\bwith\b|\brather than\b|"
    r"\bin (?:this|the) (?:patient|case|image|panel)\b)",
    re.I,
)
_DETERMINERS = {"the", "a", "an", "this", "these", "that", "those", "its", "their", "both", "some", "any", "there"}
_PRONOUNS = {"it", "they", "this", "these", "that", "those", "which", "he", "she", "findings", "image", "appearance"}
# words that carry polarity, value, direction or size: a topic must stay neutral
_LOADED = {
    "no", "not", "absent", "absence", "present", "presence", "without", "normal", "abnormal", "increased", "decreased",
    "enlarged", "reduced", "elevated", "larger", "smaller", "mild", "mildly", "moderate", "moderately",
    "severe", "severely", "marked", "markedly", "significant", "significantly", "slight", "slightly", "extensive",
    "massive", "tiny", "high", "low", "left", "right", "multiple", "single", "several", "many", "few",  # not small/large: "small cell", "large bowel"
}
_NUMBER = re.compile(r"^(?:[\d.,/%×x]+(?:mm|cm|ml|mg|%|x)?|mm|cm|ml|mg|kg|hu|µm|um|nm)$", re.I)


def _sections(trace: str) -> dict[str, str]:
    body = think_text(trace)
    found = list(_SECTION.finditer(body))
    out: dict[str, str] = {}
    for i, mm in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(body)
        out[mm.group(1).lower()] = out.get(mm.group(1).lower(), "") + " " + body[mm.end() : end].strip()
    return {k: v.strip() for k, v in out.items()}


def _clip_claim(sentence: str) -> str:
    """The sentence, or when it is over the claim bound, its longest leading clause that fits."""
    s = sentence.strip()
    lo, hi = BOUNDS["claim"]
    if n_words(s) <= hi:
        return s
    best = ""
    for m in re.finditer(r"[,;:]\s|\s(?:and|but|which|while|whereas)\s", s):
        head = s[: m.start()].strip()
        if lo <= n_words(head) <= hi:
            best = head
    return best or s  # nothing fits: the validator rejects it with rubric.claim_length


def topic_of(sentence: str, axis: str) -> str:
    """A short neutral noun phrase naming what ``sentence`` is about (heuristic, offline only)."""
    s = sentence.strip().rstrip(".!")
    phrase = None
    m = _CUE_AFTER.search(s) if axis == "rationale" else None
    if m:
        phrase = m.group(1)
    if phrase is None and axis == "perception":
        m = _VIEW_AFTER.search(s)
        phrase = m.group(1) if m else None
    if phrase is None:
        m = _VERB.search(s)
        head = s[: m.start()] if m else s
        head_words = [w for w in re.findall(r"[\w'-]+", head.lower()) if w not in _DETERMINERS]
        if head_words and not set(head_words) <= _PRONOUNS:
            phrase = head
        elif m:
            phrase = s[m.end() :]
        else:
            phrase = s
    phrase = _CLAUSE_END.split(phrase, maxsplit=1)[0]
    kept = [w for w in re.findall(r"[\w'-]+|[&/]", phrase) if w.lower() not in _LOADED and not _NUMBER.match(w)][:8]
    while kept and kept[0].lower() in _DETERMINERS | {"of", "in", "with", "and", "to", "on"}:
        kept.pop(0)
    while kept and kept[-1].lower() in _DETERMINERS | {"of", "in", "with", "and", "to", "on", "or", "for", "at", "by"}:
        kept.pop()
    if not kept:  # fall back to the sentence's first content words
        kept = [w for w in re.findall(r"[\w'-]+", s) if w.lower() not in _DETERMINERS | _LOADED][:6]
    return " ".join(kept)


def offline_candidates(trace: str) -> dict[str, list[dict[str, str]]]:
    """Candidate units cut from the labelled sections of ``trace`` (see the module docstring)."""
    from openmedreason.curate.trace_checks import sentences

    sec = _sections(trace)
    out: dict[str, list[dict[str, str]]] = {a: [] for a in AXES}

    def add(axis: str, sentence: str, importance: str) -> None:
        claim = _clip_claim(sentence)
        claim_text = claim if claim.endswith((".", "!", "?")) else claim + "."
        if axis == "perception" and n_words(claim_text) < BOUNDS["claim"][0]:
            # short finding sentences ("The CT shows a hepatic cyst.") are still findings: the claim
            # (unlike the quote) need not be verbatim, so anchor it to the case instead of losing it
            claim_text = "In this case, " + (claim_text[0].lower() + claim_text[1:] if not claim_text[:2].isupper() else claim_text)
        out[axis].append({
            "topic": topic_of(claim, axis),
            "claim": claim_text,
            "source_quote": claim,
            "importance": importance,
        })

    for i, s in enumerate(sentences(sec.get("perception", ""))):
        if not _BOILERPLATE.match(s):
            add("perception", s, "core" if i == 0 else "supporting")
    for s in sentences(sec.get("interpretation and medical knowledge", "")):
        if _BOILERPLATE.match(s):
            continue
        if _CASE_LINK.search(s):
            add("rationale", s, "core")
        else:
            add("knowledge", s, "supporting")
    # the answer clause ("therefore the answer is B. <option text>") and what follows it are letter
    # framing and option text, which the rubric rules exclude
    for s in sentences(_LETTER_TAIL.sub("", sec.get("answer justification", ""))):
        s2 = s.strip()
        if s2 and n_words(s2) >= 3 and not _BOILERPLATE.match(s2):
            add("rationale", s2, "core")
    return out


# --------------------------------------------------------------------------- LLM extraction
class LLMUnit(BaseModel):
    """One unit as the extractor returns it (validated afterwards by :func:`validate_units`)."""

    topic: str = Field(description="neutral noun phrase, 1-12 words, no polarity, value, direction or size")
    claim: str = Field(description="one declarative sentence, 8-25 words, carrying the polarity and values")
    source_quote: str = Field(description="verbatim span of the trace, 3-30 words, supporting the claim")
    importance: str = Field(description="core or supporting")
    presence_question: str = Field(description="may be empty: then synthesised from the topic")
    correctness_question: str = Field(description="may be empty: then synthesised from the claim")


class LLMRubric(BaseModel):
    """The extractor's reply: units per axis."""

    perception: list[LLMUnit]
    knowledge: list[LLMUnit]
    rationale: list[LLMUnit]


def think_text(trace: str) -> str:
    """The ``<think>`` content of a trace (the whole text without tags when there is no block)."""
    m = _THINK.search(trace or "")
    return (m.group(1) if m else _TAGS.sub(" ", trace or "")).strip()


def rubric_request(trace: str, *, question: str, answer: str, item_id: str | None = None, seed: int | None = 0) -> Any:
    """The one structured :class:`~openmedreason.llm.LLMRequest` that distils ``trace`` into units."""
    from openmedreason.llm import LLMRequest, Message
    from openmedreason.prompts import fence, load

    tpl = load(PROMPT)
    system, user = tpl.render(case=fence("case", f"{question}\nReference answer: {answer}"), trace=fence("trace", think_text(trace)))
    overrides: dict[str, Any] = {"temperature": 0.0}
    if seed is not None:
        overrides["seed"] = seed
    return LLMRequest(
        step="rubric", template=tpl.name, template_version=tpl.version,
        messages=[Message.system(system), Message.user(user)], response_model=LLMRubric,
        overrides=overrides, record_id=item_id,
    )


@dataclass
class RubricSource:
    """One trace to distil: what :func:`extract_many` takes."""

    trace: str
    question: str = ""
    answer: str = ""
    item_id: str | None = None


def extract_many(sources: Iterable[RubricSource], *, engine: Any = None, caps: RubricCaps | None = None) -> list[RubricResult]:
    """:func:`extract_units` for many traces; in LLM mode the calls go out concurrently in one
    ``engine.complete_many`` (cached: a rerun sends nothing)."""
    caps = caps or RubricCaps()
    sources = list(sources)
    if engine is None:
        results = []
        for src in sources:
            cands = offline_candidates(src.trace)
            kept, rejected = validate_units(src.trace, cands, caps)
            prov: dict[str, Any] = {"engine": "offline", "model": None, "template": None}
            if not any(cands.values()):
                prov["note"] = NO_SECTIONS if not _sections(src.trace) else "no usable sentence in the sections"
            results.append(RubricResult(units=kept, rejected=rejected, provenance=prov, item_id=src.item_id))
        return results
    from openmedreason.prompts import load

    requests = [rubric_request(s.trace, question=s.question, answer=s.answer, item_id=s.item_id) for s in sources]
    replies = engine.complete_many(requests)
    # a reply cut at the token limit is retried at 2x, then 4x the configured output budget
    from openmedreason.llm import TRUNCATED

    base = int(getattr(engine.config, "max_tokens", None) or 4096)
    for factor in (2, 4):
        again = [i for i, r in enumerate(replies) if r.reason == TRUNCATED]
        if not again:
            break
        for i in again:
            requests[i].overrides["max_tokens"] = base * factor
        for i, r in zip(again, engine.complete_many([requests[i] for i in again])):
            replies[i] = r
    tpl = load(PROMPT)
    results = []
    for src, r in zip(sources, replies):
        prov = {"engine": "llm", "model": r.model, "template": f"{tpl.name}@{tpl.version}", "cache_key": r.cache_key,
                "cached": r.cached, "cost_usd": r.cost_usd}
        if not r.ok or r.parsed is None:
            prov["error"] = r.reason
            prov["detail"] = (r.detail or r.text or "")[:500]
            results.append(RubricResult(provenance=prov, item_id=src.item_id))
            continue
        raw = {a: [u.model_dump() for u in getattr(r.parsed, a)] for a in AXES}
        kept, rejected = validate_units(src.trace, raw, caps)
        results.append(RubricResult(units=kept, rejected=rejected, provenance=prov, item_id=src.item_id))
    return results


def extract_units(
    trace: str,
    *,
    question: str = "",
    answer: str = "",
    engine: Any = None,
    caps: RubricCaps | None = None,
    item_id: str | None = None,
) -> RubricResult:
    """Distil one reference trace into validated P/K/R units: one structured LLM call when
    ``engine`` is given, else cut from the trace's labelled sections (offline)."""
    return extract_many([RubricSource(trace, question, answer, item_id)], engine=engine, caps=caps)[0]


# --------------------------------------------------------------------------- the dataset's test split
#: the columns ``omr rubric`` reads to distil units (the image is never read)
_READ_COLUMNS = ("id", "question", "reasoning", "answer")


def test_files(dataset_dir: Any) -> list[Any]:
    """The test-split parquet files of a dataset folder (contract D naming)."""
    from pathlib import Path

    from openmedreason.build.hf import split_files

    return split_files(Path(dataset_dir), "test")


def _rows(path: Any) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    cols = [c for c in _READ_COLUMNS if c in pf.schema_arrow.names]
    return pf.read(columns=cols).to_pylist()


def rewrite_rubric_columns(path: Any, columns: Sequence[Mapping[str, list[dict[str, str]]]]) -> None:
    """Rewrite one parquet file with its ``perception`` / ``knowledge`` / ``rationale`` columns
    replaced by ``columns`` (one mapping per row, in file order). Schema, schema metadata (the HF
    features) and row groups are kept; the file is replaced atomically (temp file + rename)."""
    import os
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    if pf.metadata.num_rows != len(columns):
        raise ValueError(f"{path}: {pf.metadata.num_rows} rows, {len(columns)} rubric rows given")
    idx = {a: schema.get_field_index(a) for a in AXES}
    missing = [a for a, i in idx.items() if i < 0]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} column (not a dataset of contract D)")
    tmp = path.with_name(f".{path.name}.rubric.tmp")
    codec = pf.metadata.row_group(0).column(0).compression.lower() if pf.num_row_groups else "snappy"
    codec = "none" if codec == "uncompressed" else codec
    start = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression=codec) as writer:
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                n = table.num_rows
                for axis, i in idx.items():
                    values = [list(c.get(axis, [])) for c in columns[start : start + n]]
                    table = table.set_column(i, schema.field(i), pa.array(values, type=schema.field(i).type))
                writer.write_table(table.replace_schema_metadata(schema.metadata))
                start += n
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fill_dataset(
    dataset_dir: Any,
    *,
    engine: Any = None,
    caps: RubricCaps | None = None,
    chunk: int = 256,
    on_progress: Any = None,
) -> dict[str, Any]:
    """Distil units for every test row of ``dataset_dir`` and write them into its test parquet
    files (in place, atomically per file); write ``rubric/rejected.jsonl`` and
    ``rubric/manifest.json``; refresh the card (:func:`openmedreason.build.card.write_card`).

    Rows that end with no valid unit are kept (with empty unit lists) and listed in the manifest's
    ``items_without_units`` with the cause: dropping them would change the benchmark's item set
    behind the user's back; the judge skips axes without units and an item without any unit scores
    no trace value. Returns the manifest.
    """
    import datetime as _dt
    import json
    from collections import Counter
    from pathlib import Path

    from openmedreason.prompts import load

    caps = caps or RubricCaps()
    root = Path(dataset_dir)
    files = test_files(root)
    if not files:
        raise FileNotFoundError(f"no test split under {root} (expected data/test-*.parquet)")
    per_file: list[tuple[Path, list[dict[str, Any]]]] = [(p, _rows(p)) for p in files]
    total = sum(len(rows) for _, rows in per_file)
    results: dict[tuple[int, int], RubricResult] = {}
    todo = [(fi, ri, row) for fi, (_, rows) in enumerate(per_file) for ri, row in enumerate(rows)]
    done = 0
    for k in range(0, len(todo), max(1, chunk)):
        part = todo[k : k + chunk]
        srcs = [RubricSource(row.get("reasoning") or "", row.get("question") or "", row.get("answer") or "", row.get("id")) for _, _, row in part]
        for (fi, ri, _), res in zip(part, extract_many(srcs, engine=engine, caps=caps)):
            results[(fi, ri)] = res
        done += len(part)
        if engine is not None:
            engine.flush()
        if on_progress:
            on_progress(done, total)

    out_dir = root / "rubric"
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = Counter()
    reasons = Counter()
    importance = Counter()
    without: list[dict[str, Any]] = []
    models: set[str] = set()
    cost = 0.0
    cached = 0
    tmp_rej = out_dir / ".rejected.jsonl.tmp"
    with open(tmp_rej, "w", encoding="utf-8") as fh:
        for (fi, ri), res in sorted(results.items()):
            row = per_file[fi][1][ri]
            for a in AXES:
                counts[a] += len(res.units[a])
                importance.update(u.importance for u in res.units[a])
            for rj in res.rejected:
                reasons[rj["reason"]] += 1
                fh.write(json.dumps({"id": row.get("id"), **rj}, ensure_ascii=False) + "\n")
            prov = res.provenance
            if prov.get("model"):
                models.add(prov["model"])
            cost += float(prov.get("cost_usd") or 0.0)
            cached += bool(prov.get("cached"))
            if prov.get("error"):
                reasons[prov["error"]] += 1
                fh.write(json.dumps({"id": row.get("id"), "axis": None, "unit": None, "reason": prov["error"],
                                     "detail": prov.get("detail")}, ensure_ascii=False) + "\n")
            if res.n_units == 0:
                cause = prov.get("error") or prov.get("note") or ("every candidate rejected" if res.rejected else "no candidate unit")
                without.append({"id": row.get("id"), "file": per_file[fi][0].name, "cause": cause})
    tmp_rej.replace(out_dir / "rejected.jsonl")

    for fi, (path, rows) in enumerate(per_file):
        rewrite_rubric_columns(path, [results[(fi, ri)].columns() for ri in range(len(rows))])

    tpl = load(PROMPT)
    manifest = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "engine": "offline" if engine is None else "llm",
        "model_configured": None if engine is None else engine.config.model,
        "models": sorted(models),
        "prompt": None if engine is None else f"{tpl.name}@{tpl.version}",
        "caps": caps.model_dump(),
        "bounds_words": {k: list(v) for k, v in BOUNDS.items()},
        "files": [p.name for p, _ in per_file],
        "items": total,
        "items_with_units": total - len(without),
        "units": {a: counts[a] for a in AXES} | {"total": sum(counts.values())},
        "importance": dict(importance),
        "rejected": dict(sorted(reasons.items())),
        "items_without_units": without,
        "llm": None if engine is None else {"cost_usd": round(cost, 6), "items_from_cache": cached},
        "note": None if engine is not None else (
            "offline engine: units cut from the trace's labelled sections by heuristics, not distilled by a model"
        ),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    from openmedreason.build.card import write_card

    try:
        write_card(root)
        manifest["card"] = "refreshed"
    except Exception as exc:  # the rubric is written; a card failure must not hide that
        manifest["card"] = f"not refreshed: {type(exc).__name__}: {exc}"
    return manifest
