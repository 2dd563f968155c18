"""The question taxonomy of the method (METHOD §4): 19 categories in 5 families, as data.

``style`` says which stem styles a category gets (``short``, ``long`` or ``both``: one question
each); ``binary`` is the chance that a question of the category uses a canonical two-option
format (``always`` = Normal/Abnormal). ``panel_only_short``: short questions of these categories
always show the panel, never the whole figure. ``published`` is the category's instance count in
the published corpus (194,270 in all), for comparison in reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FAMILIES = ("Perception", "Diagnosis", "Management", "Risk", "Workup")
MODALITY_GROUPS = ("Radiology", "Microscopy", "Visible light photography", "Plots and Charts", "Diagram")


@dataclass(frozen=True)
class Category:
    key: str
    name: str
    family: str
    objective: str
    style: Literal["short", "long", "both"]
    binary: Literal["never", "always", "sometimes"]
    published: int
    panel_only_short: bool = False

    @property
    def styles(self) -> tuple[str, ...]:
        return ("short", "long") if self.style == "both" else (self.style,)


CATEGORIES: tuple[Category, ...] = (
    Category("findings", "Findings / description", "Perception", "identify the main visible finding or pattern", "short", "sometimes", 26938, True),
    Category("anatomy", "Anatomy / localization", "Perception", "identify the structure, tissue or organ shown", "short", "never", 25251, True),
    Category("normal_abnormal", "Normal vs abnormal", "Perception", "decide whether the appearance is normal or abnormal", "both", "always", 25109),
    Category("annotation", "Annotation / marker interpretation", "Perception", "interpret what an arrow, box or label marks", "short", "never", 15417, True),
    Category("spatial", "Spatial location on image", "Perception", "say where the finding lies in the image or the anatomy", "short", "never", 12135, True),
    Category("counting", "Counting", "Perception", "count structures, lesions or cells", "short", "never", 8934),
    Category("diagnosis", "Diagnosis", "Diagnosis", "give the most likely diagnosis from visual and clinical cues", "both", "sometimes", 18529),
    Category("mechanism", "Mechanism / pathophysiology", "Diagnosis", "explain the mechanism behind the finding", "short", "never", 17068),
    Category("differential", "Differential diagnosis", "Diagnosis", "tell the right diagnosis from plausible alternatives", "both", "sometimes", 13684),
    Category("severity", "Severity grading", "Diagnosis", "grade, stage or size up the extent", "both", "never", 2693),
    Category("management", "Next-step treatment / management", "Management", "choose the appropriate management", "long", "never", 6024),
    Category("surgery", "Surgery / operative management", "Management", "choose the surgical approach or operative decision", "long", "never", 4214),
    Category("drug", "Drug therapy / pharmacologic treatment", "Management", "choose the relevant drug or drug class", "long", "never", 1924),
    Category("complication", "Complication or adverse event", "Risk", "name the associated complication or adverse event", "long", "never", 3854),
    Category("prognosis", "Prognosis / risk assessment", "Risk", "judge the expected outcome or course", "both", "never", 3670),
    Category("symptom", "Symptom", "Risk", "link the finding to symptoms or signs", "both", "never", 2065),
    Category("safety", "Safety / contraindications", "Risk", "flag safety concerns or contraindications", "long", "never", 1736),
    Category("hereditary", "Hereditary / future risk", "Risk", "judge inherited risk or a genetic association", "both", "never", 54),
    Category("diagnostic_test", "Next-step diagnostic test or imaging", "Workup", "choose the appropriate follow-up test", "long", "never", 4971),
)

BY_KEY: dict[str, Category] = {c.key: c for c in CATEGORIES}
BY_NAME: dict[str, Category] = {c.name.lower(): c for c in CATEGORIES}

#: chance that a "sometimes"-binary category's question is binary (Yes/No or True/False)
BINARY_SHARE = 0.20
#: chance that a question not restricted to the panel shows the whole figure
FULL_FIGURE_SHARE = 0.30
#: canonical two-option formats: answer format -> options in canonical order
BINARY_OPTIONS = {
    "normal_abnormal": ("Normal", "Abnormal"),
    "yes_no": ("Yes", "No"),
    "true_false": ("True", "False"),
}


def category(key_or_name: str) -> Category:
    """Look a category up by key (``diagnosis``) or name (``Diagnosis``), case-insensitively."""
    k = key_or_name.strip()
    found = BY_KEY.get(k.lower()) or BY_NAME.get(k.lower())
    if found is None:
        raise KeyError(f"unknown question category {key_or_name!r}")
    return found
