"""Multiple-choice answer extraction, shared by evaluation and the training rewards.

:func:`extract_answer` runs a fixed sequence of stages on a model reply and records which one
fired (``Extraction.method``). The stages, in order (rules and examples: ``docs/answers.md``):

1. reasoning blocks are stripped: ``<think>…</think>`` and ``<analysis>…</analysis>``; with only a
   closing tag (an opening tag pre-filled by the chat template) the text after the last closing
   tag is kept; an unclosed ``<think>`` with no ``<answer>`` after it is a truncated reply;
2. the last ``<answer>…</answer>`` (also an ``<answer>X`` left open by a ``</answer>`` stop string);
3. the last ``\\boxed{…}``;
4. the last "answer is X" / "Answer: X" / "Final answer: X" / "correct option is X" / "答案：X";
5. refusals ("I cannot determine…") end here with no letter;
6. ranked letter formats restricted to ``letters`` (whole-reply letter, first-line letter, bold
   letter, last-line letter, ``(X)``, ``X.``, ``X:``, ``X)``), taken only when one letter is named;
7. the text of exactly one option, in a short reply without negation.

A hedged or multi-letter answer ("A or C", "A/B", "A and C") is invalid, never its first letter;
a letter outside ``letters`` is invalid; there is no random or nearest-option fallback. Invalid
extractions have ``letter=None``, ``method="invalid:<why>"`` and ``invalid_reason=<why>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ANSWER_FORMAT",
    "INVALID_REASONS",
    "METHODS",
    "Extraction",
    "extract_answer",
    "format_ok",
    "strip_reasoning",
]

#: ``invalid_reason`` values (``method`` is ``"invalid:" + reason``, or ``"none"`` for ``no_answer``).
INVALID_REASONS: dict[str, str] = {
    "empty": "the reply is empty or only whitespace",
    "truncated": "an unclosed <think> block with no answer after it (generation cut off)",
    "no_answer": "no stage found an answer",
    "empty_tag": "the last <answer> tag is empty",
    "unparseable_tag": "the last <answer> tag (or \\boxed{}) holds neither a letter nor one option's text",
    "multi_letter": "two or more letters given as the answer (inside a tag, or 'A and C', 'A, C')",
    "hedged": "an answer that hesitates between letters ('A or C', 'either B or D', 'A/B')",
    "out_of_range": "a letter outside the item's valid letters",
    "ambiguous": "several different option letters are named and no stage singles one out",
    "refusal": "the model declines to answer ('I cannot determine…')",
    "none_of_the_above": "the reply rejects every option ('none of the above') and no option says so",
}

#: ``method`` values of a successful extraction.
METHODS: dict[str, str] = {
    "answer_tag": "letter (or option text) inside the last <answer>…</answer>",
    "answer_tag_open": "letter inside a final <answer> whose closing tag is missing (stop string)",
    "boxed": "letter inside the last \\boxed{…}",
    "answer_is": "the last 'answer is X' / 'Answer: X' / 'correct option is X' / 'X is correct' / '答案：X' phrase",
    "regex:whole": "the reply is a letter alone, e.g. 'B', '(b)', '**B.**'",
    "regex:start": "the reply's first line starts with a letter format, e.g. 'B. Pleural effusion'",
    "regex:bold": "a bold letter, e.g. '**C**' or '**C. text**'",
    "regex:end": "the reply's last line is a letter alone",
    "regex:marked": "an option walk-through with exactly one 'X. … – correct' line",
    "regex:paren": "a '(X)' letter, the only letter named in that format",
    "regex:dot": "an 'X.' letter at a line start or after 'option'",
    "regex:colon": "an 'X:' letter at a line start or after 'option'",
    "regex:rparen": "an 'X)' letter at a line start or after 'option'",
    "regex:option": "a letter named as an option, e.g. 'Option C, consolidation, is correct' (before option-text matching)",
    "option_text": "the text of exactly one option (short reply, no negation)",
}


@dataclass(frozen=True)
class Extraction:
    """The outcome of :func:`extract_answer`.

    ``letter``: upper-case letter or ``None``; ``method``: the stage that decided (see
    :data:`METHODS`, or ``invalid:<reason>`` / ``none``); ``invalid_reason``: why there is no
    letter (a key of :data:`INVALID_REASONS`), ``None`` on success; ``candidates``: the letters the
    deciding stage saw (several for multi-letter or hedged answers); ``stripped``: the reply with
    reasoning blocks removed (what the stages after 1 read).
    """

    letter: str | None
    method: str
    invalid_reason: str | None = None
    candidates: tuple[str, ...] = ()
    stripped: str = ""

    @property
    def valid(self) -> bool:
        return self.letter is not None


def _ok(letter: str, method: str, stripped: str, candidates: Sequence[str] | None = None) -> Extraction:
    return Extraction(letter, method, None, tuple(candidates) if candidates else (letter,), stripped)


def _bad(reason: str, stripped: str, candidates: Sequence[str] = ()) -> Extraction:
    assert reason in INVALID_REASONS, reason
    method = "none" if reason == "no_answer" else f"invalid:{reason}"
    return Extraction(None, method, reason, tuple(candidates), stripped)


# --------------------------------------------------------------------------------------------
# the training format reward

#: ``<think>`` with some non-blank text (no nested tags) then exactly one ``<answer>X</answer>``
#: holding one upper-case letter; only whitespace between the blocks and around the whole.
ANSWER_FORMAT = re.compile(
    r"\A\s*<think>(?!\s*</think>)(?:(?!</?think>|</?answer>).)*</think>\s*<answer>\s*(?P<letter>[A-Z])\s*</answer>\s*\Z",
    re.S,
)


def format_ok(text: str | None, letters: str | None = None) -> bool:
    """True when ``text`` is ``<think>…</think>`` then exactly one ``<answer>X</answer>`` and
    nothing else but whitespace (the dataset's trace format; a format reward for GRPO).

    With ``letters`` the letter must be one of them."""
    if not text:
        return False
    m = ANSWER_FORMAT.match(text)
    return bool(m) and (letters is None or m.group("letter") in letters.upper())


# --------------------------------------------------------------------------------------------
# stage 1: reasoning blocks

_CLOSE_RE = re.compile(r"</(think|analysis)\s*>", re.I)
_OPEN_RE = re.compile(r"<(think|analysis)\s*>", re.I)


def strip_reasoning(text: str) -> tuple[str, bool]:
    """Remove reasoning blocks; return ``(stripped, truncated)``.

    Complete blocks are cut out wherever they are; a closing tag with no opening tag before it
    (an opening tag pre-filled by the chat template) makes everything before it reasoning. An opening tag with no closing tag after it is a block cut off by
    the token limit: what follows it is reasoning too, unless an ``<answer>`` tag appears in it,
    in which case the reply resumes at that tag. ``truncated`` is True when an unclosed block
    has no ``<answer>`` after it.
    """
    while True:
        close = _CLOSE_RE.search(text)
        if close is None:
            break
        opens = [m for m in _OPEN_RE.finditer(text, 0, close.start())]
        if opens:  # a complete block: cut it out, keep what is around it
            text = text[: opens[-1].start()] + "\n" + text[close.end():]
        else:  # a closing tag alone: the opening tag was in the prompt; drop all before it
            text = text[close.end():]
    opened = _OPEN_RE.search(text)
    if opened:
        rest = text[opened.end():]
        ans = re.search(r"<answer\s*>", rest, re.I)
        if ans is None:
            return text[: opened.start()].strip(), True
        text = text[: opened.start()] + rest[ans.start():]
    return text.strip(), False


# --------------------------------------------------------------------------------------------
# helpers

# a letter is a whole token: no letter or digit on either side (\b fails next to CJK text)
_NB = r"(?<![A-Za-z0-9])"
_NA = r"(?![A-Za-z0-9])"
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:can\s*not|cannot|can't|can’t|am\s+unable\s+to|'m\s+unable\s+to|’m\s+unable\s+to|am\s+not\s+able\s+to)\s+"
    r"(?:determine|answer|tell|say|provide|identify|assess|view|see|access|interpret|make|give|choose|select|be\s+sure)"
    r"|(?:unable|not\s+possible|impossible)\s+to\s+(?:determine|answer|tell|identify|say)"
    r"|cannot\s+be\s+determined|can't\s+be\s+determined|not\s+enough\s+information|insufficient\s+information"
    r"|i'm\s+sorry|i\s+am\s+sorry|as\s+an\s+ai\b)",
    re.I,
)
_NOTA = re.compile(r"\bnone\s+of\s+(?:the\s+)?(?:above|these|the\s+options|the\s+choices|the\s+listed)\b", re.I)
_NEGATION = re.compile(r"\b(?:not|no|never|unlikely|excluded?|rule[ds]?\s+out|ruling\s+out|rather\s+than|instead\s+of|without|absent|incorrect|wrong)\b", re.I)
_WORD = re.compile(r"[a-z0-9]+")


def _norm(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).lower()
    return " ".join(_WORD.findall(s))


def _letter_set(letters: str) -> str:
    return "".join(dict.fromkeys(letters.upper()))


def _options_map(options: Sequence[str] | None, letters: str) -> dict[str, str]:
    if not options:
        return {}
    return {l: o for l, o in zip(letters, options) if o and str(o).strip()}


def _option_hits(text: str, opts: dict[str, str]) -> list[str]:
    """Letters whose option text occurs in ``text`` as whole words; an option that only occurs
    inside a longer matching option ("effusion" inside "pleural effusion") does not count."""
    nt = f" {_norm(text)} "
    hits = {l: _norm(o) for l, o in opts.items() if _norm(o) and f" {_norm(o)} " in nt}
    keep = []
    for l, o in hits.items():
        inside_longer = any(o != o2 and f" {o} " in f" {o2} " for l2, o2 in hits.items() if l2 != l)
        if not inside_longer:
            keep.append(l)
    return keep


# "A or C", "A/B", "either B or D", "A and C", "A, C", "A & C" (letters possibly in parentheses/bold)
_L = r"\**\(?\s*([A-Z])\s*\)?\**"
_LIST_RE = re.compile(
    rf"{_NB}(either\s+(?:option\s+|choice\s+)?)?{_L}{_NA}\s*(,|/|&|\+|\bor\b|\band\b|\bor\s+maybe\b|\band/or\b)\s*(?:options?\s+|choices?\s+)?{_L}{_NA}",
)


def _letter_list(text: str, valid: str) -> tuple[str, tuple[str, ...]] | None:
    """Find a hedge / multi-letter list whose letters are (upper-case) option letters.

    Returns ``(reason, letters)`` or None."""
    for m in _LIST_RE.finditer(text):
        a, sep, b = m.group(2), m.group(3).lower(), m.group(4)
        if a == b or a not in valid or b not in valid:
            continue
        # 'A and B' where 'A' is the article ("a and b" is caught by case); 'I' is never a letter here
        reason = "hedged" if (m.group(1) or "or" in sep or sep == "/") else "multi_letter"
        return reason, (a, b)
    return None


# --------------------------------------------------------------------------------------------
# parsing the content of a tag / box


_PREFIX = re.compile(
    r"^(?:(?:the\s+)?(?:final\s+|correct\s+|best\s+)?(?:answer|option|choice|letter)\b\s*(?:is\b|:|=|-)?\s*"
    r"|答案\s*(?:是|为|:|：)?\s*|选项\s*|选\s*)",
    re.I,
)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}")


def _clean_content(s: str) -> str:
    s = _TEXT_CMD.sub(r"\1", s)
    s = s.replace("$", "").strip()
    s = re.sub(r"^[\s*_`\"'“”‘’{}]+|[\s*_`\"'“”‘’{}]+$", "", s)
    return s.strip()


def _parse_content(raw: str, valid: str, opts: dict[str, str]) -> tuple[str | None, str | None, tuple[str, ...]]:
    """Read an answer channel's content. Returns ``(letter, invalid_reason, candidates)``;
    ``(None, None, ())`` when it is neither a letter nor an option (caller decides)."""
    boxed = _last_boxed(raw)
    s = _clean_content(boxed if boxed is not None else raw)
    if not s:
        return None, "empty_tag", ()
    s = _PREFIX.sub("", s, count=1).strip()
    s = _clean_content(s)
    if not s:
        return None, "empty_tag", ()
    # exactly one option's whole text first: "B cell lymphoma" is an option, not the letter B
    if opts:
        exact = [l for l, o in opts.items() if _norm(o) == _norm(s)]
        if len(exact) == 1:
            return exact[0], None, (exact[0],)
    # several letters: "A, C", "A and C", "AC", "A/C", "A or C"
    multi = re.fullmatch(r"\(?([A-Za-z])\)?(?:\s*(?:,|/|&|\+|;|\s|\bor\b|\band\b|\band/or\b)\s*\(?([A-Za-z])\)?)+\.?", s)
    if multi and len(s) <= 20:
        found = tuple(dict.fromkeys(re.findall(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])", s.replace("and", " ").replace("or", " "))))
        if len(found) >= 2:
            found = tuple(x.upper() for x in found)
            return None, ("hedged" if re.search(r"\bor\b|/", s) else "multi_letter"), found
    if re.fullmatch(r"[A-Z]{2,5}", s) and all(ch in valid for ch in s):
        return None, "multi_letter", tuple(s)
    paren = re.fullmatch(r"(?:[(\[]\s*[A-Za-z]\s*[)\]]\s*[,/&+;]?\s*){2,}\.?", s)
    if paren:
        return None, "multi_letter", tuple(dict.fromkeys(x.upper() for x in re.findall(r"[A-Za-z]", s)))
    # a letter first: "B", "b", "(B)", "B.", "B)", "B: text", "B. text", "B text"
    m = re.match(r"^\(?\[?([A-Za-z])\]?\)?(?:\s*[.:)\]\-–]\s*|\s+|$)(.*)$", s, re.S)
    if m:
        letter, rest = m.group(1), m.group(2).strip()
        up = letter.upper()
        article = letter in "aAI" and rest and re.match(r"^[a-z]", rest) and not re.match(r"^[A-Za-z][.:)\]]", s)
        if not article:
            lst = _letter_list(s.upper() if len(s) <= 12 else s, valid)
            if lst:
                return None, lst[0], lst[1]
            # "A. Pleural effusion B. Pneumothorax": several lettered options
            more = {x for x in re.findall(r"(?<![A-Za-z0-9])([A-Z])[.)](?:\s|$)", rest) if x in valid and x != up}
            if more:
                return None, "multi_letter", (up, *sorted(more))
            # "B. text": the letter decides even when the text is another option's (no cross-check)
            if up not in valid:
                if len(s) <= 3 or re.match(r"^\(?[A-Za-z]\)?\s*[.:)]", s):
                    return None, "out_of_range", (up,)
            else:
                return up, None, (up,)
    lst = _letter_list(s, valid)
    if lst:
        return None, lst[0], lst[1]
    if opts:
        n = _norm(s)
        exact = [l for l, o in opts.items() if _norm(o) == n]
        if len(exact) == 1:
            return exact[0], None, (exact[0],)
        hits = _option_hits(s, opts)
        if len(hits) == 1 and not _NEGATION.search(s):
            return hits[0], None, (hits[0],)
    return None, None, ()


# --------------------------------------------------------------------------------------------
# stages 2-4: answer channels

_ANSWER_OPEN = re.compile(r"<answer\s*>", re.I)
_ANSWER_CLOSE = re.compile(r"</answer\s*>", re.I)


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` whose braces close (nested braces allowed), or None."""
    starts = [m.end() for m in re.finditer(r"\\boxed\s*\{", text)]
    if not starts:
        return None
    closing: dict[int, int] = {}  # position of "{" -> position of its "}" (one linear pass)
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    for start in reversed(starts):
        end = closing.get(start - 1)
        if end is not None:
            return text[start:end]
    return None


# "answer is X", "Answer: X", "Final answer: X", "correct option is X", "答案：X", "I choose X".
# The letter group allows lower case; a lower-case letter is kept only when it cannot be a word.
_ANSWER_IS = re.compile(
    r"(?:\b(?:the\s+)?(?:final\s+|correct\s+|best\s+|right\s+|most\s+(?:likely|appropriate|accurate)\s+|only\s+)?"
    r"(?:answer|option|choice|response)(?:\s+choice)?\s*(?:is|would\s+be|should\s+be|will\s+be|must\s+be|=|:|-|：|→|->|=>)\s*"
    r"(?:(?:most\s+likely|likely|probably|definitely|clearly|therefore|thus)\s+)?"
    r"|\b(?:i\s+(?:would\s+|will\s+)?(?:choose|select|pick|go\s+with)|i'd\s+(?:choose|select|pick|go\s+with)|my\s+(?:final\s+)?(?:answer|choice)\s*(?:is|:))\s*"
    r"|(?:正确)?答案\s*(?:是|为|應為|应为|:|：)\s*|选择?\s*)"
    r"[:：]?\s*(?P<either>either\s+)?(?:\*\*|__)?\s*(?:(?:option|choice|letter)\s+)?(?:\*\*)?\s*"
    r"(?P<open>[(\[])?[ \t]*(?P<letter>[A-Za-z])(?![A-Za-z0-9])(?:[ \t]*(?P<close>[)\]]))?(?=(?P<after>[^\n]{0,80}))",
    re.I,
)


# words that never follow the article "a": "The answer is A because …" names the letter
_NOT_AFTER_ARTICLE = re.compile(
    r"^\s+(?:because|since|as|given|due|which|that|this|is|was|would|will|should|fits|matches|with|for|here|"
    r"and|but|then|considering|based|according|in|on|from|the|—|–|-)\b", re.I
)
# "B is correct", "Option (B) is the correct answer" (upper-case letter only; "incorrect" never matches)
_IS_CORRECT = re.compile(
    r"(?<![A-Za-z0-9])(?:(?:option|choice)\s+)?(?:\*\*)?\(?(?P<letter>[A-Z])\)?(?:\*\*)?[ \t]+is[ \t]+(?:the[ \t]+)?(?:correct|right|best)"
    r"(?:[ \t]+(?:answer|option|choice))?(?![A-Za-z])(?=(?P<after>[^\n]{0,80}))"
)
# "… or possibly C", "… or C" later in the same sentence as the answer
_HEDGE_AFTER = re.compile(
    r"^[^.;\n]{0,50}?\b(?:or|and/or|versus|vs\.?)\s+(?:[a-z]+\s+){0,2}?(?:options?\s+|choices?\s+)?\(?([A-Z])\)?(?![A-Za-z0-9])"
)

# "Answer: B. But C is also possible."
_HEDGE_NEXT = re.compile(
    r"^[^\n]{0,60}?\b(?:but|although|though|however,?)\s+(?:options?\s+|choices?\s+)?\(?([A-Z])\)?\s+"
    r"(?:is|could|may|might|would|can)\s+(?:also|be\s+possible|possibly|not\s+be\s+excluded|not\s+be\s+ruled\s+out)",
    re.I,
)


def _answer_is(text: str, valid: str, opts: dict[str, str]) -> tuple[str | None, str | None, tuple[str, ...]] | None:
    """The last usable "answer is X" / "X is correct" phrase.

    Returns ``(letter, invalid_reason, candidates)`` or None when there is no such phrase."""
    found = None
    for m in _ANSWER_IS.finditer(text):
        letter = m.group("letter")
        after = m.group("after") or ""
        bracketed = bool(m.group("open") or m.group("close"))
        tail_empty = re.match(r"^\s*(?:\*\*|__)?\s*(?:[.,;:!)\]]|$|\s*[-–—])", after) is not None
        if letter.islower():
            # "the answer is a mass" is a word, "answer: b." or "(b)" is a letter
            if not (bracketed or (tail_empty and not re.match(r"^\s+[a-z]", after))):
                continue
        elif not bracketed and re.match(r"^\s+[a-z]", after):
            # a capital then a lower-case word: maybe an option's text ("B cell lymphoma"), maybe
            # the article/pronoun ("A pleural effusion", "I think"), maybe "B because …"
            tail = _norm(letter + after)
            named = sorted((l for l, o in opts.items() if _norm(o) and (tail + " ").startswith(_norm(o) + " ")),
                           key=lambda l: -len(_norm(opts[l])))
            if named:
                found = (m.start(), named[0], after, bool(m.group("either")))
                continue
            opt = opts.get(letter)
            if letter in "AI" and not (opt and _norm(after).startswith(_norm(opt))):
                # "A because …" is the letter; "A pleural …" the article; "I would …" the pronoun
                if letter == "I" or not _NOT_AFTER_ARTICLE.match(after):
                    continue
        found = (m.start(), letter.upper(), after, bool(m.group("either")))
    for m in _IS_CORRECT.finditer(text):
        if found is None or m.start() > found[0]:
            found = (m.start(), m.group("letter"), m.group("after") or "", False)
    if found is None:
        return None
    pos, letter, after, either = found
    # a hedge or a list at the phrase: "answer is A or C", "answer is either B or D", "B, or maybe C"
    lst = _letter_list(text[pos:pos + 80].split("\n", 1)[0], valid)
    if lst:
        return None, lst[0], lst[1]
    h = _HEDGE_AFTER.match(after) or _HEDGE_NEXT.match(after)
    if h and h.group(1) in valid and h.group(1) != letter:
        return None, "hedged", (letter, h.group(1))
    if either:
        return None, "hedged", (letter,)
    if letter not in valid:
        return None, "out_of_range", (letter,)
    return letter, None, (letter,)


# --------------------------------------------------------------------------------------------
# stage 6: ranked letter formats


def _regex_stage(text: str, valid: str, opts: dict[str, str]) -> Extraction | None:
    """Stage 6 (and the strong forms of stage 7): ranked letter formats, then exact option lines."""
    body = text.strip()
    # whole reply is a letter: "B", "b", "(B)", "**B.**", "B)", "Option D"
    m = re.fullmatch(r"[\s*_`]*(?:(?:option|choice|answer|letter)\s*[:\-]?\s*)?[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:]?[\s*_`]*", body, re.I)
    if m:
        up = m.group(1).upper()
        if up in valid:
            return _ok(up, "regex:whole", text)
        return _bad("out_of_range", text, (up,))

    lines = [l.strip() for l in body.splitlines() if l.strip()]
    first = lines[0] if lines else ""
    # option walk-through with exactly one line marked correct: "D. Cardiomegaly – correct"
    marked = [m.group(1) for l in lines if (m := re.match(r"^(?:[-•*]\s*)?\(?([A-Z])[.:)]", l))
              and re.search(r"(?<!in)correct\W*$|✓|✔", l, re.I) and not re.search(r"\bnot\s+correct\W*$", l, re.I)]
    if len(marked) == 1 and marked[0] in valid:
        return _ok(marked[0], "regex:marked", text)
    # first line starts with a letter format ("B. Pleural effusion", "**(C)** ...", "B) ...", "D - text")
    m = re.match(r"^(?:[-•>]\s*)?[*_]{0,2}\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?=\s*(?:[.:)]|[-–—]\s)))", first)
    listed = {x.group(1) for l in lines if (x := re.match(r"^(?:[-•*]\s*)?\(?([A-Z])[.:)]", l))}
    if m and len(listed) < 2 and not (m.group(3) == "I" and "I" not in valid):
        up = next(g for g in m.groups() if g)
        if up in valid:
            if not _letter_list(first, valid):
                return _ok(up, "regex:start", text)
        elif len(first) < 80:
            return _bad("out_of_range", text, (up,))
    # "B Pneumothorax": a bare letter followed by that option's text
    m = re.match(r"^([A-Z])\s+(.+)$", first)
    if m and m.group(1) in valid and opts.get(m.group(1)) and _norm(m.group(2)).startswith(_norm(opts[m.group(1)])):
        return _ok(m.group(1), "regex:start", text)
    # bold letter: "**C**", "**C. Pleural effusion**", "**(C)**"
    bold = [m.group(1) or m.group(2) for m in re.finditer(r"\*\*\s*(?:\(([A-Z])\)|([A-Z])(?=\s*(?:[.:)]|\*\*)))", body)]
    if bold:
        inside = [b for b in bold if b in valid]
        if len(set(inside)) == 1:
            return _ok(inside[0], "regex:bold", text)
        if len(set(inside)) > 1:
            return _bad("ambiguous", text, tuple(dict.fromkeys(inside)))
    if len(lines) > 1:
        # last line is a letter alone, or exactly one option's text
        m = re.fullmatch(r"[\s*_`]*[(\[]?\s*([A-Z])\s*[)\]]?\s*\.?[\s*_`]*", lines[-1])
        if m and m.group(1) in valid:
            return _ok(m.group(1), "regex:end", text)
        last = _norm(lines[-1])
        exact = [l for l, o in opts.items() if _norm(o) == last]
        if len(exact) == 1:
            return _ok(exact[0], "option_text", text)

    lst = _letter_list(body, valid)
    if lst:
        return _bad(lst[0], text, lst[1])

    # bracketed / punctuated letters at a line start or after "option", "so", "it is"…; one letter only
    lead = (r"(?:^[ \t]*(?:[-•>*]\s*)?|\b(?:option|choice|answer|letter)\s+|[:;,]\s+"
            r"|\b(?:therefore|thus|hence|so)[,]?\s+|\bit\s+is\s+|\bit's\s+|[-–—]\s+)")
    formats = (
        ("paren", re.compile(r"\(([A-Z])\)")),
        ("dot", re.compile(rf"{lead}([A-Z])\.(?!\w)", re.M | re.I)),
        ("colon", re.compile(rf"{lead}([A-Z]):", re.M | re.I)),
        ("rparen", re.compile(rf"{lead}([A-Z])\)", re.M | re.I)),
        # "Option C, consolidation, is correct": a named option outranks a match on option text
        ("option", re.compile(r"\b(?:option|choice)\s+\(?([A-Z])\)?(?!\w)", re.I)),
    )
    for name, rx in formats:
        hits = [m.group(1) for m in rx.finditer(body) if m.group(1).isupper()]
        if not hits:
            continue
        inside = [h for h in hits if h in valid]
        if len(set(hits)) > 1:
            return _bad("ambiguous", text, tuple(dict.fromkeys(hits)))
        if inside:
            return _ok(inside[0], f"regex:{name}", text)
        return _bad("out_of_range", text, tuple(dict.fromkeys(hits)))
    return None


def _option_text_stage(text: str, opts: dict[str, str]) -> Extraction | None:
    """Stage 7: the text of exactly one option."""
    if not opts:
        return None
    n = _norm(text)
    exact = [l for l, o in opts.items() if _norm(o) == n]
    if len(exact) == 1:
        return _ok(exact[0], "option_text", text)
    # the reply opens with an option's text then punctuation: "No, the bones are intact."
    lead = [l for l, o in opts.items() if _norm(o) and re.match(rf"^[\s*_]*{re.escape(o.strip())}[\s*_]*(?:[,.;:!]|$)", text.strip(), re.I)]
    if len(lead) == 1:
        return _ok(lead[0], "option_text", text)
    hits = _option_hits(text, opts)
    if len(hits) != 1:
        if len(hits) > 1:
            return _bad("ambiguous", text, tuple(hits))
        return None
    opt_words = len(_norm(opts[hits[0]]).split())
    # length guard: a long reply that mentions one option's words is not an answer to trust
    if len(n.split()) > opt_words + 15 or _NEGATION.search(text):
        return None
    return _ok(hits[0], "option_text", text)


# --------------------------------------------------------------------------------------------
# public entry


def extract_answer(text: str | None, letters: str = "ABCDE", options: Sequence[str] | None = None) -> Extraction:
    """Extract the chosen option letter from a model reply (stages: module docstring).

    ``letters`` are the item's valid letters (e.g. ``"ABCD"`` for four options); ``options`` the
    option texts in letter order (enables the option-text stages). Never guesses: anything
    unclear returns ``letter=None`` with an ``invalid_reason``.
    """
    valid = _letter_set(letters)
    if text is None or not str(text).strip():
        return _bad("empty", "")
    text = unicodedata.normalize("NFKC", str(text))
    opts = _options_map(options, valid)
    stripped, truncated = strip_reasoning(text)
    if truncated and not stripped:
        return _bad("truncated", stripped)

    # stage 2: last <answer>…</answer>, or a final open <answer> (stop string ate </answer>)
    # (positions found in one pass each: a pairing regex would rescan the rest of the text for
    # every unclosed <answer>, which is quadratic on degenerate replies)
    content, method = None, None
    opens = list(_ANSWER_OPEN.finditer(stripped))
    closes = list(_ANSWER_CLOSE.finditer(stripped))
    if opens:
        last_close = closes[-1] if closes else None
        if last_close is None or opens[-1].start() > last_close.start():
            content, method = stripped[opens[-1].end():], "answer_tag_open"
            if "<" in content:
                content = content.split("<", 1)[0]
        else:
            before = [m for m in opens if m.end() <= last_close.start()]
            if before:
                content, method = stripped[before[-1].end():last_close.start()], "answer_tag"
    if content is not None:
        letter, why, cands = _parse_content(content, valid, opts)
        if letter:
            return _ok(letter, method, stripped, cands)
        if why:
            return _bad(why, stripped, cands)
        # free text inside the tag: "The answer is C because…"
        inner = _answer_is(content, valid, opts)
        if inner is not None:
            letter, why, cands = inner
            return _ok(letter, method, stripped, cands) if letter else _bad(why, stripped, cands)
        if _REFUSAL.search(content):
            return _bad("refusal", stripped)
        if _NOTA.search(content):
            return _bad("none_of_the_above", stripped)
        return _bad("unparseable_tag", stripped)

    if not stripped:
        return _bad("no_answer", stripped)

    # stage 3: last \boxed{…}
    boxed = _last_boxed(stripped)
    if boxed is not None:
        letter, why, cands = _parse_content(boxed, valid, opts)
        if letter:
            return _ok(letter, "boxed", stripped, cands)
        return _bad(why or "unparseable_tag", stripped, cands)

    # stage 4: "answer is X"
    said = _answer_is(stripped, valid, opts)
    if said is not None:
        letter, why, cands = said
        return _ok(letter, "answer_is", stripped, cands) if letter else _bad(why, stripped, cands)

    # stage 5: refusals and "none of the above"
    if _REFUSAL.search(stripped):
        return _bad("refusal", stripped)
    if _NOTA.search(stripped) and not any(_NOTA.search(o) for o in opts.values()):
        return _bad("none_of_the_above", stripped)

    # stage 6: letter formats
    found = _regex_stage(stripped, valid, opts)
    if found is not None:
        return found
    # stage 7: option text
    found = _option_text_stage(stripped, opts)
    if found is not None:
        return found
    return _bad("no_answer", stripped)
