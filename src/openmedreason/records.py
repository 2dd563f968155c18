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
