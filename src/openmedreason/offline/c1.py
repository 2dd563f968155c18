"""Offline C1: a reasoning trace assembled from the article's own sentences, with no model.

This is a baseline for running the pipeline without an LLM (tests, the demo, a dry look at a
corpus). It is **not a substitute for a model**: it does not look at the image, it cannot check
that a sentence is true of the panel, and its traces are stitched article sentences with fixed
connective text, so they read mechanically and are only as good as the caption and the citing
text. Use the ``llm`` engine to build a real corpus.

How a trace is built (:func:`compose_trace`), in the method's order:

1. **What must be checked**: the category's objective (``openmedreason.taxonomy``), e.g. "The task
   is to give the most likely diagnosis … The X-ray image has to be examined for …".
2. **Perception**: caption sentences (the sub-caption for a panel question when there is one, the
   whole caption for a full-figure question) that name a visual finding, and then citing-text
   sentences that name one together with a viewing verb or a modality (shows, seen, radiograph,
   H&E…). A sentence of the form "<modality> shows/showing/with/of <finding>" is rephrased as
   "The <modality> shows <finding>."; a verbless noun phrase becomes "The image shows <finding>.".
3. **Clinical context**: the stem's sentences other than the question itself (long stems), else
   a sentence saying that no history is given.
4. **Interpretation and medical knowledge**: context sentences (``panel.context`` from A2, else
   the citing paragraphs) with explanatory cues: first general knowledge cues (is a, typically,
   characteristic, associated with, caused by, due to…), then case rationale cues (consistent
   with, suggests, indicates, diagnosis, therefore…). Without any, a connective sentence says the
   findings point to the correct option's text.
5. **Answer justification**: "… therefore the answer is X. <answer text>."

Source text is first rewritten so that the deterministic C2 checks can pass: bracketed
citations ``[12]``, parentheticals naming figures, panels or tables, panel labels ``(A)``/``(b–d)``
and "Image 2B" are removed; sentences still pointing at another picture, citing the source
("the authors", "as described", "in this study"…), written in the first person (we, our), quoting
statistics (p = …), describing methods ("cells were incubated…", knowledge section only) or
asking questions are dropped; in a sentence listing panels ("a shows X, b shows Y") only this
panel's clause is kept. The caption is never named. When the perception paragraph shares a run of
≥ ``copy_ngram`` words with the caption (runs across sentence ends count), the run is broken by
inserting "located" before a locative preposition that follows a finding noun ("opacities located
in the lower zones"), else the sentence is cut at the last clause boundary that keeps the shared
part shorter (a sentence left with fewer than five words is dropped). Knowledge sentences that
repeat the caption are not used. If the assembled trace still copies the caption or exceeds the
length bound, knowledge sentences and then extra perception sentences are dropped.

Typical output is 550–1,400 characters inside ``<think>``, shorter than the published median
(~1,900), because captions are short and the connective text is minimal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from openmedreason.curate.trace_checks import (
    assemble_trace,
    find_absent_image_reference,
    find_source_citation,
    longest_shared_run,
    sentences,
    split_trace,
    words,
)
from openmedreason.records import Question
from openmedreason.taxonomy import BINARY_OPTIONS, category

TEMPLATE = "offline-c1_trace"
_WORD = re.compile(r"\w+")

# --------------------------------------------------------------------------- cleaning
_CITATION = re.compile(r"\s*\[\s*\d+(?:\s*[,–-]\s*\d+)*\s*\]")
_AUTHOR_YEAR = re.compile(r"\s*\([^()]*(?:\bet\s+al\b|\b[A-Z][\w'-]+,?\s+(?:19|20)\d{2}[a-z]?\b)[^()]*\)")
_FIG_PAREN = re.compile(r"\s*[\(\[][^()\[\]]*\b(?:fig(?:ure)?s?\.?|panels?|tables?|images?\s+\d)[^()\[\]]*[\)\]]", re.I)
_PANEL_PAREN = re.compile(r"\s*\(\s*(?:[A-Ha-h]|[ivx]{1,4})(?:\s*(?:[,–-]|and|&)\s*(?:[A-Ha-h]|[ivx]{1,4}))*\s*\)")
_IMAGE_NUM = re.compile(r"\s*\bImages?\s+\d+[A-Za-z]?\b")
_LEADING_LABEL = re.compile(r"^\s*(?:\(?[A-Ha-h]\)|[A-H][,:.])\s+")
_SPACE_PUNCT = re.compile(r"\s+([,.;:!?])")
_FIRST_PERSON = re.compile(r"\b(?:we|our|us|ours)\b", re.I)
_METHODS = re.compile(
    r"\b(?:was|were)\s+(?:\w+\s+)?(?:incubated|transfected|treated|performed|analy[sz]ed|measured|collected|plated|cultured|"
    r"stained|centrifuged|harvested|recorded|obtained|calculated|used|injected|administered|randomi[sz]ed|enrolled|fixed|"
    r"sectioned|imaged|scanned|acquired)\b",
    re.I,
)
_STATS = re.compile(r"\bp\s*[<=>≤]\s*0?\.\d|\bF\s*\[\d|\bR2\b|\bCI\b", re.I)


def clean_text(text: str) -> str:
    """Remove citations, figure/panel/table parentheticals, panel labels and 'Image 2B'."""
    t = text or ""
    t = _CITATION.sub("", t)
    t = _AUTHOR_YEAR.sub("", t)
    for _ in range(2):
        t = _FIG_PAREN.sub("", t)
    t = _PANEL_PAREN.sub("", t)
    t = _IMAGE_NUM.sub("", t)
    t = _SPACE_PUNCT.sub(r"\1", t)
    return re.sub(r"\s+", " ", t).strip()


def usable_sentences(text: str | None, panel: str | None = None) -> list[str]:
    """Cleaned sentences of ``text`` that may appear in a trace (for a sentence that lists panels,
    "a shows X, b shows Y", only the clause of ``panel``)."""
    out = []
    for s in sentences(clean_text(text or "")):
        s = _LEADING_LABEL.sub("", s).strip()
        s = panel_clause(s, panel)
        if s is None or len(s) < 6 or len(s) > 500 or s.endswith("?"):
            continue
        if find_absent_image_reference(s) or find_source_citation(s) or _FIRST_PERSON.search(s) or _STATS.search(s):
            continue
        if not s.endswith((".", "!")):
            s += "."
        out.append(s)
    return out


# --------------------------------------------------------------------------- cues
_MODALITY = re.compile(
    r"\b(?:radiograph\w*|x-?rays?|CT\w*|CTA|CTPA|MRI|MR|ultrasound\w*|sonograph\w*|echocardiogra\w*|angiogra\w*|mammogra\w*|PET|"
    r"scintigra\w*|histolog\w*|histopatholog\w*|micrograph\w*|microscop\w*|smears?|H&E|ha?ematoxylin|immunohisto\w*|"
    r"stain\w*|biops\w*|sections?|fundus|retina\w*|endoscop\w*|colonoscop\w*|photograph\w*|dermoscop\w*|OCT|scans?|"
    r"images?|views?|films?|slides?|specimens?)\b",
    re.I,
)
_VISUAL = re.compile(
    r"\b(?:shows?|showing|showed|shown|demonstrat\w*|reveal\w*|depict\w*|seen|visible|appear\w*|noted|opacit\w*|lesions?|"
    r"mass(?:es)?|nodul\w*|enhanc\w*|hyper\w+|hypo\w+|consolidation|effusions?|infiltrat\w*|thicken\w*|dilat\w*|calcif\w*|"
    r"stain\w*|cells?|pattern\w*|shadow\w*|ground-glass|fractur\w*|tumou?rs?|cyst\w*|o?edema|ha?emorrhag\w*|necros\w*|"
    r"fibros\w*|fibrotic|arrow\w*|microaneurysm\w*|tubes?|nucle\w*|glands?|tissue|signal|densit\w*|intensit\w*|margins?|"
    r"cavit\w*|collapse\w*|hyperinflat\w*|emboli\w*|embolus|thromb\w*|honeycomb\w*|unremarkable|normal|abnormal|"
    r"infarct\w*|atroph\w*|stenos\w*|occlu\w*|aneurysm\w*|haziness|hazy|patchy|diffuse|focal|bilateral|"
    r"neutrophils?|lymphocytes?|erythrocytes?|schistocytes?|intubated)\b",
    re.I,
)
_VIEWING = re.compile(r"\b(?:shows?|showing|showed|demonstrat\w*|reveal\w*|seen|visible|appear\w*|depict\w*)\b", re.I)
_KNOWLEDGE = re.compile(
    r"\b(?:is\s+an?|are\s+an?|typical(?:ly)?|characteristic(?:ally)?|common(?:ly)?|usually|often|known|hallmark|"
    r"pathognomonic|associated\s+with|caused\s+by|due\s+to|results?\s+(?:from|in)|lead(?:s|ing)?\s+to|secondary\s+to|"
    r"because|mechanism|refers?\s+to|defined\s+as|represents?|reflects?)\b",
    re.I,
)
_RATIONALE = re.compile(
    r"\b(?:consistent\s+with|compatible\s+with|in\s+keeping\s+with|suggest\w*|indicat\w*|diagnos\w*|confirm\w*|"
    r"therefore|thus|hence|so\s+that|which\s+explains|attributed\s+to)\b",
    re.I,
)
_FINITE = re.compile(
    r"\b(?:is|are|was|were|has|have|had|shows?|showed|demonstrates|demonstrated|reveals|revealed|appears?|appeared|"
    r"contains?|contained|there|exhibits?|displays?)\b",
    re.I,
)
_LEAD = re.compile(
    r"^(?P<lead>[^,;:]{2,80}?)\s+(?P<verb>shows?|showing|showed|demonstrates|demonstrating|demonstrated|reveals|revealing|revealed|"
    r"depicts|depicting|illustrates|illustrating|displays|displaying|with|of)\s+(?P<rest>.+)$",
    re.I,
)
_UNITS = {"cm", "mm", "m", "um", "μm", "nm", "km", "ml", "l", "cc", "kg", "g", "mg", "min", "h", "s"}
_LOCATIVE = {"in", "within", "at", "along", "throughout", "near", "across", "beneath", "behind", "above", "below", "around", "over"}
_NOT_BEFORE_LOCATIVE = {"obtained", "seen", "shown", "taken", "performed", "acquired", "noted", "found", "observed", "located",
                        "present", "visible", "evident", "apparent", "identified", "detected", "demonstrated"}


def _lower_first(s: str) -> str:
    first = s.split(" ", 1)[0]
    if len(first) > 1 and first[1:].islower() and first[0].isupper() and "-" not in first.rstrip("-"):
        return s[0].lower() + s[1:]
    if len(first) > 1 and "-" in first and first.split("-", 1)[1][:1].islower() and first[1:].split("-")[0].islower():
        return s[0].lower() + s[1:]
    return s


_PANEL_CLAUSE = re.compile(r"(?:^|[,;:]\s*(?:and\s+)?)(?-i:([a-h]))\s+(?:shows?|showed|demonstrates|reveals|depicts)\s+", re.I)


def panel_clause(sentence: str, panel: str | None) -> str | None:
    """For a sentence listing panels ("a shows X, b shows Y"), the clause of ``panel`` as
    "The image shows X."; the sentence itself when it lists none; None when it lists others only."""
    marks = list(_PANEL_CLAUSE.finditer(sentence))
    if not marks:
        return sentence
    for i, m in enumerate(marks):
        if panel and m.group(1) == panel.lower():
            end = marks[i + 1].start() if i + 1 < len(marks) else len(sentence)
            return "The image shows " + sentence[m.end() : end].strip(" ,;.") + "."
    return None


def as_perception(sentence: str) -> str:
    """Rephrase a caption-style sentence as an observation about the image."""
    s = sentence.rstrip(".! ")
    m = _LEAD.match(s)
    if m and _MODALITY.search(m.group("lead")) and len(m.group("lead").split()) <= 8:
        lead = re.sub(r"^(?:an?|the|this|these)\s+", "", m.group("lead").strip(), flags=re.I)
        return f"The {_lower_first(lead)} shows {m.group('rest').strip()}."
    if not _FINITE.search(s):
        if len(s.split()) == 1:
            return f"The image appears {s.lower()}."
        return f"The image shows {_lower_first(s)}."
    return s + "."


_DANGLING = re.compile(r"(?:\s+\b(?:and|or|with|of|for|the|a|an|to|in|on|at|by|from|as|that|which|whereas|while|but|nor))+\s*$", re.I)
_CLAUSE_WORDS = {"which", "that", "with", "for", "and", "where", "while", "whereas", "because", "after", "before", "during", "from", "as"}


def _locative_ok(prev: str) -> bool:
    """A locative insertion reads naturally after a finding noun ("opacities located in …")."""
    if prev in _NOT_BEFORE_LOCATIVE or prev.endswith("ed") or prev.isdigit() or prev in _UNITS:
        return False
    return bool(_VISUAL.fullmatch(prev)) or (prev.endswith("s") and not prev.endswith(("ss", "is", "us")))


def break_copied_runs(sents: list[str], captions: list[list[str]], n: int) -> list[str] | None:
    """``sents`` (one paragraph) without any run of ≥ ``n`` consecutive words shared with a caption
    (runs across sentence ends count). A run is broken by inserting "located" before a locative
    preposition that follows a finding noun ("opacities located in the lower lobe"); else the
    sentence is cut at the last clause boundary (sentence end, comma, semicolon, bracket,
    which/that/with/for/and…) that keeps the shared part under ``n`` words, and a sentence left
    with fewer than five words is dropped. None when nothing is left."""
    sents = [x for x in sents if x.strip()]
    for _ in range(16):
        toks = [(i, m) for i, x in enumerate(sents) for m in _WORD.finditer(x)]
        tw = [m.group(0).lower() for _, m in toks]
        best, end = 0, 0
        for cw in captions:
            k, e = longest_shared_run(tw, cw)
            if k > best:
                best, end = k, e
        if best < n:
            return sents or None
        start = end - best
        mid = (start + end) / 2
        cands = [
            k for k in range(start + 2, end - 1)
            if tw[k] in _LOCATIVE and toks[k][0] == toks[k - 1][0] and _locative_ok(tw[k - 1])
        ]
        if cands:
            k = min(cands, key=lambda c: abs(c - mid))
            si, m = toks[k]
            sents[si] = sents[si][: m.start()] + "located " + sents[si][m.start() :]
            continue
        cuts = []
        for k in range(start + 3, min(end, start + n)):
            (si, m), (pi, pm) = toks[k], toks[k - 1]
            if si != pi or re.search(r"[,;(]", sents[si][pm.end() : m.start()]) or tw[k] in _CLAUSE_WORDS:
                cuts.append(k)
        if not cuts:
            return None
        si, m = toks[cuts[-1]]
        if si != toks[cuts[-1] - 1][0]:
            del sents[si]  # the run crosses into this sentence at its first word: leave it out
            continue
        head = sents[si][: m.start()].rstrip(" ,;(")
        if head.count("(") > head.count(")"):
            head = head[: head.rfind("(")].rstrip(" ,;")
        head = _DANGLING.sub("", head).rstrip(" ,;")
        if len(_WORD.findall(head)) < 5:
            del sents[si]
        else:
            sents[si] = head + "."
        if not sents:
            return None
    return None


# --------------------------------------------------------------------------- composition
@dataclass
class OfflineTrace:
    """The assembled trace and the sentences each section used."""

    reasoning: str
    perception: list[str] = field(default_factory=list)
    clinical: list[str] = field(default_factory=list)
    knowledge: list[str] = field(default_factory=list)


def _captions(q: Question) -> list[str]:
    p = q.panel
    if q.image_scope == "full":
        return [p.caption]
    return [p.sub_caption] if p.sub_caption else [p.caption]


def _body(q: Question) -> str:
    p = q.panel
    if q.image_scope == "full":
        return p.all_context() or p.context or ""
    if p.context is not None:
        return p.context
    return "\n\n".join(c.text for c in p.citing_paragraphs if not c.panels or (p.panel and p.panel in c.panels))


def _same(a: str, b: str) -> bool:
    wa, wb = set(words(a)), set(words(b))
    return bool(wa and wb) and len(wa & wb) / len(wa | wb) >= 0.8


def _dedupe(items: list[str], seen: list[str]) -> list[str]:
    out: list[str] = []
    for s in items:
        if not any(_same(s, t) for t in seen + out):
            out.append(s)
    return out


def _stem_facts(stem: str) -> list[str]:
    """The stem's sentences other than the question (the last sentence ending in '?', else the last)."""
    sents = sentences(stem)
    if len(sents) <= 1:
        return []
    asked = [i for i, s in enumerate(sents) if s.rstrip().endswith("?")]
    qi = asked[-1] if asked else len(sents) - 1
    return [s for i, s in enumerate(sents) if i != qi and not s.rstrip().endswith("?")]


def _answer_phrase(q: Question) -> str:
    text = q.answer_text.strip().rstrip(".")
    if q.answer_format in BINARY_OPTIONS:
        low = text.lower()
        if q.answer_format == "normal_abnormal":
            return f"an {low} appearance" if low == "abnormal" else f"a {low} appearance"
        return f"the answer {low}"
    return _lower_first(text)


def _copied(text: str, caption_words: list[list[str]], n: int) -> bool:
    tw = words(text)
    return any(longest_shared_run(tw, cw)[0] >= n for cw in caption_words)


def compose_trace(
    q: Question, *, max_perception: int = 3, max_knowledge: int = 4, max_chars: int = 6000, copy_ngram: int = 12
) -> OfflineTrace | None:
    """The offline trace for ``q``, or None when neither the caption nor the citing text yields a
    sentence that describes the image."""
    panel = q.panel
    caption_words = [words(c) for c in [panel.caption, panel.sub_caption] if c]
    cap_sents = [s for c in _captions(q) if c for s in usable_sentences(c, panel.panel)]
    body_sents = _dedupe(usable_sentences(_body(q), panel.panel), [])

    # perception: caption sentences with a visual cue (else the first caption sentence), then body
    # sentences with a visual cue and a viewing verb or a modality
    cands = [s for s in cap_sents if _VISUAL.search(s)] or cap_sents[:1]
    cands += [
        s for s in body_sents
        if _VISUAL.search(s) and (_VIEWING.search(s) or _MODALITY.search(s)) and not _KNOWLEDGE.search(s) and not _RATIONALE.search(s)
    ]
    cands = _dedupe(cands, [])
    perception: list[str] = []
    for s in cands:
        if len(perception) >= max_perception:
            break
        # break copied runs over the paragraph so far, so that runs across sentences count too
        broken = break_copied_runs([*perception, as_perception(s)], caption_words, copy_ngram)
        if broken is not None:
            perception = broken
    if not perception:
        return None

    # knowledge, then rationale, from the body; never a sentence that repeats the caption
    used = cands + cap_sents
    rest = [
        s for s in body_sents
        if not any(_same(s, t) for t in used) and not _copied(s, caption_words, copy_ngram) and not _METHODS.search(s)
    ]
    know = [s for s in rest if _KNOWLEDGE.search(s)]
    rat = [s for s in rest if _RATIONALE.search(s) and s not in know]
    knowledge = (know + rat)[:max_knowledge]

    facts = _stem_facts(q.stem)
    try:
        objective = category(q.category).objective
    except KeyError:
        objective = "answer the question"
    noun = f"{panel.modality} image" if panel.modality else "image"
    check = (
        f"The task is to {objective}. The {noun} has to be examined for the findings that bear on this, and those "
        f"findings then have to be interpreted with the relevant medical knowledge"
        + (" and the clinical details given." if facts else ".")
    )
    clinical = " ".join(facts) if facts else "No clinical history is given, so the answer rests on the image findings."
    answer = _answer_phrase(q)
    answer_text = q.answer_text.strip()
    tail = "" if answer_text.endswith((".", "!", "?")) else "."

    def build(perception: list[str], knowledge: list[str]) -> str:
        interp = " ".join(knowledge) if knowledge else f"These image findings are the features that point to {answer}."
        justification = (
            f"The image findings{', together with the clinical context,' if facts else ''} and their interpretation "
            f"point to {answer}; therefore the answer is {q.answer}. {answer_text}{tail}"
        )
        return assemble_trace(check, " ".join(perception), clinical, interp, justification, q.answer)

    def fits(trace: str) -> bool:
        think = (split_trace(trace)[0] or "").strip()
        return len(think) <= max_chars and not _copied(think, caption_words, copy_ngram)

    reasoning = build(perception, knowledge)
    # within the length bound and without a copied run: drop knowledge from the end, then perception
    while not fits(reasoning) and (knowledge or len(perception) > 1):
        if knowledge:
            knowledge = knowledge[:-1]
        else:
            perception = perception[:-1]
        reasoning = build(perception, knowledge)
    return OfflineTrace(reasoning=reasoning, perception=perception, clinical=facts, knowledge=knowledge)
