"""The one item schema every benchmark maps to, and the rubric unit of the PKR benchmark.

Our dataset's test split, the released ``neginb/OpenMedReason`` parquet and the standard medical
VQA sets (SLAKE, VQA-RAD, PathVQA, PMC-VQA, MedXpertQA-MM) all load into :class:`BenchItem`
(see :mod:`openmedreason.bench.loaders`); evaluation, decontamination and exports read only this.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AXES = ("perception", "knowledge", "rationale")
#: unit-id letter of each axis (units are numbered P1…, K1…, R1…)
AXIS_PREFIX = {"perception": "P", "knowledge": "K", "rationale": "R"}
Axis = Literal["perception", "knowledge", "rationale"]


class RubricUnit(BaseModel):
    """One PKR unit, with the released field names (METHOD §7)."""

    model_config = ConfigDict(extra="ignore")
    unit_id: str
    topic: str
    claim: str
    presence_question: str
    correctness_question: str
    source_quote: str
    importance: Literal["core", "supporting"] = "core"


class BenchItem(BaseModel):
    """One evaluation item.

    ``kind`` is ``mcq`` for lettered options (closed yes/no questions of the VQA sets become the
    two options ``Yes``/``No``) and ``open`` for free-text answers. For ``mcq`` items ``answer`` is
    the gold letter; for ``open`` items the gold text. An item has its image as ``image`` bytes or
    as an ``image_path`` (exactly one is set when the item has an image).
    """

    model_config = ConfigDict(extra="forbid")
    id: str
    benchmark: str = Field(description="omr-bench | slake | vqa-rad | pathvqa | pmc-vqa | medxpertqa-mm | <name>")
    split: str | None = None
    kind: Literal["mcq", "open"] = "mcq"
    question: str = Field(description="the stem only (options are in ``options``)")
    options: list[str] = Field(default_factory=list)
    answer: str = Field(description="gold letter (mcq) or gold text (open)")
    image: bytes | None = Field(default=None, repr=False)
    image_path: str | None = None
    cluster: str | None = Field(default=None, description="article / source-image id for clustered bootstrap; None = the item itself")
    category: str | None = None
    family: str | None = None
    modality: str | None = None
    reference_reasoning: str | None = None
    perception: list[RubricUnit] = Field(default_factory=list)
    knowledge: list[RubricUnit] = Field(default_factory=list)
    rationale: list[RubricUnit] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def letters(self) -> str:
        return "ABCDEFGHIJ"[: len(self.options)]

    @property
    def cluster_key(self) -> str:
        return self.cluster or self.id

    def units(self, axis: str) -> list[RubricUnit]:
        return list(getattr(self, axis))

    def has_rubric(self) -> bool:
        return any(getattr(self, a) for a in AXES)

    def question_text(self) -> str:
        """Stem then one ``X. option`` line per option (the released ``question`` column)."""
        if not self.options:
            return self.question
        return self.question + "\n" + "\n".join(f"{l}. {o}" for l, o in zip(self.letters, self.options))

    def image_bytes(self) -> bytes | None:
        if self.image is not None:
            return self.image
        if self.image_path:
            from pathlib import Path

            return Path(self.image_path).read_bytes()
        return None


class UnitJudgement(BaseModel):
    """A judge's verdict on one rubric unit for one response (METHOD §7).

    ``p``: presence 0 (absent, or only inside an option-elimination / counterfactual clause),
    1 (vague), 2 (clearly asserted). ``c``: correctness +1, −1, 0 (n/a); ``None`` when the judge
    cannot judge correctness (the offline lexical judge). ``error`` set means the judge failed on
    this unit: it is excluded from every score and counted.
    """

    model_config = ConfigDict(extra="forbid")
    unit_id: str
    axis: Axis
    p: int | None = Field(default=None, ge=0, le=2)
    c: int | None = Field(default=None, ge=-1, le=1)
    error: str | None = None
    note: str | None = None
