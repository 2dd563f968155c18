"""Deterministic checks on a reasoning trace (C2's cheap filters, also used by C1's offline mode).

A trace is ``<think>…</think>\\n<answer>X</answer>``. Each check below returns ``None`` when the
trace passes and ``(reason, value, detail)`` when it fails: a registered reject code, the measured
number when there is one, and a short human-readable detail (usually the offending phrase). Each
failure has its own code:

=============================  ===========================================================================
code                           rule
=============================  ===========================================================================
``c2.format``                  the whole text must be exactly ``<think>T</think>\\n<answer>X</answer>``: one
                               think block with non-blank content, then one newline, one answer tag holding
                               one letter valid for the question (A–D for four options…), nothing before or
                               after (not even whitespace); no other think/answer tag anywhere.
``c2.wrong_answer``            the answer letter differs from the question's gold letter.
``c2.too_short``               fewer than ``min_chars`` characters inside ``<think>`` (stripped; default 300).
``c2.too_long``                more than ``max_chars`` characters inside ``<think>`` (default 6,000; the
                               published traces have a median of ~1,900 and are all ≤ 6,000).
``c2.absent_image_reference``  the reasoning points at an image that is not shown: ``panel B``, ``panels A–C``,
                               ``Figure 3``, ``Fig. 2A``, ``Image 2B``, ``Table 1``, ``sub-figure``, ``inset``,
                               a bare panel letter as subject (``b shows …``),
                               ``the previous/next/other/second image (panel, scan, view…)``, ``left/right/
                               upper/lower panel (image, frame…)``, ``image on the left``. Anatomical phrases
                               such as ``left lower lobe`` do not match (only picture nouns follow the side).
``c2.cites_source``            the reasoning cites or leaks its source instead of the image: ``caption``,
                               ``sub-caption``, ``figure legend``, ``the context`` (but not ``the context of``,
                               as in "in the context of immunosuppression"), ``the text``, ``the provided/given
                               text (information, description, data…)``, ``the article/paper/manuscript/
                               publication``, ``the author(s)``, ``et al.``, author-voice ``the study`` ("the study
                               reported…", "in this study"; "the imaging study", "study of choice" pass),
                               ``as described/stated/reported``, ``according to`` + a source noun (caption,
                               text, article, study, report, description…; "according to the WHO
                               classification" passes), ``ground truth``, ``image context``, and any hint that
                               the answer was supplied (``the given/provided/target answer``, ``answer key``,
                               ``we are told``).
``c2.copies_caption``          the think text shares a run of ≥ ``copy_ngram`` consecutive words (default 12;
                               words = ``\\w+`` tokens, lower-cased) with the caption or sub-caption.
``c2.hedged``                  the trace does not commit to one option: an option-letter disjunction anywhere
                               ("options A or C", "either B or D", "(A) or (C)", "answer A/C"), or, in its
                               final paragraph (the conclusion), "either … or …" or an undecided phrase
                               ("cannot be determined", "equally likely", "both options are correct", "could be
                               either"…). The correct option's own text is ignored, so an option that itself
                               reads "either X or Y" does not count.
``c2.elimination``             (heuristic, on by default) reasoning dominated by ruling options out. A sentence
                               is *eliminative* when it names a wrong option (by letter: "option C", "choice
                               C", "(C)", "answer C"; or by its text, for option texts of ≥ 4 characters other
                               than the canonical Normal/Abnormal/Yes/No/True/False) and contains a negative
                               cue (not, no, unlikely, rule out, excluded, incorrect, inconsistent, against,
                               less likely, rather than, …). The trace fails when at least
                               ``elimination_min_sentences`` (2) sentences are eliminative and they are more
                               than ``elimination_share`` (0.5) of all its sentences. The value is the share.
=============================  ===========================================================================

:func:`run_trace_checks` runs them all in the order above and returns one :class:`TraceCheck` per
check (name, failure or None, and a pass detail such as the measured length), which C2 turns into
``Check`` records. :func:`assemble_trace` builds the exact format from its sections; C1 uses it
in both modes, so the format is deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from openmedreason.reasons import reason
from openmedreason.records import Check, Question

FORMAT = reason("c2.format", "the trace is not exactly <think>…</think>\\n<answer>X</answer> with one valid option letter")
WRONG_ANSWER = reason("c2.wrong_answer", "the trace's answer letter differs from the question's gold letter")
TOO_SHORT = reason("c2.too_short", "fewer characters inside <think> than the minimum (value = characters)")
TOO_LONG = reason("c2.too_long", "more characters inside <think> than the maximum (value = characters)")
ABSENT_IMAGE = reason(
    "c2.absent_image_reference", "the trace refers to an image that is not shown (panel B, Figure 3, the previous image, left panel, inset…)"
)
CITES_SOURCE = reason(
    "c2.cites_source", "the trace cites or leaks its source (caption, the context/text/article/study, as described, the given answer…)"
)
COPIES_CAPTION = reason("c2.copies_caption", "the trace copies a long verbatim word run from the caption (value = run length in words)")
HEDGED = reason("c2.hedged", "the trace does not commit to one option (A or C, either … or … in the conclusion, cannot be determined)")
ELIMINATION = reason("c2.elimination", "most sentences of the trace argue why other options are wrong (value = share of such sentences)")

Failure = tuple[str, float | None, str | None]

#: section labels of the assembled trace, in the method's order (the first section is unlabelled)
SECTION_LABELS = ("", "Perception", "Clinical context", "Interpretation and medical knowledge", "Answer justification")

# --------------------------------------------------------------------------- format
_TAG = re.compile(r"</?\s*(?:think|answer)\s*>", re.I)
_STRICT = re.compile(r"\A<think>(?P<think>.*)</think>\n<answer>(?P<letter>[^<]*)</answer>\Z", re.S)
_THINK = re.compile(r"<think>(.*?)</think>", re.S | re.I)
_ANSWER = re.compile(r"<answer>\s*([^<]*?)\s*</answer>", re.S | re.I)


@dataclass(frozen=True)
class TraceLimits:
    """Thresholds of the deterministic checks (C2's config fills it)."""

    min_chars: int = 300
    max_chars: int = 6000
    copy_ngram: int = 12
    elimination: bool = True
    elimination_share: float = 0.5
    elimination_min_sentences: int = 2


def split_trace(text: str) -> tuple[str | None, str | None]:
    """Lenient parse: (think content, answer letter-ish) from the first think block and the last
    answer tag; either is None when absent. The format check is strict; this is for the others."""
    text = text or ""
    m = _THINK.search(text)
    think = m.group(1) if m else None
    if think is None and "<answer>" not in text.lower() and text.strip():
        think = _TAG.sub("", text)
    answers = _ANSWER.findall(text)
    letter = answers[-1].strip() if answers else None
    return think, letter


def check_format(trace: str, letters: str = "ABCDE") -> Failure | None:
    text = trace or ""
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        k = len(re.findall(re.escape(tag).replace("/", r"\s*/\s*"), text, re.I))
        if k > 1:
            return (FORMAT, k, f"{k} {tag} tags")
    m = _STRICT.match(text)
    if m is None:
        if not text.strip():
            return (FORMAT, None, "empty trace")
        if text != text.strip():
            return (FORMAT, None, "text before <think> or after </answer> (whitespace included)")
        return (FORMAT, None, "not <think>…</think>\\n<answer>X</answer>")
    think, letter = m.group("think"), m.group("letter")
    tags = _TAG.findall(think)
    if tags:
        return (FORMAT, None, f"extra tag inside the think block: {tags[0]}")
    if not think.strip():
        return (FORMAT, None, "empty <think> block")
    if not letter:
        return (FORMAT, None, "empty <answer> tag")
    if len(letter) != 1 or letter not in letters:
        return (FORMAT, None, f"answer {letter!r} is not one of the question's letters {letters}")
    return None


def check_answer(trace: str, gold: str) -> Failure | None:
    _, letter = split_trace(trace)
    if letter is None:
        return None  # nothing to compare: the format check reports it
    if letter.upper() != gold.upper():
        return (WRONG_ANSWER, None, f"answer {letter!r}, gold {gold!r}")
    return None


def check_length(think: str, min_chars: int = 300, max_chars: int = 6000) -> Failure | None:
    n = len((think or "").strip())
    if n < min_chars:
        return (TOO_SHORT, n, f"{n} characters inside <think> < {min_chars}")
    if n > max_chars:
        return (TOO_LONG, n, f"{n} characters inside <think> > {max_chars}")
    return None


# --------------------------------------------------------------------------- absent images
_PICTURE = r"(?:images?|panels?|pictures?|figures?|frames?|photographs?|photos?|slides?|sub-?figures?|sub-?panels?|scans?|insets?)"
_ABSENT_PATTERNS = [
    # panel letters: "panel B", "panels A–C", "panel (b)", "panel b," ("panel a week later" does not match)
    r"\bpanels?\s+(?:(?-i:[A-H])\b|\((?-i:[A-Ha-h])\)|(?-i:[a-h])(?=\s*(?:[,.;:)\u2013-]|and\s+(?-i:[a-h])\b|$)))",
    # figure / table numbers: "Figure 3", "Fig. 2A", "Figs 1 and 2", "Supplementary Figure S1", "Table 2"
    r"\bfig(?:ure)?s?\.?\s*(?:S?\d+|(?-i:[A-H])\b)",
    r"\btables?\s+S?\d+",
    r"\bimages?\s+\d+[A-Za-z]?\b",
    r"\bsub-?(?:figure|panel)s?\b",
    r"\binsets?\b",
    # a bare panel letter as the subject: "b shows a large opacity" (no English sentence reads "a shows")
    r"(?-i:\b[a-h])\s+(?:shows?|showed|demonstrates|reveals|depicts)\b",
    # other pictures: "the previous image", "next panel", "another image", "prior scan"
    r"\b(?:previous|preceding|prior|next|subsequent|earlier|later|adjacent|neighbou?ring|other|another|second|third|fourth|"
    r"remaining|accompanying|corresponding|companion)\s+" + _PICTURE + r"\b",
    # positions of pictures: "left panel", "right-hand image", "upper frame"
    r"\b(?:left|right|upper|lower|top|bottom|middle|central|centre|center)(?:[- ]hand)?\s+(?:images?|panels?|pictures?|frames?|photographs?|photos?|figures?|insets?)\b",
    r"\b(?:images?|panels?|pictures?|frames?)\s+(?:on|at)\s+the\s+(?:left|right|top|bottom)\b",
]
_ABSENT = re.compile("|".join(f"(?:{p})" for p in _ABSENT_PATTERNS), re.I)


def find_absent_image_reference(text: str) -> str | None:
    """The first phrase of ``text`` that refers to a picture that is not shown, else None."""
    m = _ABSENT.search(text or "")
    return m.group(0) if m else None


def check_absent_image_reference(think: str) -> Failure | None:
    hit = find_absent_image_reference(think)
    return None if hit is None else (ABSENT_IMAGE, None, hit)


# --------------------------------------------------------------------------- citing the source
_SOURCE_NOUN = (
    r"(?:caption|legend|context|text|passage|excerpt|article|paper|manuscript|publication|study|authors?|report|"
    r"description|source|information|data|notes?|abstract|write-?up)"
)
_SOURCE_PATTERNS = [
    r"\b(?:sub-?\s?)?captions?\b",
    r"\b(?:figure|image)\s+legends?\b",
    r"\bthe\s+context\b(?!\s+of\b)",
    r"\bthe\s+text\b(?!\s+(?:in|on|within)\s+the\s+(?:image|figure|slide|label|picture))",
    r"\bthe\s+(?:provided|given|accompanying|supplied|supporting|associated|original|source|reference)\s+" + _SOURCE_NOUN + r"\b",
    r"\b(?:the|this)\s+(?:article|paper|manuscript|publication|case\s+report|abstract)\b",
    r"\bauthors?\b",
    r"\bthe\s+(?:investigators|researchers)\b",
    r"\bet\s+al\b",
    r"\b(?:the|this|that|our)\s+study\s+(?:reports?|reported|describes?|described|found|finds|notes?|noted|states?|stated|"
    r"suggests?|suggested|concludes?|concluded|demonstrated|showed\s+that|shows\s+that|authors|investigat\w*|population|"
    r"cohort|participants|design)\b",
    r"\bin\s+(?:this|the|our)\s+study\b",
    r"\bas\s+(?:described|stated|reported|documented)\b",
    r"\bas\s+(?:mentioned|noted|indicated)\s+(?:in|by)\s+the\s+" + _SOURCE_NOUN + r"\b",
    r"\baccording\s+to\s+(?:the|this|these|that)\s+(?:\w+[\s-]+){0,2}?" + _SOURCE_NOUN + r"\b",
    r"\bground[\s-]+truth\b",
    r"\bimage[\s_]+context\b",
    # the answer was supplied
    r"\b(?:given|provided|target|expected|reference|gold|supplied|intended|designated)\s+(?:correct\s+)?answer\b",
    r"\banswer\s+key\b",
    r"\banswer\s+(?:was|is|has\s+been)\s+(?:given|provided|supplied|stated)\b",
    r"\b(?:we|i)\s+(?:are|were|am|was)\s+told\b",
]
_SOURCE = re.compile("|".join(f"(?:{p})" for p in _SOURCE_PATTERNS), re.I)


def find_source_citation(text: str) -> str | None:
    """The first phrase of ``text`` that cites or leaks the source, else None."""
    m = _SOURCE.search(text or "")
    return m.group(0) if m else None


def check_cites_source(think: str) -> Failure | None:
    hit = find_source_citation(think)
    return None if hit is None else (CITES_SOURCE, None, hit)


# --------------------------------------------------------------------------- caption copying
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def longest_shared_run(a: Sequence[str], b: Sequence[str]) -> tuple[int, int]:
    """Length of the longest run of consecutive tokens common to ``a`` and ``b``, and where it
    ends in ``a`` (exclusive index); (0, 0) when nothing is shared."""
    if not a or not b:
        return 0, 0
    pos: dict[str, list[int]] = {}
    for j, w in enumerate(b):
        pos.setdefault(w, []).append(j)
    best, end = 0, 0
    prev: dict[int, int] = {}
    for i, w in enumerate(a):
        cur: dict[int, int] = {}
        for j in pos.get(w, ()):
            k = prev.get(j - 1, 0) + 1
            cur[j] = k
            if k > best:
                best, end = k, i + 1
        prev = cur
    return best, end


def check_copies_caption(think: str, captions: Iterable[str | None], n: int = 12) -> Failure | None:
    tw = words(think)
    best, where = 0, 0
    for cap in captions:
        if cap:
            k, e = longest_shared_run(tw, words(cap))
            if k > best:
                best, where = k, e
    if best >= n:
        return (COPIES_CAPTION, best, "copied: " + " ".join(tw[where - best : where]))
    return None


# --------------------------------------------------------------------------- hedging
_LETTER = r"\(?[A-E]\)?"
_OPT = r"(?i:options?|choices?|answers?)"
_HEDGE_ANY = re.compile(
    _OPT + r"\s+(?:(?i:is|would\s+be|could\s+be|may\s+be|might\s+be|must\s+be)\s+)?" + _LETTER + r"(?:\s*,\s*" + _LETTER + r")*"
    r"\s*(?:(?i:or|and/or)|/)\s*(?:" + _OPT + r"\s+)?" + _LETTER + r"(?![\w-])"
    r"|\b(?i:either)\s+(?:" + _OPT + r"\s+)?" + _LETTER + r"\s+(?i:or)\s+(?:" + _OPT + r"\s+)?" + _LETTER + r"(?![\w-])"
    r"|\([A-E]\)\s*(?:(?i:or|and/or)|/)\s*\([A-E]\)",
)
_HEDGE_FINAL = re.compile(
    r"\beither\b.{1,200}?\bor\b"
    r"|\bcannot\s+(?:be\s+)?(?:determined|distinguished|differentiated|decided|concluded|established|certain|sure)\b"
    r"|\b(?:impossible|not\s+possible|difficult|hard)\s+to\s+(?:say|tell|determine|decide|distinguish|differentiate|choose)\b"
    r"|\bequally\s+(?:likely|plausible|possible|valid|correct)\b"
    r"|\b(?:both|all)\s+(?:of\s+)?(?:these\s+|the\s+)?(?:options|answers|choices)\s+(?:are|could\s+be|may\s+be|might\s+be|seem)\b"
    r"|\b(?:could|may|might)\s+be\s+either\b"
    r"|\buncertain\s+(?:whether|which)\b",
    re.I | re.S,
)


def _final_paragraph(think: str) -> str:
    paras = [p for p in re.split(r"\n\s*\n", think.strip()) if p.strip()]
    if len(paras) > 1:
        return paras[-1]
    sents = sentences(think)
    return " ".join(sents[-2:])


def check_hedged(think: str, answer_text: str | None = None) -> Failure | None:
    text = think or ""
    if answer_text and len(answer_text) > 3:
        text = re.sub(re.escape(answer_text), " the answer ", text, flags=re.I)
    m = _HEDGE_ANY.search(text)
    if m is None:
        m = _HEDGE_FINAL.search(_final_paragraph(text))
    return None if m is None else (HEDGED, None, m.group(0)[:120])


# --------------------------------------------------------------------------- elimination
_ABBREV = re.compile(r"\b(?:Figs?|e\.g|i\.e|et al|vs|approx|No|Dr|Mr|Mrs|Ms|Prof|St|cf|resp|ca|Inc|Ltd)\.$", re.I)
_SENT_END = re.compile(r"(?<=[.!?])[\"”’)\]]*\s+(?=[\"“(\[]?[A-Z0-9])|\n+")


def sentences(text: str) -> list[str]:
    """Split into sentences (newlines end a sentence; common abbreviations do not)."""
    out: list[str] = []
    buf = ""
    pos = 0
    for m in _SENT_END.finditer(text or ""):
        piece = text[pos : m.start()]
        pos = m.end()
        buf = f"{buf} {piece}" if buf else piece
        if "\n" not in m.group(0) and _ABBREV.search(buf.rstrip()):
            continue
        if buf.strip():
            out.append(buf.strip())
        buf = ""
    tail = f"{buf} {text[pos:]}" if buf else (text or "")[pos:]
    if tail.strip():
        out.append(tail.strip())
    return out


_NEGATIVE = re.compile(
    r"\b(?:not|no|none|unlikely|rules?\s+out|ruled\s+out|ruling\s+out|exclude[sd]?|excluding|incorrect|wrong|inconsistent|"
    r"against|less\s+likely|doesn't|don't|isn't|aren't|wouldn't|cannot|can't|fails?|lacks?|lacking|absence|absent|"
    r"without|rather\s+than|instead|eliminat\w+|implausible|inappropriate|irrelevant)\b",
    re.I,
)
_BINARY_TEXTS = {"normal", "abnormal", "yes", "no", "true", "false"}


def check_elimination(
    think: str, options: Sequence[str], gold: str, share: float = 0.5, min_sentences: int = 2
) -> Failure | None:
    letters = "ABCDE"[: len(options)]
    wrong = [(l, o) for l, o in zip(letters, options) if l != gold.upper()]
    if not wrong:
        return None
    wl = "".join(l for l, _ in wrong)
    letter_ref = re.compile(rf"\b(?i:options?|choices?|answers?)\s*\(?[{wl}]\)?(?![\w-])|\([{wl}]\)")
    text_refs = [
        re.compile(r"(?<![\w-])" + re.escape(o.strip()) + r"(?![\w-])", re.I)
        for _, o in wrong
        if len(o.strip()) >= 4 and o.strip().lower() not in _BINARY_TEXTS
    ]
    sents = sentences(think)
    if not sents:
        return None
    elim = [
        s for s in sents if (letter_ref.search(s) or any(r.search(s) for r in text_refs)) and _NEGATIVE.search(s)
    ]
    frac = len(elim) / len(sents)
    if len(elim) >= min_sentences and frac > share:
        return (ELIMINATION, round(frac, 3), f"{len(elim)} of {len(sents)} sentences rule options out")
    return None


# --------------------------------------------------------------------------- all checks
@dataclass(frozen=True)
class TraceCheck:
    """One deterministic check's outcome: ``failure`` is None when it passed; ``info`` says what
    was measured (kept in the ``Check`` record's detail when it passed)."""

    name: str
    failure: Failure | None
    info: str | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def as_check(self) -> Check:
        if self.failure is None:
            return Check(name=self.name, passed=True, detail=self.info)
        code, _, detail = self.failure
        return Check(name=self.name, passed=False, detail=f"{code}: {detail}" if detail else code)


def run_trace_checks(trace: str, question: Question, limits: TraceLimits = TraceLimits()) -> list[TraceCheck]:
    """Every deterministic check on ``trace`` for ``question``, in the documented order."""
    think, letter = split_trace(trace)
    body = think or ""
    panel = question.panel
    captions = [panel.caption, panel.sub_caption]
    run = longest_shared_run(words(body), words(" ".join(c for c in captions if c)))[0] if body else 0
    out = [
        TraceCheck("format", check_format(trace, question.letters)),
        TraceCheck(
            "answer_matches_gold",
            check_answer(trace, question.answer),
            f"answer {letter}" if letter else "not checked: no answer tag",
        ),
        TraceCheck("length", check_length(body, limits.min_chars, limits.max_chars), f"{len(body.strip())} characters"),
        TraceCheck("absent_image_reference", check_absent_image_reference(body)),
        TraceCheck("cites_source", check_cites_source(body)),
        TraceCheck(
            "copies_caption", check_copies_caption(body, captions, limits.copy_ngram), f"longest shared run {run} words"
        ),
        TraceCheck("hedged", check_hedged(body, question.answer_text)),
    ]
    if limits.elimination:
        out.append(
            TraceCheck(
                "elimination",
                check_elimination(body, question.options, question.answer, limits.elimination_share, limits.elimination_min_sentences),
            )
        )
    return out


def first_failure(checks: Sequence[TraceCheck]) -> Failure | None:
    for c in checks:
        if c.failure is not None:
            return c.failure
    return None


# --------------------------------------------------------------------------- assembly
_LABEL_PREFIX = re.compile(
    r"^\s*(?:\*\*)?(?:\d+[.)]\s*)?(?:perception|clinical\s+context|(?:clinical\s+)?interpretation(?:\s+and\s+medical\s+knowledge)?|"
    r"medical\s+knowledge|answer\s+justification|justification|what\s+must\s+be\s+checked|check)\s*(?:\*\*)?\s*[:.\-–—]\s*(?:\*\*)?\s*",
    re.I,
)
_NONE_SECTION = re.compile(r"^\s*(?:none|n/?a|not\s+applicable|-+|—)\s*\.?\s*$", re.I)


def clean_section(text: str | None) -> str:
    """A section's text without a label the writer repeated, with collapsed blank lines."""
    t = (text or "").strip()
    t = _LABEL_PREFIX.sub("", t, count=1).strip()
    if _NONE_SECTION.match(t):
        return ""
    return re.sub(r"\n\s*\n+", "\n", t)


def normalise_letter(answer: str | None) -> str:
    """``'(B).'``, ``'Option b'`` → ``'B'``; anything that is not one letter is returned stripped,
    so that the format check reports it."""
    a = (answer or "").strip()
    m = re.fullmatch(r"(?:option|choice|answer)?\s*[\(\[]?\s*([A-Ea-e])\s*[\)\]]?\s*[.:]?", a, re.I)
    return m.group(1).upper() if m else a


def assemble_trace(
    check: str, perception: str, clinical_context: str, interpretation: str, justification: str, letter: str
) -> str:
    """``<think>\\n…sections…\\n</think>\\n<answer>X</answer>``: the opening (what must be checked),
    then the labelled Perception, Clinical context (left out when empty), Interpretation and medical
    knowledge, and Answer justification sections, one paragraph each."""
    parts = []
    for label, body in zip(SECTION_LABELS, (check, perception, clinical_context, interpretation, justification)):
        body = clean_section(body)
        if not body:
            continue
        parts.append(f"{label}: {body}" if label else body)
    return "<think>\n" + "\n\n".join(parts) + "\n</think>\n<answer>" + normalise_letter(letter) + "</answer>"
