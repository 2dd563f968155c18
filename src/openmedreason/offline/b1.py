"""Offline B1: question categories by vocabulary, no model (the ``offline`` engine of
:class:`openmedreason.curate.b1.B1Tasks`).

Only the categories the offline question generator can write questions for are considered
(:data:`openmedreason.offline.b2.OFFLINE_CATEGORIES`, re-exported by
:mod:`openmedreason.curate.b2`), and each only when the text the question
would be grounded in (sub-caption, caption and the panel's context; the routed citing
paragraphs when A2 has not run) names what its answer needs, found with the lexicon of
:mod:`openmedreason.offline.vocab`:

========================  ==========================================================
category                  supported when the text names
========================  ==========================================================
``findings``              a modality, a stain or an imaging plane/projection
                          (``modality``, ``stain``, ``plane`` classes): the answer is
                          what kind of image, preparation or view this is
``anatomy``               an organ or body region (``anatomy`` class)
``normal_abnormal``       normal or abnormal cues that agree
                          (:func:`~openmedreason.offline.vocab.normal_abnormal` is not
                          None: no cue, or both kinds, give no answer)
========================  ==========================================================

A category of ``OFFLINE_CATEGORIES`` without a rule here is never assigned (and is logged
once), so the two lists cannot silently disagree. The rules are deliberately coarser than the
generator (it also needs distractors, a modality that fits the plane, an organ named in an
image-describing sentence, …): what it cannot serve it declines as ``b2.invalid``, with the
reason, rather than B1 guessing it here.
"""

from __future__ import annotations

import logging
from typing import Callable

from openmedreason.curate.a2 import panel_texts
from openmedreason.offline.b2 import OFFLINE_CATEGORIES
from openmedreason.offline.vocab import find_terms, normal_abnormal
from openmedreason.records import Panel
from openmedreason.taxonomy import CATEGORIES, Category, category

log = logging.getLogger(__name__)


def _findings(text: str) -> list[str]:
    return [t for cls in ("modality", "stain", "plane") for t in find_terms(text, cls)]


def _anatomy(text: str) -> list[str]:
    return find_terms(text, "anatomy")


def _normal_abnormal(text: str) -> list[str]:
    verdict = normal_abnormal(text)
    return [verdict] if verdict else []


#: category key -> function returning the vocabulary evidence found in the text (empty = none)
RULES: dict[str, Callable[[str], list[str]]] = {
    "findings": _findings,
    "anatomy": _anatomy,
    "normal_abnormal": _normal_abnormal,
}

_warned: set[str] = set()
_ORDER = {c.key: i for i, c in enumerate(CATEGORIES)}


def offline_category_keys() -> tuple[str, ...]:
    """The categories the offline engine may assign: B2's offline categories that have a rule."""
    keys = []
    for key in OFFLINE_CATEGORIES:
        k = category(key).key
        if k in RULES:
            keys.append(k)
        elif k not in _warned:
            _warned.add(k)
            log.warning("offline B1 has no vocabulary rule for offline category %r; it is never assigned", k)
    return tuple(keys)


def panel_text(panel: Panel) -> str:
    """Sub-caption, caption and context (A2's, else the routed citing paragraphs)."""
    sub, caption, paras = panel_texts(panel)
    context = panel.context or "\n\n".join(t for _, t in paras)
    return "\n".join(t for t in (sub, caption, context) if t)


#: offline questions are about what a medical image shows: charts, diagrams, blots and panels
#: of unknown modality get none (the vocabulary of their caption would make questions about
#: an organ or a "normal appearance" that the picture does not show)
IMAGE_GROUPS = frozenset({"Radiology", "Microscopy", "Visible light photography"})
NON_CLINICAL_MODALITIES = frozenset({"Western blot"})


def offline_categories(panel: Panel) -> tuple[list[Category], str]:
    """(supported categories in taxonomy order, a one-line account of the evidence)."""
    if panel.modality_group not in IMAGE_GROUPS or panel.modality in NON_CLINICAL_MODALITIES:
        return [], f"offline questions need a medical image; modality: {panel.modality_group} / {panel.modality}"
    text = panel_text(panel)
    cats: list[Category] = []
    notes: list[str] = []
    for key in offline_category_keys():
        found = RULES[key](text)
        notes.append(f"{key}: {', '.join(found) if found else 'none'}")
        if found:
            cats.append(category(key))
    cats.sort(key=lambda c: _ORDER[c.key])
    return cats, "vocabulary found: " + "; ".join(notes)


__all__ = ["RULES", "offline_categories", "offline_category_keys", "panel_text"]
