"""Offline A2: text usability and panel context by rules, no model (the ``offline`` engine of
:class:`openmedreason.curate.a2.A2Text`).

The step runs the shared length pre-filter (``a2.too_short``) first; :func:`judge_panel` then
applies these rules, in order, to the text of the panel (sub-caption + caption + routed citing
paragraphs, markup removed), with the same reject codes as the LLM judge:

1. ``a2.inadequate`` (navigational or bare-label text): fewer than ``min_content_words`` (5)
   distinct content words, i.e. words of 3+ letters that are not English stop words and not
   figure-navigation words (figure, panel, image, shown, inset, arrow, …; panel letters and
   numbers never count). "Panel A shows the second patient" has 2; "MRI of the brain" has 2;
   "Chest X-ray of acute COPD exacerbation" has 5. Value: the count.
2. ``a2.not_clinical``: no term of the lexicon's ``anatomy``, ``abnormal`` or ``stain`` classes
   (:mod:`openmedreason.offline.vocab`) and no clinical cue word (patient, clinical, diagnosis,
   treatment, therapy, surgery, symptom, disease, infection, malaria, anaemia, …).
3. ``a2.no_multistep``: the method wants a visual feature named in the text *plus* the text's
   explanation of its cause, meaning or consequence. Passes when
   (a) the text names something seen (an ``abnormal``, ``normal`` or ``morphology`` lexicon
   term, or an observation verb: shows, reveals, demonstrates, depicts, visible, seen, noted,
   appears, …) **and** contains an explanation cue (because, due to, caused by, results in,
   secondary to, leads to, suggests, indicates/indicative of, consistent/compatible with, in
   keeping with, characteristic/typical of, diagnosis/diagnosed, attributed to, associated
   with, reflects, confirms, evidence/sign of, therefore, thus, explains, mechanism,
   responsible for, compared with, whereas, …; "at the indicated times" does not count), or
   (b) a finding term (e.g. hyperinflation, opacity, effusion, fibrosis) appears together with a
   specific diagnosis (e.g. bronchiolitis, pneumonia, carcinoma, COPD; generic words such as
   "disease" or "abnormality" do not count): "hyperinflation in infant bronchiolitis" links the
   finding to its cause. An observation verb alone ("shows ground-glass opacities") is not an
   explanation and fails. Value: 0; the detail lists what was found.
   ``a2.misaligned`` is never emitted offline (the rules cannot see the image).

Context: the sub-caption (or, when there is none, the caption) followed by the routed citing
paragraphs, markup removed, repeated paragraphs once, trimmed to ``max_context_chars`` at a
sentence boundary; empty → ``a2.invalid_context`` (cannot happen after the pre-filter, kept for
safety).

Modality: :func:`openmedreason.offline.vocab.detect_modality` on the sub-caption, else on the
caption; the citing paragraphs are used only when the panel has neither (they often name other
figures' modalities: "as the causal diagram in Figure 1 shows" inside the paragraph that cites
Figure 2, a plot). **Unknown modality keeps the panel** with ``modality_group`` and
``modality`` None: the modality is descriptive metadata, not one of the method's usability
criteria, and a missing word in a small lexicon is no evidence that the text is unusable
(the LLM engine always returns a group because its schema requires one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openmedreason.curate.a2 import INADEQUATE, INVALID_CONTEXT, NO_MULTISTEP, NOT_CLINICAL, panel_texts, trim_sentences
from openmedreason.offline.vocab import detect_modality, scan
from openmedreason.records import Panel

if TYPE_CHECKING:  # pragma: no cover
    from openmedreason.curate.a2 import A2TextConfig

STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be been before being below
    between both but by can could did do does doing down during each either every few for from further
    had has have having her here hers him his how however i if in into is it its itself just may might
    more most much must my no nor not now of off on once only or other our out over own per same she
    should so some such than that the their theirs them then there these they this those through to too
    under until up upon very via was we were what when where which while who whom why will with within
    without would yet you your one two three four five six seven eight nine ten
    """.split()
)
#: words that only point at parts of a figure (they never count as content)
NAVIGATION_WORDS = frozenset(
    """
    figure figures fig figs panel panels subfigure inset insets image images picture pictures shown
    shows show showing depicted depicts represent representative example examples see also top bottom
    middle upper lower left right above below arrow arrows arrowhead arrowheads asterisk asterisks star
    box boxes circle circles line lines bar bars scale respectively corresponding indicated indicate
    indicates label labels labelled labeled view views supplement supplementary table tables same
    versus different each image panel row rows column columns
    """.split()
)
#: words that tie a text to patients or clinical care (lab usage such as "cells were treated",
#: "cancer cell lines" or "used to infect cells" deliberately does not count)
CLINICAL_CUES = re.compile(
    r"\b(?:patients?|clinical(?:ly)?|diagnos(?:is|es|ed|tic)|symptom\w*|surg(?:ery|eries|ical)|"
    r"syndrome\w*|malaria\w*|an(?:a)?emi(?:a|c)|prognos\w*|mortality|morbidity|hospital\w*|"
    r"admission|admitted|physicians?|biops(?:y|ies)|radiologists?|pathologists?|"
    r"case (?:report|of a|presentation)|(?:year|month)s?[- ]old|fever|pain|injur(?:y|ies)|trauma\w*|"
    r"intubat\w*|chemotherap\w*|radiotherap\w*|resect(?:ion|ed)|postoperative\w*|preoperative\w*|"
    r"intensive care|emergency)\b",
    re.I,
)
OBSERVATION_CUES = re.compile(
    r"\b(?:show(?:s|n|ed|ing)?|reveal\w*|demonstrat\w*|depict\w*|display\w*|illustrat\w*|visible|"
    r"visuali[sz]ed|seen|noted|evident|appear(?:s|ed|ing|ance)?|observed|present(?:s|ed)? (?:with|as))\b",
    re.I,
)
EXPLANATION_CUES = re.compile(
    r"\b(?:because|due to|owing to|caused by|caus(?:e|es|ing)\b|as a result|results? (?:in|from)|"
    r"result(?:ed|ing) (?:in|from)|secondary to|lead(?:s|ing)? to|led to|suggest\w*|"
    r"indicat(?:es|ing|ive|ion)\b|indicated (?:that|an?|the)\b|consistent with|compatible with|"
    r"in keeping with|characteristic (?:of|for)|typical (?:of|for)|pathognomonic|hallmark|"
    r"diagnos(?:is|ed|es|tic)\b|attribut(?:ed|able) to|associated with|reflect(?:s|ed|ing)?\b|"
    r"confirm(?:s|ed|ing)?\b|evidence of|signs? of|therefore|thus|hence|impl(?:y|ies|ied|ying|ication)\w*|"
    r"explain\w*|mechanism\w*|responsible for|contribut\w* to|predict\w*|correlat\w*|"
    r"compared (?:with|to)|relative to|whereas|in contrast)\b",
    re.I,
)
#: lexicon modalities that are clinical by nature (a chest radiograph is clinical even when its
#: caption names nothing else)
CLINICAL_MODALITIES = frozenset(
    {"CT", "MRI", "Ultrasound", "X-ray", "Mammography", "Angiography", "PET", "Nuclear medicine", "OCT",
     "Fluoroscopy", "Fundus photograph", "Endoscopy", "Dermoscopy", "Histology", "Immunohistochemistry"}
)
#: fewer distinct items of clinical evidence than this = a2.not_clinical
MIN_CLINICAL_TERMS = 2
#: abnormal-class canonicals that name a disease or process rather than a visible finding
_DIAGNOSIS_CANONICALS = frozenset({"cancer", "inflammation", "disease"})
#: surface forms of those canonicals too generic to be a diagnosis
_GENERIC_DIAGNOSIS = frozenset(
    """disease diseases disorder disorders syndrome pathology pathological abnormal abnormality
    abnormalities worsening atypical atypia anomaly infection infected inflammation inflammatory
    malignancy malignant""".split()
)
_WORDS = re.compile(r"[A-Za-z][A-Za-z'’\-]*[A-Za-z]|[A-Za-z]")


@dataclass(frozen=True)
class OfflineDecision:
    """What the rules decided for one panel: a reject (code, value, detail) or the kept fields."""

    reject: str | None = None
    value: float | None = None
    detail: str | None = None
    context: str | None = None
    modality_group: str | None = None
    modality: str | None = None


def content_words(text: str) -> list[str]:
    """Distinct content words (3+ letters, not stop or navigation words), lower-cased, in order."""
    out: dict[str, None] = {}
    for w in _WORDS.findall(text):
        lw = w.lower().strip("'’-")
        if len(lw) >= 3 and lw not in STOP_WORDS and lw not in NAVIGATION_WORDS:
            out.setdefault(lw, None)
    return list(out)


def clinical_terms(description: str, text: str) -> list[str]:
    """Evidence of clinical relevance: lexicon ``anatomy``/``abnormal``/``stain``
    terms and clinical imaging modalities (:data:`CLINICAL_MODALITIES`) in the panel's own
    description (sub-caption and caption), plus clinical cue words anywhere in ``text``;
    distinct items, cue words folded ("clinical"/"clinically", "patient"/"patients").
    Paragraph-level lexicon hits do not count: research articles name organs and diseases in
    passing ("cancer cell lines", "human embryonic kidney cells")."""
    found = [m.canonical for m in scan(description, ("anatomy", "abnormal", "stain"))]
    found += [m.canonical for m in scan(description, "modality") if m.canonical in CLINICAL_MODALITIES]
    found += [re.sub(r"(?:ly|s)$", "", m.group(0).lower()) for m in CLINICAL_CUES.finditer(text)]
    return list(dict.fromkeys(found))


def multistep_evidence(text: str) -> tuple[bool, str]:
    """(passes, what was found) for the multi-step rule (module doc, rule 3)."""
    abnormal = scan(text, "abnormal")
    findings = [m.surface for m in abnormal if m.canonical not in _DIAGNOSIS_CANONICALS]
    diagnoses = [m.surface for m in abnormal if m.canonical in _DIAGNOSIS_CANONICALS and m.surface.lower() not in _GENERIC_DIAGNOSIS]
    seen = findings + [m.surface for m in scan(text, ("normal", "morphology"))]
    seen += [m.group(0) for m in OBSERVATION_CUES.finditer(text)]
    why = [m.group(0) for m in EXPLANATION_CUES.finditer(text)]
    linked = bool(findings) and bool(diagnoses)
    ok = (bool(seen) and bool(why)) or linked
    detail = (
        f"visual feature: {_short(seen)}; explanation cue: {_short(why)}; "
        f"finding+diagnosis: {_short(findings)} / {_short(diagnoses)}"
    )
    return ok, detail


def _short(items: list[str], n: int = 5) -> str:
    uniq = list(dict.fromkeys(i.lower() for i in items))
    if not uniq:
        return "none"
    return ", ".join(uniq[:n]) + (f" (+{len(uniq) - n})" if len(uniq) > n else "")


def offline_context(panel: Panel, max_chars: int) -> str:
    """Sub-caption (else caption) + the routed citing paragraphs, trimmed at a sentence end."""
    sub, caption, paras = panel_texts(panel)
    parts = [sub or caption] + [t for _, t in paras]
    return trim_sentences("\n\n".join(p for p in parts if p), max_chars)


def offline_modality(panel: Panel) -> tuple[str | None, str | None]:
    """(group, modality) from the sub-caption, else the caption, else (only when the panel has
    neither) the citing paragraphs; (None, None) when the lexicon finds nothing."""
    sub, caption, paras = panel_texts(panel)
    sources = [t for t in (sub, caption) if t] or [" ".join(t for _, t in paras)]
    for text in sources:
        group, modality = detect_modality(text)
        if group is not None:
            return group, modality
    return None, None


def judge_panel(panel: Panel, cfg: "A2TextConfig") -> OfflineDecision:
    """Apply the offline rules to a panel that passed the length pre-filter."""
    sub, caption, paras = panel_texts(panel)
    text = "\n".join(t for t in (sub, caption, *(p for _, p in paras)) if t)
    words = content_words(text)
    if len(words) < cfg.min_content_words:
        return OfflineDecision(
            INADEQUATE, len(words), f"{len(words)} content words < min_content_words={cfg.min_content_words}: {_short(words, 10)}"
        )
    clinical = clinical_terms("\n".join(t for t in (sub, caption) if t), text)
    if len(clinical) < MIN_CLINICAL_TERMS:
        return OfflineDecision(
            NOT_CLINICAL, len(clinical), f"clinical evidence {_short(clinical)}: fewer than {MIN_CLINICAL_TERMS} distinct items"
        )
    ok, evidence = multistep_evidence(text)
    if not ok:
        return OfflineDecision(NO_MULTISTEP, 0, evidence)
    context = offline_context(panel, cfg.max_context_chars)
    if not context:
        return OfflineDecision(INVALID_CONTEXT, 0, "no text about this panel")
    group, modality = offline_modality(panel)
    return OfflineDecision(context=context, modality_group=group, modality=modality)


__all__ = [
    "CLINICAL_CUES",
    "EXPLANATION_CUES",
    "NAVIGATION_WORDS",
    "OBSERVATION_CUES",
    "OfflineDecision",
    "clinical_terms",
    "content_words",
    "judge_panel",
    "multistep_evidence",
    "offline_context",
    "offline_modality",
]
