"""Pydantic records that flow between pipeline steps.

On disk every record type is a Parquet table whose columns are the model's fields; nested models
and lists become Arrow structs and lists. Rejected records are stored with all their fields plus
the ``reject_*`` columns (see :mod:`openmedreason.run.store`).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """Base class: every record has a stable, unique ``id``."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str] = "record"
    id: str


class CitingParagraph(BaseModel):
    """A paragraph of the article body that cites the figure."""

    model_config = ConfigDict(extra="forbid")
    text: str
    mention: str = Field(description="text of the figure mention(s), e.g. 'Fig. 2B–D'; several joined by ' | '")
    panels: list[str] = Field(default_factory=list, description="panel letters the mention names; empty = whole figure")
    section: str | None = Field(default=None, description="title of the enclosing section, when known")


class Provenance(BaseModel):
    """Who produced a field: the step, the engine (offline or llm) and, for LLM output, the model
    id as the server reported it, the prompt template ``name@version`` and the cache key."""

    model_config = ConfigDict(extra="forbid")
    step: str
    engine: str = Field(description="offline | llm")
    model: str | None = None
    template: str | None = None
    cache_key: str | None = None


class Panel(Record):
    """One figure panel (or a whole figure when it has no panels) with its article metadata."""

    kind: ClassVar[str] = "panel"

    # where it came from
    source: str = Field(description="path of the source file (XML, package or record file)")
    source_kind: str = Field(description="jats | oa_package | records")
    article_id: str = Field(description="stable article key: PMCID, else DOI, else file stem")

    # article
    pmcid: str | None = None
    doi: str | None = None
    title: str | None = None
    journal: str | None = None
    year: int | None = None
    article_type: str | None = None
    license: str = Field(default="unknown", description="normalised licence code, e.g. cc-by, cc0, cc-by-nc-nd, unknown")
    license_url: str | None = None
    license_text: str | None = None

    # figure
    figure_id: str | None = None
    figure_label: str | None = None
    caption_title: str | None = None
    caption: str = ""
    graphic_href: str | None = None

    # panel
    panel: str | None = Field(default=None, description="panel letter (upper case) or None for the whole figure")
    sub_caption: str | None = None
    panel_count: int = 1
    citing_paragraphs: list[CitingParagraph] = Field(default_factory=list)

    # images
    image_path: str | None = Field(default=None, description="panel image when the source has one, else the figure")
    full_image_path: str | None = None

    # filled by A1 (pixel checks)
    image_width: int | None = None
    image_height: int | None = None

    # filled by A2 (text usability and panel context selection)
    context: str | None = Field(default=None, description="the citing text narrowed to this panel")
    modality_group: str | None = Field(
        default=None, description="Radiology | Microscopy | Visible light photography | Plots and Charts | Diagram"
    )
    modality: str | None = Field(default=None, description="secondary modality: CT, MRI, US, X-ray, histology, …")
    provenance: list[Provenance] = Field(default_factory=list)

    @property
    def shows_whole_figure(self) -> bool:
        """A panel of a compound figure whose source has no separate panel image: the image shown
        for it is the whole figure, so prompts must say which part is meant."""
        return self.panel is not None and (self.image_path is None or self.image_path == self.full_image_path)

    def all_context(self) -> str:
        """Every citing paragraph of the figure, in article order (the full-figure context)."""
        return "\n\n".join(p.text for p in self.citing_paragraphs)


class Task(Record):
    """B1 output: one panel assigned to one question category."""

    kind: ClassVar[str] = "task"
    panel: Panel
    category: str = Field(description="taxonomy key, see openmedreason.taxonomy")
    family: str
    provenance: list[Provenance] = Field(default_factory=list)


class Question(Record):
    """B2 output: one multiple-choice question about a panel (or its whole figure)."""

    kind: ClassVar[str] = "question"
    panel: Panel
    category: str
    family: str
    style: str = Field(description="short | long")
    image_scope: str = Field(description="panel | full")
    answer_format: str = Field(description="standard | normal_abnormal | yes_no | true_false")
    stem: str
    options: list[str]
    answer: str = Field(description="letter of the correct option")
    engine: str = Field(description="offline | llm")
    provenance: list[Provenance] = Field(default_factory=list)

    @property
    def letters(self) -> str:
        return "ABCDE"[: len(self.options)]

    @property
    def answer_text(self) -> str:
        return self.options[self.letters.index(self.answer)]

    @property
    def image_path(self) -> str | None:
        return self.panel.full_image_path if self.image_scope == "full" else self.panel.image_path

    def question_text(self) -> str:
        """The released ``question`` column: the stem, then one ``X. option`` line per option."""
        return self.stem + "\n" + "\n".join(f"{l}. {o}" for l, o in zip(self.letters, self.options))


class Check(BaseModel):
    """One verification verdict on a trace (C2)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    passed: bool
    detail: str | None = None


class Instance(Question):
    """C1/C2 output: a question with its reasoning trace ``<think>…</think>\n<answer>X</answer>``."""

    kind: ClassVar[str] = "instance"
    draft: str | None = None
    reasoning: str = ""
    checks: list[Check] = Field(default_factory=list)
