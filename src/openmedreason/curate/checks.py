"""Deterministic checks on a multiple-choice question (B2), and balanced option shuffling.

Every check is a plain function that returns ``None`` (pass) or a *problem*
``(reason_code, value, detail)``: the registered reject code, the measured value that failed
(or None) and a one-line human detail. :func:`run_checks` runs them in a fixed, cheap-first
order and returns the first problem. Both B2 engines (offline and LLM) run the same checks, and
they run before any LLM judge, so cheap rejects cost nothing.

Reason codes (all registered here)
    ``b2.invalid``               the generator declined (LLM: explicit invalid marker, its reason in
                                 the detail; offline: the category/panel cannot be served)
    ``b2.empty_stem``            the stem is empty or has no words
    ``b2.stem_length``           the stem is longer than the style allows (short: one image-forward
                                 sentence; long: a vignette of bounded length)
    ``b2.option_count``          standard questions need 4–5 options, binary formats exactly 2
    ``b2.binary_options``        a binary-format question whose options are not its canonical pair
    ``b2.answer_not_in_options`` the answer index does not point at an option
    ``b2.duplicate_options``     two options are equal after case/space/punctuation folding
    ``b2.all_of_the_above``      an option is "all/none of the above", "both A and B", …
    ``b2.option_length``         longest/shortest option length ratio above ``max_option_ratio``
                                 (standard formats only; lengths below ``option_length_floor``
                                 characters count as the floor, so "CT" vs "Ultrasound" is fine)
    ``b2.source_reference``      stem or option mentions the caption/legend, a figure or panel by
                                 number/letter, "the provided/given text|context", "as described",
                                 "according to", the article/study/authors
    ``b2.leak_answer``           the correct option appears verbatim in the stem, or the stem
                                 contains at least ``leak_answer_overlap`` of the correct option's
                                 distinctive content words (words no distractor shares)
    ``b2.leak_caption``          the stem shares a run of ≥ ``leak_ngram`` content words with the
                                 caption/sub-caption or the context (short stems: all of it;
                                 long stems: only sentences that describe the image or name a
                                 finding, since long stems may restate the case's clinical facts)
    ``b2.leak_finding``          a perception stem names a finding descriptor (laterality,
                                 location, size, colour/intensity, count, morphology) that the
                                 correct option also names; a normal-vs-abnormal stem names an
                                 abnormal finding

Answer-letter balance
    The released corpus put the answer at A in 77–86% of items. :func:`shuffle_options` places
    the answer at a position taken from a hash of ``(seed, key)``: balanced *in expectation*, but
    independent hashes drift (on 200 four-option questions the standard deviation of a letter's
    share is ~3 points). :func:`balance_positions` therefore assigns positions to a *group* of
    questions (those of one step batch with the same option count) by a low-discrepancy rule:
    order the questions by a stable per-question hash of ``(seed, key)``, then give rank ``r``
    position ``(r + offset) mod k`` with a hash-derived ``offset``. Within a group every letter
    gets ``⌊n/k⌋`` or ``⌈n/k⌉`` answers, so for one group of ≥ 200 questions each letter's share
    is within ``100/n`` < 0.5 points of uniform. Across groups (batches, shards processed
    independently) only each group's remainder (< k questions) is left to chance, and the
    hash offset spreads those remainders over the letters; with the default batch size (256)
    the deviation stays far inside ±3 points. The position of a question depends on which
    questions share its group, never on its content; given the same batch and seed it is
    deterministic. Canonical binary formats (:data:`~openmedreason.taxonomy.BINARY_OPTIONS`)
    keep their canonical order (A = Normal, B = Abnormal; A = Yes; A = True), so their letter is
    determined by the answer; :func:`letter_balance` reports the two kinds separately.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from openmedreason.offline import vocab
from openmedreason.reasons import reason
from openmedreason.taxonomy import BINARY_OPTIONS, category as get_category

INVALID = reason("b2.invalid", "the MCQ generator declined the task (LLM invalid marker, or the offline engine cannot serve it)")
EMPTY_STEM = reason("b2.empty_stem", "the question stem is empty or has no words")
STEM_LENGTH = reason("b2.stem_length", "the stem is longer than its style allows (short: one sentence; long: bounded vignette)")
OPTION_COUNT = reason("b2.option_count", "wrong number of options: standard questions need 4-5, binary formats exactly 2")
BINARY_OPTIONS_CODE = reason("b2.binary_options", "a binary-format question whose options are not its canonical pair")
ANSWER_NOT_IN_OPTIONS = reason("b2.answer_not_in_options", "the answer does not point at one of the options")
DUPLICATE_OPTIONS = reason("b2.duplicate_options", "two options are identical after case/space folding")
ALL_OF_THE_ABOVE = reason("b2.all_of_the_above", "an option is 'all/none of the above' or 'both A and B'")
OPTION_LENGTH = reason("b2.option_length", "option lengths too unequal (longest/shortest ratio above the limit)")
SOURCE_REFERENCE = reason(
    "b2.source_reference", "stem or options mention the caption, a figure/panel, the provided text/context or the article"
)
LEAK_ANSWER = reason("b2.leak_answer", "the stem gives the answer away (answer verbatim, or most of its distinctive words)")
LEAK_CAPTION = reason("b2.leak_caption", "the stem copies a long run of words from the caption or an image-describing sentence")
LEAK_FINDING = reason(
    "b2.leak_finding", "a perception stem names a finding descriptor (location, laterality, size, colour, count, morphology) of the answer"
)

Problem = tuple[str, "float | None", str]

STANDARD_OPTION_COUNTS = (4, 5)
LETTERS = "ABCDE"


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of the deterministic checks (B2's config passes its own values)."""

    max_short_stem_chars: int = 300
    max_long_stem_chars: int = 1200
    max_option_ratio: float = 3.0
    option_length_floor: int = 12
    leak_answer_overlap: float = 0.5
    leak_ngram: int = 5
    finding_families: tuple[str, ...] = ("Perception",)


# --------------------------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------------------------

STOPWORDS = frozenset(
    """a an the and or but nor of in on at to for from by with without within into onto over under
    as is are was were be been being am do does did done has have had having this that these those
    it its it's which what who whom whose where when why how than then there here such so very most
    more less least many much some any all each every either neither both other another same
    following best likely likeliest true false yes no not can could would should may might must will
    shall about above below between after before during while if whether one ones
    image images shown show shows showed showing seen see picture depicted depicts displayed
    patient patients his her he she him they them their we our you your i""".split()
)

_WORD = re.compile(r"[a-z0-9]+")
_SPACE = re.compile(r"\s+")


def _stem_word(w: str) -> str:
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("es") and (w[-3] in "sxz" or w[-4:-2] in ("ch", "sh")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def content_tokens(text: str | None) -> list[str]:
    """Lower-cased content words (stop words dropped, plural folded), in order."""
    return [_stem_word(w) for w in _WORD.findall((text or "").lower()) if w not in STOPWORDS]


def fold(text: str) -> str:
    """Case-, space- and punctuation-insensitive form of an option (for duplicate detection)."""
    return " ".join(_WORD.findall(text.lower()))


def _norm(text: str) -> str:
    return " " + " ".join(_WORD.findall(text.lower())) + " "


def _sentences(text: str | None) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?;])\s+|\n+", text or "") if s.strip()]


def _hash_unit(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (sha256; not Python's salted hash)."""
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def hash_unit(*parts: object) -> float:
    return _hash_unit(*parts)


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def check_empty_stem(stem: str | None) -> Problem | None:
    if not stem or not re.search(r"[A-Za-z]{2,}", stem):
        return (EMPTY_STEM, None, "the stem has no words")
    return None


def check_stem_length(stem: str, style: str, settings: CheckSettings = CheckSettings()) -> Problem | None:
    limit = settings.max_short_stem_chars if style == "short" else settings.max_long_stem_chars
    if len(stem) > limit:
        return (STEM_LENGTH, float(len(stem)), f"{style} stem of {len(stem)} characters (limit {limit})")
    return None


def check_option_count(options: Sequence[str], answer_format: str = "standard") -> Problem | None:
    n = len(options)
    if answer_format in BINARY_OPTIONS:
        if n != 2:
            return (OPTION_COUNT, float(n), f"{answer_format} question with {n} options (needs 2)")
    elif n not in STANDARD_OPTION_COUNTS:
        return (OPTION_COUNT, float(n), f"standard question with {n} options (needs 4 or 5)")
    return None


def check_answer_in_options(options: Sequence[str], answer_index: int | None) -> Problem | None:
    if answer_index is None or not isinstance(answer_index, int) or not 0 <= answer_index < len(options):
        return (ANSWER_NOT_IN_OPTIONS, None if answer_index is None else float(answer_index),
                f"answer index {answer_index!r} with {len(options)} options")
    if not options[answer_index].strip():
        return (ANSWER_NOT_IN_OPTIONS, float(answer_index), "the answer option is empty")
    return None


def check_duplicate_options(options: Sequence[str]) -> Problem | None:
    seen: dict[str, int] = {}
    for i, o in enumerate(options):
        k = fold(o)
        if k in seen:
            return (DUPLICATE_OPTIONS, None, f"options {LETTERS[seen[k]]} and {LETTERS[i]} are the same: {o!r}")
        seen[k] = i
    return None


_ALL_ABOVE = re.compile(
    r"\b(all|none|any|both|neither)\s+of\s+(the\s+)?(above|these|those|options|choices|answers|listed|mentioned)\b"
    r"|\b(both|neither)\s+\(?[a-e]\)?\s+(and|nor)\s+\(?[a-e]\)?(?![a-z])"
    r"|^\s*\(?[a-e]\)?\s+and\s+\(?[a-e]\)?\s*(only)?\s*$"
    r"|\b(all|none)\s+(are|is)\s+correct\b",
    re.I,
)


def check_all_of_the_above(options: Sequence[str]) -> Problem | None:
    for i, o in enumerate(options):
        m = _ALL_ABOVE.search(o)
        if m:
            return (ALL_OF_THE_ABOVE, None, f"option {LETTERS[i] if i < 5 else i}: {m.group(0)!r}")
    return None


def check_option_length(options: Sequence[str], answer_format: str = "standard",
                        settings: CheckSettings = CheckSettings()) -> Problem | None:
    if answer_format in BINARY_OPTIONS or len(options) < 2:
        return None  # canonical pairs: not applicable
    lengths = [max(len(o.strip()), settings.option_length_floor) for o in options]
    ratio = max(lengths) / min(lengths)
    if ratio > settings.max_option_ratio:
        return (OPTION_LENGTH, round(ratio, 3), f"longest/shortest option length ratio {ratio:.2f} > {settings.max_option_ratio:g}")
    return None


_SOURCE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(p, re.I))
    for name, p in (
        ("caption", r"\b(sub[-\s]?captions?|captions?|legends?)\b"),
        ("figure", r"\b(fig(?:ure)?s?\.?|supplementa(?:ry|l)\s+fig(?:ure)?s?\.?)\s*\(?\s*(\d+|[A-H]\b|[ivx]+\b)"),
        ("panel", r"\b(panels?|insets?|sub-?figures?)\s*\(?\s*([A-Ha-h]|\d+)\b(?!-)"),
        ("panel", r"\b(left|right|upper|lower|top|bottom|middle|other|previous|next|adjacent)\s+(panels?|insets?|sub-?figures?)\b"),
        ("panel", r"\bin\s+\([A-H]\)"),
        ("provided text", r"\b(provided|given|accompanying|supplied|above|preceding|attached)\s+(text|context|passage|description|"
                          r"report|excerpt|image\s+context|article|paragraph|summary)\b"),
        ("image context", r"\b(relevant[\s_])?image[\s_]context\b"),
        ("as described", r"\bas\s+(described|stated|mentioned|noted|reported|discussed)\s+(in|by|above|earlier|previously)\b"),
        ("as described", r"\bas\s+described\b"),
        ("according to", r"\baccording\s+to\b"),
        ("the article", r"\b(the|this)\s+(authors?|article|paper|manuscript|publication|case\s+report)\b"),
        ("the article", r"\b(in|from|by)\s+(the|this)\s+(study|text|passage|report|excerpt)\b"),
        ("the article", r"\b(the|this)\s+study\s+(shows?|showed|found|finds|reports?|reported|describes?|described|demonstrat\w*)\b"),
    )
)


def find_source_reference(text: str | None) -> tuple[str, str] | None:
    """``(kind, matched text)`` of the first reference to the source material in ``text``."""
    for name, pat in _SOURCE_PATTERNS:
        m = pat.search(text or "")
        if m:
            return name, m.group(0)
    return None


def check_source_reference(stem: str, options: Sequence[str] = ()) -> Problem | None:
    for where, text in [("stem", stem), *((f"option {LETTERS[i] if i < 5 else i}", o) for i, o in enumerate(options))]:
        hit = find_source_reference(text)
        if hit:
            return (SOURCE_REFERENCE, None, f"{where} mentions the source ({hit[0]}): {hit[1]!r}")
    return None


def check_leak_answer(stem: str, options: Sequence[str], answer_index: int, answer_format: str = "standard",
                      settings: CheckSettings = CheckSettings()) -> Problem | None:
    """The correct option verbatim in the stem, or the stem holding at least
    ``leak_answer_overlap`` of the answer's *distinctive* content words (those no distractor
    has: "cell" in "small cell carcinoma" vs "non-small cell carcinoma" says nothing)."""
    if answer_format in BINARY_OPTIONS:
        return None  # Yes/No, Normal/Abnormal: the stem necessarily carries the proposition
    answer = options[answer_index]
    a_norm = _norm(answer).strip()
    if len(a_norm) >= 3 and f" {a_norm} " in _norm(stem):
        return (LEAK_ANSWER, 1.0, f"the answer {answer!r} appears verbatim in the stem")
    others = {t for i, o in enumerate(options) if i != answer_index for t in content_tokens(o)}
    distinct = set(content_tokens(answer)) - others
    if not distinct:
        return None
    shared = distinct & set(content_tokens(stem))
    share = len(shared) / len(distinct)
    if shared and share >= settings.leak_answer_overlap:
        return (LEAK_ANSWER, round(share, 3), f"stem contains {sorted(shared)} of the answer's distinctive words {sorted(distinct)}")
    return None


_DESCRIPTIVE = re.compile(
    r"\b(shows?|showed|shown|showing|reveal\w*|demonstrat\w*|depict\w*|visible|visuali[sz]\w*|seen|arrows?|"
    r"arrowheads?|asterisks?|display\w*|illustrat\w*|indicat\w*|note\b|noted|observed|appear\w*)\b",
    re.I,
)


def is_descriptive(sentence: str) -> bool:
    """Whether a sentence describes an image (an observation verb, a marker word, or a
    modality name): the sentences a stem must not copy from, and where offline B2 reads
    anatomy (a symptom sentence such as "muscle ache" does not say what the image shows)."""
    return bool(_DESCRIPTIVE.search(sentence) or vocab.scan(sentence, "modality"))


def descriptive_sentences(text: str | None) -> list[str]:
    return [s for s in _sentences(text) if is_descriptive(s)]


def _longest_common_run(a: list[str], b: list[str], n: int) -> int:
    """Longest run of consecutive tokens shared by ``a`` and ``b`` if it is ≥ n, else 0."""
    if len(a) < n or len(b) < n:
        return 0
    grams = {tuple(b[i : i + n]) for i in range(len(b) - n + 1)}
    bs = " " + " ".join(b) + " "
    best = 0
    for i in range(len(a) - n + 1):
        if tuple(a[i : i + n]) in grams:
            k = n
            while i + k < len(a) and (" " + " ".join(a[i : i + k + 1]) + " ") in bs:
                k += 1
            best = max(best, k)
    return best


def check_leak_caption(stem: str, caption: str | None, context: str | None = None, style: str = "short",
                       settings: CheckSettings = CheckSettings()) -> Problem | None:
    """The stem shares ≥ ``leak_ngram`` consecutive content words with the caption, or with the
    context. Short stems: the whole caption and context. Long stems may restate the case's age,
    history and labs, so only the sentences that describe the image count: caption sentences
    that are descriptive (:func:`is_descriptive`) or name a finding (an ``abnormal`` or
    ``morphology`` lexicon term), and context sentences that are descriptive."""
    n = settings.leak_ngram
    s = content_tokens(stem)
    if style == "short":
        sources = [("caption", caption)]
    else:  # a case history inside a caption may be restated; what the image shows may not
        sources = [("caption", sent) for sent in _sentences(caption)
                   if is_descriptive(sent) or vocab.scan(sent, ("abnormal", "morphology"))]
    for sent in _sentences(context):
        if style == "short" or is_descriptive(sent):
            sources.append(("context", sent))
    for name, text in sources:
        run = _longest_common_run(s, content_tokens(text), n)
        if run:
            return (LEAK_CAPTION, float(run), f"stem shares {run} consecutive content words with the {name}")
    return None


_BARE_NORMALITY = {"normal", "abnormal", "abnormality", "abnormalities", "abnormally", "normally", "pathology",
                   "pathological", "disease"}


def check_leak_finding(stem: str, options: Sequence[str], answer_index: int, family: str,
                       answer_format: str = "standard", settings: CheckSettings = CheckSettings()) -> Problem | None:
    """Perception stems must not pre-describe the finding: no descriptor (laterality, location,
    size, colour/intensity, count, morphology) shared with the correct option; a
    normal-vs-abnormal stem names no abnormal finding at all."""
    if answer_format == "normal_abnormal":
        cues = [m for m in vocab.scan(stem, ("normal", "abnormal"))
                if m.vocab_class == "abnormal" and m.surface.lower() not in _BARE_NORMALITY]
        if cues:
            return (LEAK_FINDING, None, f"normal-vs-abnormal stem names a finding: {cues[0].surface!r}")
        return None
    if family not in settings.finding_families or answer_format in BINARY_OPTIONS:
        return None
    answer = options[answer_index]
    for cls in vocab.DESCRIPTOR_CLASSES:
        shared = set(vocab.find_terms(stem, cls)) & set(vocab.find_terms(answer, cls))
        if shared:
            return (LEAK_FINDING, None, f"stem names the answer's {cls} descriptor {sorted(shared)}")
    return None


# --------------------------------------------------------------------------------------------
# binary formats and running everything
# --------------------------------------------------------------------------------------------


def canonical_binary(options: Sequence[str], answer_index: int, answer_format: str) -> tuple[list[str], int] | Problem:
    """Map a two-option reply onto the canonical pair of ``answer_format`` (case-insensitive),
    returning ``(canonical options, answer index)``, or a problem."""
    canon = list(BINARY_OPTIONS[answer_format])
    if len(options) != 2:
        return (OPTION_COUNT, float(len(options)), f"{answer_format} question with {len(options)} options (needs 2)")
    bad = check_answer_in_options(options, answer_index)
    if bad:
        return bad
    folded = [fold(o) for o in options]
    if sorted(folded) != sorted(fold(c) for c in canon):
        return (BINARY_OPTIONS_CODE, None, f"{answer_format} options {list(options)} are not {canon}")
    return canon, [fold(c) for c in canon].index(folded[answer_index])


def run_checks(stem: str, options: Sequence[str], answer_index: int, *, category: str, style: str,
               answer_format: str = "standard", caption: str | None = None, context: str | None = None,
               settings: CheckSettings = CheckSettings()) -> Problem | None:
    """Every deterministic question check, cheapest first; the first problem or None."""
    family = get_category(category).family
    for problem in (
        lambda: check_empty_stem(stem),
        lambda: check_stem_length(stem, style, settings),
        lambda: check_option_count(options, answer_format),
        lambda: check_answer_in_options(options, answer_index),
        lambda: check_duplicate_options(options),
        lambda: check_all_of_the_above(options),
        lambda: check_option_length(options, answer_format, settings),
        lambda: check_source_reference(stem, options),
        lambda: check_leak_answer(stem, options, answer_index, answer_format, settings),
        lambda: check_leak_finding(stem, options, answer_index, family, answer_format, settings),
        lambda: check_leak_caption(stem, caption, context, style, settings),
    ):
        found = problem()
        if found:
            return found
    return None


def check_question(q, settings: CheckSettings = CheckSettings()) -> Problem | None:
    """:func:`run_checks` on a finished :class:`~openmedreason.records.Question` (the caption is
    the panel's sub-caption and caption; the context is the panel's for panel scope and every
    citing paragraph for full-figure scope)."""
    caption = "\n".join(t for t in (q.panel.sub_caption, q.panel.caption) if t)
    context = q.panel.all_context() if q.image_scope == "full" else (q.panel.context or q.panel.all_context())
    idx = q.letters.index(q.answer) if q.answer and q.answer in q.letters else -1
    return run_checks(q.stem, q.options, idx, category=q.category, style=q.style, answer_format=q.answer_format,
                      caption=caption, context=context, settings=settings)


# --------------------------------------------------------------------------------------------
# shuffling and letter balance
# --------------------------------------------------------------------------------------------


def binary_format_of(options: Sequence[str]) -> str | None:
    """The canonical binary format whose pair these two options are, if any."""
    if len(options) != 2:
        return None
    folded = sorted(fold(o) for o in options)
    for fmt, pair in BINARY_OPTIONS.items():
        if folded == sorted(fold(p) for p in pair):
            return fmt
    return None


def answer_position(key: str, n_options: int, seed: int) -> int:
    """Hash-derived answer position for one question (uniform in expectation)."""
    return int(_hash_unit("answer-position", seed, key) * n_options)


def balance_positions(items: Sequence[tuple[str, int]], seed: int) -> list[int]:
    """Answer positions for a group of questions ``(key, n_options)``, balanced per option
    count: order by a stable hash of ``(seed, key)``, then rank ``r`` gets
    ``(r + offset) mod k`` (``offset`` hashed from the group's keys). Each letter gets
    ``⌊n/k⌋`` or ``⌈n/k⌉`` of the ``n`` questions with ``k`` options. The result does not depend
    on the order of ``items``."""
    out = [0] * len(items)
    by_k: dict[int, list[int]] = {}
    for i, (_, k) in enumerate(items):
        by_k.setdefault(k, []).append(i)
    for k, idx in by_k.items():
        ranked = sorted(idx, key=lambda i: (_hash_unit("answer-rank", seed, items[i][0]), items[i][0]))
        offset = int(_hash_unit("answer-offset", seed, k, *sorted(items[i][0] for i in idx)) * k)
        for r, i in enumerate(ranked):
            out[i] = (r + offset) % k
    return out


def shuffle_options(options: Sequence[str], answer_index: int, key: str, seed: int,
                    position: int | None = None) -> tuple[list[str], str]:
    """Reorder ``options`` so the answer sits at ``position`` (default: hash of ``(seed, key)``)
    and the distractors in a hash-seeded order; returns ``(options, answer letter)``.

    A canonical binary pair (Normal/Abnormal, Yes/No, True/False) keeps its canonical order:
    its letter follows from the answer."""
    options = list(options)
    fmt = binary_format_of(options)
    if fmt is not None:
        canon = list(BINARY_OPTIONS[fmt])
        idx = [fold(c) for c in canon].index(fold(options[answer_index]))
        return canon, LETTERS[idx]
    k = len(options)
    pos = answer_position(key, k, seed) if position is None else position
    if not 0 <= pos < k:
        raise ValueError(f"position {pos} out of range for {k} options")
    distractors = [o for i, o in enumerate(options) if i != answer_index]
    rng = random.Random(int(_hash_unit("distractor-order", seed, key) * 2**53))
    rng.shuffle(distractors)
    out = distractors[:pos] + [options[answer_index]] + distractors[pos:]
    return out, LETTERS[pos]


def letter_balance(questions: Iterable) -> dict[str, dict]:
    """Answer-letter shares (%) and the largest deviation from uniform (points), separately for
    standard questions (per option count and overall) and binary ones (per format)."""
    std: dict[int, Counter] = {}
    binary: dict[str, Counter] = {}
    for q in questions:
        if q.answer_format in BINARY_OPTIONS:
            binary.setdefault(q.answer_format, Counter())[q.answer] += 1
        else:
            std.setdefault(len(q.options), Counter())[q.answer] += 1

    def summary(c: Counter, k: int) -> dict:
        n = sum(c.values())
        shares = {l: round(100 * c[l] / n, 2) for l in LETTERS[:k]} if n else {}
        dev = max((abs(s - 100 / k) for s in shares.values()), default=0.0)
        return {"n": n, "shares": shares, "max_dev_points": round(dev, 2)}

    out: dict[str, dict] = {"standard": {str(k): summary(c, k) for k, c in sorted(std.items())},
                            "binary": {f: summary(c, 2) for f, c in sorted(binary.items())}}
    return out


__all__ = [
    "ALL_OF_THE_ABOVE", "ANSWER_NOT_IN_OPTIONS", "BINARY_OPTIONS_CODE", "CheckSettings", "DUPLICATE_OPTIONS",
    "EMPTY_STEM", "INVALID", "LEAK_ANSWER", "LEAK_CAPTION", "LEAK_FINDING", "OPTION_COUNT", "OPTION_LENGTH",
    "Problem", "SOURCE_REFERENCE", "STEM_LENGTH", "answer_position", "balance_positions", "binary_format_of",
    "canonical_binary", "check_all_of_the_above", "check_answer_in_options", "check_duplicate_options",
    "check_empty_stem", "check_leak_answer", "check_leak_caption", "check_leak_finding", "check_option_count",
    "check_option_length", "check_question", "check_source_reference", "check_stem_length", "content_tokens", "descriptive_sentences", "is_descriptive",
    "find_source_reference", "fold", "hash_unit", "letter_balance", "run_checks", "shuffle_options",
]
