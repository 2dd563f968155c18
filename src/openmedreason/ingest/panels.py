"""Compound figures: split a caption into per-panel sub-captions and read panel letters from
figure mentions ("Fig. 2B–D").

Captions
    :func:`split_caption` finds panel labels and returns ``[(letter, sub_caption), …]`` or ``[]``
    when the figure is not compound. Label forms:

    * parenthesised (the common form): ``(A) …``, ``( A ) …`` (eLife text with spaces),
      ``(a) …``, ``(A–C) …``, ``(A, B) …``, ``(A and B) …``, ``(A–B, E–F) …``;
    * bare upper-case letters after a sentence or clause boundary: ``A, …`` / ``A: …``
      (PLOS and SciELO "<bold>A</bold>, SDS-PAGE…", "of A, THL and B, MmPPOX"), and
      ``A. …`` only at a sentence start and before a capitalised word (so that ``E. coli``
      is not a label);
    * trailing labels, where the letter follows the text it labels ("… in males and females
      (A), but had no effect … in males (B).", EHP style). The style is that of the first "A"
      label: a label followed by punctuation, "and" or "or" is trailing. Text after the last
      trailing label belongs to no panel.

    Against false positives: the labels must form a chain that starts at A and never skips a
    letter (``(T)`` for "targeting" after ``(B)`` is ignored), keep the case of the first label,
    and name at least two distinct letters. Text spanning letters ("(A–C) shared text") goes to
    every letter it names; a letter named by several labels gets their texts joined with a space
    (eLife: "(C–E) Venn diagrams showing (C) …, (D) …"). Text before the first label is the
    figure-level preamble and belongs to no panel (the full caption stays on the record).
    In the leading style a parenthesised letter followed by punctuation or "and" ("for PDS (A)
    and PhenDC3 (B).") is a back-reference inside a sub-caption, not a new label.

Mentions
    :func:`mention_panels` reads the panel letters of one mention string: "Figure 2B" → ``[B]``,
    "Fig. 2B–D" → ``[B, C, D]``, "Figure 1A,C" → ``[A, C]``, "Figure 8b and c" → ``[B, C]``,
    "Figure 3—figure supplement 1B" → ``[B]``, "Figs. 2B and 3C" → ``[B, C]``, or with
    ``figure="Figure 3"`` → ``[C]``. Letters are upper-cased, in order of first appearance.
"""

from __future__ import annotations

import re

__all__ = ["split_caption", "mention_panels", "expand_letters", "tail_letters", "figure_number"]

_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DASH = "\\-\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_L = r"[A-Za-z]"
_ONE = rf"{_L}(?![A-Za-z0-9])"  # a single letter, not the start of a word or "B12"
_RANGE = rf"{_ONE}(?:\s*[{_DASH}]\s*{_ONE})?"
_SEP = r"\s*(?:,\s*(?:and\s+)?|&|\band\b|\bor\b)\s*"

# "(A)", "( A )", "(A–C)", "(A, B)", "(A and B)", "(A–B, E–F)"
_PAREN = re.compile(rf"\(\s*({_RANGE}(?:{_SEP}{_RANGE})*)\s*\)")
# bare "A," / "A:" / "A–C," label (upper case only)
_BARE = re.compile(rf"([A-Z](?:\s*[{_DASH}]\s*[A-Z])?)\s*([,:.])(?=\s)")
# necessary conditions for a bare label whose letters include A ("A, …", "A–C: …", "C–A, …"):
# an "A" followed by punctuation or a dash, or a dash followed by "A" and punctuation
_BARE_A1 = re.compile(rf"A\s*[,:.{_DASH}]")
_BARE_A2 = re.compile(rf"[{_DASH}]\s*A\s*[,:.]")
_BARE_PREV_WORDS = frozenset({"of", "and", "in", "for", "with", "on", "to", "from", "at", "by", "or"})
_LETTER_RUN = re.compile(rf"{_RANGE}(?:{_SEP}{_RANGE})*")
_ONE_LETTER = re.compile(rf"(?<![A-Za-z])({_L})(?![A-Za-z])(?:\s*[{_DASH}]\s*({_L})(?![A-Za-z]))?")
_TRAILING_NEXT_RE = r"\s*(?:$|[.,;:)\]]|(?:and|or)\b)"
_TRAILING_NEXT = re.compile(_TRAILING_NEXT_RE)
# _PAREN, plus group 2 (set, possibly empty, when _TRAILING_NEXT matches right after the label):
# one scan instead of a second match per label
_PAREN_NEXT = re.compile(rf"{_PAREN.pattern}(?=({_TRAILING_NEXT_RE})?)")
_SENTENCE_END = re.compile(r"[.;:!?]\s")

# a figure number with the letters glued to it: "2B", "2B–D", "5a,b", "8b and c", "2a, b, c and d"
_SEGMENT = re.compile(
    rf"(\d+)((?:{_ONE}|[ \u00a0][A-Z](?![A-Za-z0-9]))(?:\s*[{_DASH}]\s*{_ONE})?(?:{_SEP}{_RANGE})*)?"
)
# letters right after an xref that ends with the figure number: "Figure 2</xref>B–D)"
_TAIL = re.compile(rf"^({_RANGE}(?:{_SEP}{_RANGE})*)")
_LAST_NUMBER = re.compile(r"(\d+)\D*$")
_DIGIT_LETTER = re.compile(r"\d[ \u00a0]?[A-Za-z]")


def expand_letters(run: str) -> list[str]:
    """``"A–C, E"`` → ``[A, B, C, E]`` (upper case, order kept, no duplicates, ranges ≤ 26)."""
    if len(run) == 1:  # the common single letter, without the regex scan
        return [run.upper()] if run in _ASCII_LETTERS else []
    out: list[str] = []
    first_case: bool | None = None
    for m in _ONE_LETTER.finditer(run):
        a, b = m.group(1), m.group(2)
        if first_case is None:
            first_case = a.isupper()
        elif a.isupper() != first_case:
            break  # "B, a model …": a change of case ends the run
        a = a.upper()
        if b is not None:
            b = b.upper()
            if b < a:
                letters = [a, b]
            else:
                letters = [chr(c) for c in range(ord(a), ord(b) + 1)]
        else:
            letters = [a]
        for x in letters:
            if x not in out:
                out.append(x)
    return out


def figure_number(label: str | None) -> str | None:
    """The last number of a figure label: "Figure 2." → "2", "Figure 6—figure supplement 1." → "1"."""
    if not label:
        return None
    m = _LAST_NUMBER.search(label)
    return m.group(1) if m else None


def mention_panels(text: str, figure: str | None = None) -> list[str]:
    """Panel letters named by one figure mention (see the module docstring).

    ``figure`` (a label such as "Figure 3" or a number "3") keeps only the letters attached to
    that figure's number when the mention names several figures; when no number in the mention
    matches, the letters of every figure in it are returned.
    """
    if not text:
        return []
    text = text.strip()
    if not _DIGIT_LETTER.search(text):
        if any(map(str.isdigit, text)):
            return []  # "Fig. 2", "Figure 2—figure supplement 1": no letter glued to a number
        m = _LETTER_RUN.fullmatch(text)  # a bare "B" or "B–D" xref
        return expand_letters(m.group(0)) if m else []
    want = figure_number(figure) if figure is not None else None
    everything: list[str] = []
    matched: list[str] = []
    hit = False
    for m in _SEGMENT.finditer(text):
        letters = expand_letters(m.group(2)) if m.group(2) else []
        for x in letters:
            if x not in everything:
                everything.append(x)
        if want is not None and m.group(1).lstrip("0") == want.lstrip("0"):
            hit = True
            for x in letters:
                if x not in matched:
                    matched.append(x)
    return matched if hit else everything


def tail_letters(tail: str | None) -> str:
    """Panel letters glued to the end of an xref ("Figure 2</xref>B–D)…" → "B–D"), else ""."""
    if not tail:
        return ""
    m = _TAIL.match(tail)
    return m.group(1) if m else ""


class _Label:
    __slots__ = ("bare", "end", "hi", "leading", "letters", "lo", "start", "upper")

    def __init__(self, start: int, end: int, letters: list[str], upper: bool, leading: bool, bare: bool):
        self.start, self.end, self.letters, self.upper, self.leading, self.bare = start, end, letters, upper, leading, bare
        if len(letters) == 1:
            self.lo = self.hi = ord(letters[0]) - 65
        else:
            self.lo = ord(min(letters)) - 65
            self.hi = ord(max(letters)) - 65


def _bare_ok(text: str, m: re.Match[str]) -> bool:
    start = m.start(1)
    before = text[max(0, start - 40):start].rstrip()
    after = text[m.end():m.end() + 60].lstrip()
    if not after:
        return False
    nxt = after.split(None, 1)[0]
    # "A, B and C": a list of letters, not a label
    if len(nxt.rstrip(",;:.")) == 1 and nxt[0].isalpha():
        return False
    if m.group(2) == ".":
        # "A. Axial CT …" only at a sentence start and before a capital; never "E. coli"
        return (not before or before[-1] in ".;:") and (nxt[0].isupper() or nxt[0].isdigit())
    if not before or before[-1] in ".;:(":
        return True
    prev = before.rsplit(None, 1)[-1].lower()
    return prev in _BARE_PREV_WORDS


def _paren_candidates(text: str) -> list[_Label]:
    found: list[_Label] = []
    for m in _PAREN_NEXT.finditer(text):
        run, after = m.group(1, 2)
        if len(run) == 1:
            letters = [run.upper()]
        else:
            letters = expand_letters(run)
            if not letters:
                continue
        start, end = m.span()
        found.append(_Label(start, end, letters, run[0].isupper(), after is None, False))
    return found


def _may_have_bare_a(text: str) -> bool:
    """False only when no bare label of :func:`_bare_candidates` can name A: every such label
    starts at a letter that is not glued to the word before it and is followed by punctuation
    or a dash; its letters include A only if it starts with "A" or ends with "–A"."""
    for m in _BARE_A1.finditer(text):
        s0 = m.start()
        if not s0 or not (text[s0 - 1].isalnum() or text[s0 - 1] in ".-\u2013\u2014/_"):
            return True
    return _BARE_A2.search(text) is not None


def _bare_candidates(text: str, taken: list[_Label]) -> list[_Label]:
    found: list[_Label] = []
    for m in _BARE.finditer(text):
        s0 = m.start()
        if s0 and (text[s0 - 1].isalnum() or text[s0 - 1] in ".-\u2013\u2014/_"):
            continue  # part of a word, a number or an abbreviation
        if any(c.start <= s0 < c.end for c in taken):
            continue
        if not _bare_ok(text, m):
            continue
        letters = expand_letters(m.group(1))
        if letters:
            found.append(_Label(s0, m.end(), letters, True, True, True))
    return found


def _chain(cands: list[_Label]) -> list[_Label]:
    out: list[_Label] = []
    hi = -1
    upper: bool | None = None
    for c in cands:
        lo, top = c.lo, c.hi
        if not out:
            if lo != 0:
                continue
            upper = c.upper
        elif c.upper != upper or lo > hi + 1:
            continue
        out.append(c)
        hi = max(hi, top)
    return out


def _pick_chain(cands: list[_Label]) -> tuple[bool, list[_Label]] | None:
    first_a = None
    for c in cands:
        if c.lo == 0:
            first_a = c
            break
    if first_a is None:
        return None
    leading = first_a.leading
    # leading style: a letter followed by punctuation is a back-reference, not a label;
    # trailing style: "… (C) and allele range (D) in artificial populations" - (D) still labels
    # the text before it, so every candidate may continue the chain
    chain = _chain([c for c in cands if c.leading] if leading else cands)
    if len({x for c in chain for x in c.letters}) < 2:
        return None
    return leading, chain


def _clean(seg: str) -> str:
    return seg.strip().lstrip(" ,;:.").rstrip(" ,;:")


def split_caption(caption: str | None) -> list[tuple[str, str]]:
    """Per-panel sub-captions of a compound figure, ``[(letter, text), …]`` in letter order;
    ``[]`` when the caption does not label at least two panels."""
    if not caption:
        return []
    text = caption
    if "  " in text or "\n" in text or "\t" in text or "\r" in text or "\xa0" in text:
        text = " ".join(text.split())
    paren = _paren_candidates(text)
    found = _pick_chain(paren)
    if found is None:
        # no parenthesised labels: look for bare "A, …" labels (the scan costs more, so only now).
        # A chain must start at a label naming A; when no parenthesised label does and no bare
        # label could (two cheap searches), the full scan cannot find a chain
        if not any(c.lo == 0 for c in paren) and not _may_have_bare_a(text):
            return []
        cands = sorted(paren + _bare_candidates(text, paren), key=lambda c: c.start)
        found = _pick_chain(cands)
        if found is None:
            return []
    leading, chain = found
    texts: dict[str, list[str]] = {}
    if leading:
        for i, c in enumerate(chain):
            end = chain[i + 1].start if i + 1 < len(chain) else len(text)
            seg = _clean(text[c.end:end])
            for x in c.letters:
                texts.setdefault(x, [])
                if seg:
                    texts[x].append(seg)
    else:
        prev_end = None
        for c in chain:
            if prev_end is None:
                # the first trailing label covers its own sentence
                starts = [m.end() for m in _SENTENCE_END.finditer(text, 0, c.start)]
                begin = starts[-1] if starts else 0
            else:
                # a sentence boundary after the previous label starts this label's text
                starts = [m.end() for m in _SENTENCE_END.finditer(text, prev_end, c.start)]
                begin = starts[-1] if starts else prev_end
            seg = _clean(text[begin:c.start])
            for x in c.letters:
                texts.setdefault(x, [])
                if seg:
                    texts[x].append(seg)
            prev_end = c.end
    return [(x, " ".join(texts[x])) for x in sorted(texts)]
