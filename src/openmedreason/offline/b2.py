"""Offline B2: multiple-choice questions from the panel's own vocabulary, no model (the
``offline`` engine of :class:`openmedreason.curate.b2.B2Mcq`).

Only questions whose answer a lexicon can read reliably off the caption/context are generated;
the categories this engine serves are :data:`OFFLINE_CATEGORIES` (offline B1 assigns only
these). For each (panel, category, style, answer format, image scope) :func:`generate` returns a
:class:`Draft` (stem, options, index of the correct option, question kind) or a
:class:`Decline` whose detail B2 records under ``b2.invalid``.

Text read
    panel scope: the sub-caption, the A2 context (else the citing paragraphs) and the caption;
    full-figure scope: the caption and every citing paragraph. Terms are read with
    :mod:`openmedreason.offline.vocab` (whole words, synonyms mapped to canonical terms).

Question kinds
    ``findings`` (short; Yes/No or True/False for ``binary_share`` of them, as B2 decides):
    recognition of what the image *is*, one of these, chosen by a seeded hash among those the
    text supports:

    * **modality** - answer: the panel's A2 modality mapped to the lexicon (else the modality the
      text names most); distractors from a fixed, homogeneous pool for the answer's kind
      (radiology modalities; ophthalmic/endoscopic/skin photography; microscopy techniques;
      chart types). Western blots and schematics have no homogeneous pool and are declined.
    * **stain** (microscopy only) - answer: the first stain the text names; distractors from the
      common histochemical stains, never one equivalent to the answer (Wright vs Giemsa are
      both Romanowsky stains).
    * **plane** - axial/coronal/sagittal for CT, MRI and PET; PA/AP/lateral for radiographs;
      declined when the text names two planes of the same kind (a compound figure).

    ``anatomy`` (short): the first organ/region the text names (sub-caption first); a body
    region ("Which body region…"), an organ ("Which organ…" / "From which organ was this tissue
    obtained?" for microscopy) or a tissue ("Which tissue…"); distractors of the same level
    from *other* body regions than any the text names.

    ``normal_abnormal`` (short and long; always A = Normal / B = Abnormal):
    :func:`openmedreason.offline.vocab.normal_abnormal` on the text; declined when it has no
    cue or conflicting cues. The long stem adds only the patient's age and sex when the text
    states them ("A 51 years old male" → "a 51-year-old man"); without them the long style is
    declined (nothing non-visual to add, and details are never invented).

    Every stem is fixed wording that names neither the answer nor the finding; the distractor
    order and the choice among kinds use a sha256 hash of ``(seed, question id, …)``, so the
    engine is deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from openmedreason.curate.checks import descriptive_sentences, hash_unit
from openmedreason.offline import vocab
from openmedreason.offline.vocab import MODALITIES
from openmedreason.records import Panel
from openmedreason.taxonomy import BINARY_OPTIONS

#: category keys the offline engine can generate (offline B1 assigns only these)
OFFLINE_CATEGORIES: tuple[str, ...] = ("findings", "anatomy", "normal_abnormal")


@dataclass(frozen=True)
class Draft:
    stem: str
    options: list[str]
    answer_index: int
    kind: str


@dataclass(frozen=True)
class Decline:
    detail: str


# --------------------------------------------------------------------------------------------
# option labels and distractor pools
# --------------------------------------------------------------------------------------------

MODALITY_LABELS: dict[str, str] = {
    "CT": "Computed tomography (CT)",
    "MRI": "Magnetic resonance imaging (MRI)",
    "Ultrasound": "Ultrasonography",
    "X-ray": "Plain radiography (X-ray)",
    "Mammography": "Mammography",
    "Angiography": "Catheter angiography",
    "PET": "Positron emission tomography (PET)",
    "Nuclear medicine": "Scintigraphy (nuclear medicine)",
    "OCT": "Optical coherence tomography (OCT)",
    "Fluoroscopy": "Fluoroscopy",
    "Fundus photograph": "Colour fundus photography",
    "Endoscopy": "Endoscopy",
    "Dermoscopy": "Dermoscopy",
    "Clinical photograph": "Clinical photography",
    "Histology": "Histological tissue section",
    "Immunohistochemistry": "Immunohistochemistry",
    "Immunofluorescence": "Immunofluorescence microscopy",
    "Electron microscopy": "Electron microscopy",
    "Light microscopy": "Blood smear or cytology preparation",
    "Bar chart": "Bar chart",
    "Scatter plot": "Scatter plot",
    "Survival curve": "Kaplan-Meier survival curve",
    "Flow chart": "Flow chart",
    "Line graph": "Line graph",
    "Box plot": "Box plot",
    "Forest plot": "Forest plot",
    "Heat map": "Heat map",
}

_RAD = ("CT", "MRI", "Ultrasound", "X-ray", "PET", "Nuclear medicine", "Angiography")
_MIC = ("Histology", "Immunohistochemistry", "Immunofluorescence", "Electron microscopy", "Light microscopy")
_PLOT = ("Bar chart", "Scatter plot", "Survival curve", "Line graph", "Box plot", "Forest plot", "Heat map", "Flow chart")
#: answer modality -> the modalities its distractors are drawn from
MODALITY_POOLS: dict[str, tuple[str, ...]] = {
    **{m: _RAD for m in (*_RAD, "Mammography", "Fluoroscopy")},
    "OCT": ("Fundus photograph", "Ultrasound", "CT", "MRI", "Angiography"),
    "Fundus photograph": ("OCT", "Endoscopy", "Dermoscopy", "Ultrasound", "Angiography"),
    "Endoscopy": ("Dermoscopy", "Fundus photograph", "Ultrasound", "CT", "X-ray"),
    "Dermoscopy": ("Endoscopy", "Fundus photograph", "Ultrasound", "Histology"),
    "Clinical photograph": ("Endoscopy", "X-ray", "CT", "Ultrasound", "MRI"),
    **{m: _MIC for m in _MIC},
    **{m: _PLOT for m in _PLOT},
}
MODALITY_STEMS: dict[str, str] = {
    "Radiology": "Which imaging modality was used to acquire this image?",
    "Visible light photography": "Which imaging modality was used to acquire this image?",
    "Microscopy": "Which microscopy technique produced this image?",
    "Plots and Charts": "What type of chart is this?",
}

STAIN_LABELS: dict[str, str] = {
    "H&E": "Hematoxylin and eosin (H&E)",
    "PAS": "Periodic acid-Schiff (PAS)",
    "Giemsa": "Giemsa",
    "Wright stain": "Wright stain",
    "Masson trichrome": "Masson trichrome",
    "Silver stain": "Silver stain",
    "Gram stain": "Gram stain",
    "Ziehl-Neelsen": "Ziehl-Neelsen",
    "Congo red": "Congo red",
    "Prussian blue": "Prussian blue (Perls)",
    "Alcian blue": "Alcian blue",
    "Oil Red O": "Oil Red O",
    "Toluidine blue": "Toluidine blue",
    "Elastic stain": "Elastic van Gieson",
    "Mucicarmine": "Mucicarmine",
    "Papanicolaou": "Papanicolaou",
    "Immunohistochemistry": "Immunohistochemistry",
    "Immunofluorescence": "Immunofluorescence",
}
#: stains that could both be right for the same preparation: never answer and distractor together
STAIN_EQUIVALENT: tuple[frozenset[str], ...] = (
    frozenset({"Giemsa", "Wright stain"}),
    frozenset({"Immunohistochemistry", "Immunofluorescence"}),
)
STAIN_POOL = ("H&E", "PAS", "Masson trichrome", "Giemsa", "Silver stain", "Congo red", "Prussian blue",
              "Ziehl-Neelsen", "Immunohistochemistry", "Alcian blue", "Toluidine blue", "Elastic stain")

SECTION_PLANES = ("Axial", "Coronal", "Sagittal", "Oblique")
PROJECTIONS = ("Posteroanterior (PA)", "Anteroposterior (AP)", "Lateral", "Oblique")
SECTION_MODALITIES = ("CT", "MRI", "PET")
PROJECTION_MODALITIES = ("X-ray", "Mammography", "Fluoroscopy")

ANATOMY_REGIONS = ("Chest", "Abdomen", "Pelvis", "Neck", "Skull", "Knee", "Shoulder", "Hand", "Foot")
ANATOMY_TISSUES = ("Blood", "Bone", "Skeletal muscle", "Skin", "Lymph node", "Blood vessel")
ANATOMY_LABELS = {"Blood": "Peripheral blood", "Skull": "Head (skull)", "Blood vessel": "Blood vessel wall"}
#: never distractors: they overlap too many regions (a chest radiograph shows the spine)
ANATOMY_NO_DISTRACTOR = ("Spine", "Bone")

MODALITY_NOUNS = {
    "X-ray": "radiograph", "CT": "CT image", "MRI": "MR image", "Ultrasound": "ultrasound image",
    "Fundus photograph": "fundus photograph", "OCT": "OCT scan", "Endoscopy": "endoscopic image",
    "Dermoscopy": "dermoscopic image", "Histology": "tissue section", "Light microscopy": "smear",
    "Immunohistochemistry": "stained section", "Mammography": "mammogram", "Angiography": "angiogram",
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def panel_text(panel: Panel, image_scope: str) -> list[str]:
    """The texts read, most specific first."""
    if image_scope == "full":
        return [t for t in (panel.caption, panel.all_context()) if t]
    return [t for t in (panel.sub_caption, panel.context or panel.all_context(), panel.caption) if t]


def _first_terms(texts: list[str], cls: str) -> list[str]:
    out: list[str] = []
    for t in texts:
        for term in vocab.find_terms(t, cls):
            if term not in out:
                out.append(term)
    return out


def _pick(candidates: list[str], n: int, seed: int, key: str, salt: str) -> list[str]:
    return sorted(candidates, key=lambda c: (hash_unit(salt, seed, key, c), c))[:n]


def panel_modality(panel: Panel, texts: list[str], image_scope: str) -> str | None:
    if image_scope == "panel" and panel.modality:
        if panel.modality in MODALITIES:
            return panel.modality
        found = vocab.find_terms(panel.modality, "modality")
        if found:
            return found[0]
    return vocab.detect_modality("\n".join(texts))[1]


_AGE_SEX = re.compile(
    r"\b(\d{1,3})[\s-]*(?:years?|yrs?|y)[\s-]*old\b[\s,]*(male|female|man|woman|boy|girl|gentleman|lady)?"
    r"|\b(\d{1,3})[\s-]*(?:year|yr)[\s-]*old\b",
    re.I,
)
_SEX_WORDS = {"male": "man", "man": "man", "gentleman": "man", "female": "woman", "woman": "woman", "lady": "woman",
              "boy": "boy", "girl": "girl"}


def age_sex(text: str) -> str | None:
    """"a 51-year-old man" from "A 51 years old male with …", or None."""
    m = _AGE_SEX.search(text or "")
    if not m:
        return None
    age = m.group(1) or m.group(3)
    sex = _SEX_WORDS.get((m.group(2) or "").lower())
    if sex is None:
        after = (text[m.end(): m.end() + 20] or "").lower()
        sex = next((v for k, v in _SEX_WORDS.items() if re.match(rf"\s*{k}\b", after)), "patient")
    return f"{age}-year-old {sex}"


# --------------------------------------------------------------------------------------------
# question kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """A recognition item: the answer label, distractor labels and stem templates."""

    kind: str
    answer: str
    distractors: list[str]
    stem: str
    yes_no: str  # "{label}" placeholder
    true_false: str


def _modality_item(panel: Panel, texts: list[str], scope: str, seed: int, key: str) -> _Item | str:
    modality = panel_modality(panel, texts, scope)
    if modality is None:
        return "no modality named in the text"
    pool = MODALITY_POOLS.get(modality)
    if not pool:
        return f"no homogeneous distractor pool for modality {modality!r}"
    mentioned = set(_first_terms(texts, "modality"))
    cands = [m for m in pool if m != modality and m not in mentioned]
    if len(cands) < 3:
        return f"fewer than 3 distractors for modality {modality!r}"
    group = MODALITIES[modality][0]
    noun = "chart" if group == "Plots and Charts" else "image"
    return _Item("modality", MODALITY_LABELS[modality], [MODALITY_LABELS[m] for m in _pick(cands, 3, seed, key, "modality")],
                 MODALITY_STEMS[group],
                 "Was this image obtained by {label}?" if noun == "image" else "Is this chart a {label}?",
                 "True or false: this image was obtained by {label}." if noun == "image"
                 else "True or false: this chart is a {label}.")


def _stain_item(panel: Panel, texts: list[str], scope: str, seed: int, key: str) -> _Item | str:
    modality = panel_modality(panel, texts, scope)
    if modality is None or MODALITIES[modality][0] != "Microscopy":
        return "stain questions need a microscopy image"
    stains = _first_terms(texts, "stain")
    if not stains:
        return "no stain named in the text"
    answer = stains[0]
    if answer not in STAIN_LABELS:
        return f"no label for stain {answer!r}"
    blocked = set(stains)
    for eq in STAIN_EQUIVALENT:
        if answer in eq:
            blocked |= eq
    cands = [s for s in STAIN_POOL if s not in blocked]
    return _Item("stain", STAIN_LABELS[answer], [STAIN_LABELS[s] for s in _pick(cands, 3, seed, key, "stain")],
                 "Which staining method was used for this preparation?",
                 "Was this preparation stained with {label}?",
                 "True or false: this preparation was stained with {label}.")


def _plane_item(panel: Panel, texts: list[str], scope: str, seed: int, key: str) -> _Item | str:
    modality = panel_modality(panel, texts, scope)
    planes = _first_terms(texts, "plane")
    if not planes:
        return "no imaging plane or projection named in the text"
    kinds = {vocab.term("plane", p).attr for p in planes}
    if len(planes) > 1 and len(kinds) == 1:
        return f"several planes named ({', '.join(planes)}): cannot tell which one this image shows"
    for p in planes:
        kind = vocab.term("plane", p).attr
        if kind == "section" and modality in SECTION_MODALITIES:
            labels = SECTION_PLANES
            stem = "In which anatomical plane was this image acquired?"
            yn, tf = "Was this image acquired in the {label} plane?", "True or false: this image was acquired in the {label} plane."
        elif kind == "projection" and modality in PROJECTION_MODALITIES:
            labels = PROJECTIONS
            stem = "Which radiographic projection was used to obtain this image?"
            yn, tf = "Was this image obtained in the {label} projection?", "True or false: this image was obtained in the {label} projection."
        else:
            continue
        answer = p
        return _Item("plane", answer, [l for l in labels if l != answer], stem, yn, tf)
    return f"plane(s) {planes} do not fit modality {modality!r}"


def _anatomy_item(panel: Panel, texts: list[str], scope: str, seed: int, key: str) -> _Item | str:
    # captions describe the image; from the other text only sentences that describe an image
    # ("muscle ache" in a case history is not what the radiograph shows)
    captions = [panel.caption] if scope == "full" else [panel.sub_caption, panel.caption]
    read = [t for t in captions if t] + [s for t in texts if t not in captions for s in descriptive_sentences(t)]
    found = _first_terms(read, "anatomy")
    if not found:
        return "no organ or body region named in the caption or an image-describing sentence"
    answer = found[0]
    modality = panel_modality(panel, texts, scope)
    group = MODALITIES[modality][0] if modality else panel.modality_group
    if answer in ANATOMY_TISSUES and group not in (None, "Microscopy"):
        return f"tissue {answer!r} named, but a {group} image does not show a tissue type"
    if answer in ANATOMY_REGIONS and group == "Microscopy":
        return f"body region {answer!r} named, but a microscopy image does not show a body region"
    regions = {vocab.term("anatomy", a).attr for a in found}
    if answer in ANATOMY_REGIONS:
        level, same = "region", ANATOMY_REGIONS
        stem = "Which body region is shown in this image?"
    elif answer in ANATOMY_TISSUES:
        level, same = "tissue", ANATOMY_TISSUES
        stem = "Which tissue or specimen type is shown in this image?"
        regions = set()  # tissues are not bound to a region
    else:
        level = "organ"
        same = tuple(t.canonical for t in vocab.terms("anatomy")
                     if t.canonical not in ANATOMY_REGIONS and t.canonical not in ANATOMY_TISSUES)
        micro = group == "Microscopy"
        stem = "From which organ was this tissue obtained?" if micro else "Which organ is the main subject of this image?"
    found_set = set(found)
    cands = [c for c in same if c != answer and c not in found_set and c not in ANATOMY_NO_DISTRACTOR
             and (level == "tissue" or vocab.term("anatomy", c).attr not in regions)]
    if len(cands) < 3:
        return f"fewer than 3 distractors for {level} {answer!r}"
    label = lambda a: ANATOMY_LABELS.get(a, a)  # noqa: E731
    return _Item("anatomy", label(answer), [label(c) for c in _pick(cands, 3, seed, key, "anatomy")], stem, "", "")


_FINDING_KINDS = (("stain", _stain_item), ("plane", _plane_item), ("modality", _modality_item))


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def generate(panel: Panel, category: str, style: str, answer_format: str, image_scope: str, seed: int,
             key: str) -> Draft | Decline:
    """One offline question for (panel, category, style, answer format, scope), or a Decline."""
    if category not in OFFLINE_CATEGORIES:
        return Decline(f"offline engine: category {category!r} is not supported "
                       f"(supported: {', '.join(OFFLINE_CATEGORIES)})")
    texts = panel_text(panel, image_scope)
    if category == "normal_abnormal":
        return _normal_abnormal(panel, texts, style, image_scope)
    if style != "short":
        return Decline(f"offline engine: no {style} stems for {category!r}")
    if category == "anatomy":
        item = _anatomy_item(panel, texts, image_scope, seed, key)
        if isinstance(item, str):
            return Decline(f"offline engine: {item}")
        return _standard(item, seed, key)
    # findings: recognition of modality / stain / plane, a hashed choice among those available
    reasons: list[str] = []
    items: list[_Item] = []
    for _, make in _FINDING_KINDS:
        item = make(panel, texts, image_scope, seed, key)
        (reasons.append(item) if isinstance(item, str) else items.append(item))
    if not items:
        return Decline("offline engine: " + "; ".join(reasons))
    item = items[int(hash_unit("finding-kind", seed, key) * len(items))]
    if answer_format in ("yes_no", "true_false"):
        truth = hash_unit("binary-truth", seed, key) < 0.5
        label = item.answer if truth else item.distractors[0]
        first = label.split()[0]
        if item.kind in ("modality", "plane") and first[1:] == first[1:].lower() and first[1:].isalpha():
            label = label[0].lower() + label[1:]  # "computed tomography (CT)", "axial"
        template = item.yes_no if answer_format == "yes_no" else item.true_false
        yes, no = BINARY_OPTIONS[answer_format]
        return Draft(template.format(label=label), [yes, no], 0 if truth else 1, item.kind)
    return _standard(item, seed, key)


def _standard(item: _Item, seed: int, key: str) -> Draft:
    # the answer goes first here; B2 shuffles and balances the letters afterwards
    return Draft(item.stem, [item.answer, *item.distractors], 0, item.kind)


def _normal_abnormal(panel: Panel, texts: list[str], style: str, image_scope: str) -> Draft | Decline:
    verdict = vocab.normal_abnormal("\n".join(texts))
    if verdict is None:
        return Decline("offline engine: the text has no normal/abnormal cue, or conflicting ones")
    modality = panel_modality(panel, texts, image_scope)
    noun = MODALITY_NOUNS.get(modality or "", "image")
    if style == "short":
        stem = f"Is the appearance in this {noun} normal or abnormal?"
    else:
        who = age_sex("\n".join(texts))
        if who is None:
            return Decline("offline engine: a long stem needs non-visual clinical facts (age, sex) and the text states none")
        article = "an" if who[0] in "8" or who.startswith(("11-", "18-")) else "a"
        stem = f"This {noun} is from {article} {who}. Is its appearance normal or abnormal?"
    return Draft(stem, list(BINARY_OPTIONS["normal_abnormal"]), 0 if verdict == "normal" else 1, "normal_abnormal")


__all__ = ["Decline", "Draft", "OFFLINE_CATEGORIES", "age_sex", "generate", "panel_text"]
