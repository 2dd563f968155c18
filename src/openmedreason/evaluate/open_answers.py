"""Scoring of open (free-text) answers: the VQA sets' open questions.

The headline figure is a normalised exact match: the answer is taken from the reply (last
``<answer>`` tag, else ``\\boxed{}``, else an "answer is …" / "Answer: …" line, else the whole
reply when it is short), then both it and the gold answer are lower-cased, stripped of
punctuation and articles, and compared; yes/no synonyms are mapped first. An optional LLM judge
(``prompts/open_judge.md``) grades the same answers and is reported separately, never mixed
into the exact-match figure.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, Field

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"\banswer\s*(?::|is\b:?)\s*(.+)", re.I)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
#: a short reply may be taken whole when it has no tag (words)
SHORT_REPLY_WORDS = 12

YES = frozenset({"yes", "y", "true", "correct", "present", "positive", "yes it is", "yes there is", "affirmative"})
NO = frozenset({"no", "n", "false", "incorrect", "absent", "negative", "not present", "no it is not", "no there is not", "none"})


@dataclass(frozen=True)
class OpenExtraction:
    text: str | None
    method: str


def strip_think(text: str) -> str:
    """The reply without its reasoning blocks (the same rule as the multiple-choice extractor)."""
    from openmedreason.bench.answers import strip_reasoning

    return strip_reasoning(text)[0]


def extract_open(text: str | None) -> OpenExtraction:
    """The free-text answer of a reply and the rule that found it."""
    if not text or not text.strip():
        return OpenExtraction(None, "none")
    body = strip_think(text)
    tags = _ANSWER_TAG.findall(body)
    if tags:
        ans = tags[-1].strip()
        return OpenExtraction(ans or None, "answer_tag" if ans else "invalid:empty_tag")
    boxed = _BOXED.findall(body)
    if boxed:
        return OpenExtraction(boxed[-1].strip() or None, "boxed")
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = _ANSWER_IS.search(ln)
        if m and m.group(1).strip():
            return OpenExtraction(m.group(1).strip().rstrip("."), "answer_is")
    if body and len(body.split()) <= SHORT_REPLY_WORDS:
        return OpenExtraction(body, "short_reply")
    return OpenExtraction(None, "none")


def normalise(text: str | None) -> str:
    """Lower case, punctuation → spaces, articles removed, whitespace collapsed; yes/no synonyms
    mapped to ``yes`` / ``no``."""
    if not text:
        return ""
    t = text.lower().translate(_PUNCT)
    t = _ARTICLES.sub(" ", t)
    t = " ".join(t.split())
    if t in YES:
        return "yes"
    if t in NO:
        return "no"
    return t


def exact_match(answer: str | None, gold: str) -> bool:
    """Normalised exact match; an empty answer never matches."""
    a = normalise(answer)
    return bool(a) and a == normalise(gold)


# ------------------------------------------------------------------------------------ LLM judge
class OpenVerdict(BaseModel):
    correct: bool
    reason: str = Field(default="", max_length=400)


def judge_open(engine: Any, rows: Sequence[tuple[str, str, str | None]]) -> list[dict[str, Any]]:
    """Grade (question, gold, candidate) triples with the LLM judge. Returns, per row,
    ``{"correct": bool|None, "error": reason|None, "model": …}``; an empty candidate is graded
    False without a call."""
    from openmedreason.llm import LLMRequest, Message
    from openmedreason.prompts import load

    tpl = load("open_judge")
    todo, out = [], [dict(correct=None, error=None, model=None) for _ in rows]
    for i, (q, gold, cand) in enumerate(rows):
        if not cand or not cand.strip():
            out[i]["correct"] = False
            continue
        system, user = tpl.render(question=q, reference=gold, candidate=cand)
        todo.append((i, LLMRequest(step="judge", template=tpl.name, template_version=tpl.version,
                                   messages=[Message.system(system), Message.user(user)], response_model=OpenVerdict,
                                   overrides={"temperature": 0.0})))
    if todo:
        results = engine.complete_many([r for _, r in todo])
        for (i, _), r in zip(todo, results):
            out[i]["model"] = r.model
            if r.ok and r.parsed is not None:
                out[i]["correct"] = bool(r.parsed.correct)
            else:
                out[i]["error"] = r.reason or "judge.error"
    return out
