"""B1 clinical task assignment (METHOD §4, B1).

Step :class:`B1Tasks` (``b1_tasks``, version 1): Panel → Task, fan-out (``one_to_one`` False).
Config :class:`B1TasksConfig`; the pipeline sets ``engine`` (``offline`` | ``llm``).

For each panel kept by A2, pick every question category of the taxonomy
(:data:`openmedreason.taxonomy.CATEGORIES`) that the panel's text supports, and emit one
:class:`~openmedreason.records.Task` per category, id ``<panel id>|<category key>``, carrying
the panel, the category key and its family, and a :class:`Provenance` entry for this step.

LLM engine (template ``b1_tasks``)
    The model sees the modality A2 found, the sub-caption, the caption and the panel's context
    (``Panel.context`` from A2; the routed citing paragraphs when A2 has not run), all fenced
    as article text, plus the panel image at ``image_detail`` (low by default), and the list
    of the 19 categories (name and objective). It must choose every category for which the
    text states both the *what* (the fact a question would ask about) and the *why* (the
    text's own justification), and nothing only hinted at. Reply schema:
    ``{categories: [{name, evidence}]}``. Names are canonicalised with
    :func:`openmedreason.taxonomy.category` (key or name, case-insensitive; a trailing
    parenthetical or surrounding quotes are ignored); unknown names are dropped and logged
    (they are listed in the reject detail when nothing known is left); repeated categories
    count once; ``max_categories`` (default: no limit) keeps the first N in the model's order.
Offline engine (:mod:`openmedreason.offline.b1`)
    Only the categories the offline question generator can serve
    (:data:`openmedreason.curate.b2.OFFLINE_CATEGORIES`: findings, anatomy, normal vs abnormal),
    each when its vocabulary is present
    in the panel's text (sub-caption, caption, context).

Reject codes
    ``b1.no_category``: no category is supported (LLM: an empty or all-unknown list; offline:
    no vocabulary match). The rejected record is a Task with the panel, an empty ``category``
    and ``family`` and the id of the panel (the store writes rejects with the step's output
    schema, so a bare Panel would lose its fields). LLM failures reject with the engine's
    ``llm.*`` code in the same form, keeping the raw reply in the detail.
"""

from __future__ import annotations

import logging
import re
from typing import Literal, Sequence

from pydantic import BaseModel, Field

from openmedreason.curate.a2 import clean_markup, panel_texts, paragraphs_block, trim_sentences
from openmedreason.curate.common import llm_failure, llm_provenance, offline_provenance, scaled_estimate
from openmedreason.llm import Estimate, ImageInput, LLMRequest, Message, resolve_llm_config
from openmedreason.llm.step import LLMStep
from openmedreason.prompts import fence, load
from openmedreason.reasons import reason
from openmedreason.records import Panel, Provenance, Task
from openmedreason.run.steps import Rejected, StepConfig, StepResult
from openmedreason.taxonomy import CATEGORIES, Category, category

log = logging.getLogger(__name__)

NO_CATEGORY = reason("b1.no_category", "the panel's text supports no question category (none chosen, or only unknown names)")

TEMPLATE = "b1_tasks"


class B1TasksConfig(StepConfig):
    engine: Literal["offline", "llm"] = Field(default="offline", description="offline vocabulary rules or an LLM (set by the pipeline)")
    max_categories: int | None = Field(default=None, ge=1, description="keep at most this many categories per panel (None = all)")
    image_detail: Literal["none", "low", "high", "auto"] = Field(
        default="low", description="LLM: the panel image sent with the request (none = text only)"
    )
    max_context_chars: int = Field(default=8000, ge=200, description="LLM: the context sent is trimmed to this at a sentence boundary")


class CategoryChoice(BaseModel):
    name: str = Field(description="a category name exactly as listed")
    evidence: str = Field(description="short quote or close paraphrase of the text giving the what and the why")


class CategoryAssignment(BaseModel):
    categories: list[CategoryChoice] = Field(description="every supported category; empty when none")


_PAREN = re.compile(r"\s*\([^)]*\)\s*$")


def canonical_category(name: str) -> Category | None:
    """The taxonomy category a model-written name means, or None when it is unknown."""
    n = name.strip().strip("\"'`“”‘’*").strip()
    for candidate in (n, _PAREN.sub("", n)):
        try:
            return category(candidate)
        except KeyError:
            continue
    return None


def resolve_choices(names: Sequence[str], max_categories: int | None = None) -> tuple[list[Category], list[str]]:
    """(known categories, de-duplicated in order and capped; unknown names as given)."""
    known: dict[str, Category] = {}
    unknown: list[str] = []
    for name in names:
        cat = canonical_category(name)
        if cat is None:
            unknown.append(name)
        else:
            known.setdefault(cat.key, cat)
    cats = list(known.values())
    if max_categories is not None:
        cats = cats[:max_categories]
    return cats, unknown


def categories_block() -> str:
    """The taxonomy as the prompt lists it: one line per category, name, objective, family."""
    return "\n".join(f"- {c.name}: {c.objective} ({c.family})" for c in CATEGORIES)


def make_tasks(panel: Panel, cats: Sequence[Category], prov: Provenance) -> list[Task]:
    return [
        Task(id=f"{panel.id}|{c.key}", panel=panel, category=c.key, family=c.family, provenance=[prov]) for c in cats
    ]


def rejected_task(panel: Panel, code: str, prov: Provenance | None = None, detail: str | None = None, value: float | None = None) -> Rejected:
    """A B1 reject: a Task with the panel and no category (see module doc)."""
    rec = Task(id=panel.id, panel=panel, category="", family="", provenance=[prov] if prov else [])
    return Rejected(rec, code, value=value, detail=detail)


def panel_context(panel: Panel, max_chars: int) -> str:
    """A2's context for the panel, else its routed citing paragraphs (A2 not run)."""
    if panel.context:
        return trim_sentences(clean_markup(panel.context), max_chars)
    _, _, paras = panel_texts(panel)
    return paragraphs_block(paras, max_chars, with_mentions=False)


class B1Tasks(LLMStep):
    """B1: one Task per supported question category (see module doc)."""

    templates = (TEMPLATE,)
    name = "b1_tasks"
    version = "1"
    Config = B1TasksConfig
    output = Task
    one_to_one = False

    def __init__(self, config: B1TasksConfig | dict | None = None) -> None:
        super().__init__(config)
        self.uses_llm = self.config.engine == "llm"

    def request(self, panel: Panel) -> LLMRequest:
        cfg: B1TasksConfig = self.config  # type: ignore[assignment]
        tpl = load(TEMPLATE)
        sub, caption, _ = panel_texts(panel)
        if panel.modality_group:
            modality = panel.modality_group + (f" ({panel.modality})" if panel.modality else "")
        else:
            modality = "unknown"
        images: list[ImageInput] = []
        note = "No image is attached."
        if cfg.image_detail != "none" and (panel.image_path or panel.full_image_path):
            images.append(ImageInput(path=panel.image_path or panel.full_image_path, detail=cfg.image_detail))  # type: ignore[arg-type]
            note = (
                f"Attached: the figure image; panel {panel.panel} is one part of it."
                if panel.shows_whole_figure
                else "Attached: the panel image."
            )
        system, user = tpl.render(
            categories=categories_block(),
            modality=modality,
            sub_caption=fence("sub-caption", sub or None),
            caption=fence("caption", caption or None),
            context=fence("context", panel_context(panel, cfg.max_context_chars) or None),
            image_note=note,
        )
        return LLMRequest(
            self.name, tpl.name, tpl.version, [Message.system(system), Message.user(user, images)], CategoryAssignment, record_id=panel.id
        )

    def process(self, batch: Sequence[Panel]) -> StepResult[Task]:
        cfg: B1TasksConfig = self.config  # type: ignore[assignment]
        out: StepResult[Task] = StepResult()
        if cfg.engine == "offline":
            from openmedreason.offline.b1 import offline_categories

            prov = offline_provenance(self.name, self.version)
            for panel in batch:
                cats, evidence = offline_categories(panel)
                if cfg.max_categories is not None:
                    cats = cats[: cfg.max_categories]
                if cats:
                    out.kept.extend(make_tasks(panel, cats, prov))
                else:
                    out.rejected.append(rejected_task(panel, NO_CATEGORY, prov, detail=evidence))
            return out
        results = self.complete(self.request(p) for p in batch)
        for panel, r in zip(batch, results):
            if not r.ok:
                failed = llm_failure(panel, r, "category assignment")
                out.rejected.append(rejected_task(panel, failed.reason, detail=failed.detail))
                continue
            prov = llm_provenance(self.name, r)
            chosen: CategoryAssignment = r.parsed  # type: ignore[assignment]
            cats, unknown = resolve_choices([c.name for c in chosen.categories], cfg.max_categories)
            if unknown:
                log.info("b1_tasks %s: dropped %d unknown category name(s): %s", panel.id, len(unknown), unknown)
            if not cats:
                detail = "the model chose no category" if not unknown else f"dropped {len(unknown)} unknown category name(s): {unknown}"
                out.rejected.append(rejected_task(panel, NO_CATEGORY, prov, detail=detail, value=len(unknown)))
                continue
            out.kept.extend(make_tasks(panel, cats, prov))
        return out

    def estimate(self, sample: Sequence[Panel], total: int) -> dict:
        if self.config.engine != "llm":  # type: ignore[attr-defined]
            return Estimate(notes=["offline engine: no LLM calls"]).as_dict()
        config = resolve_llm_config(self.name, self.ctx.llm if self.ctx else {})
        sample = list(sample)
        est = scaled_estimate(config, [self.request(p) for p in sample], len(sample), total)
        est.notes.append("one call per panel")
        return est.as_dict()


__all__ = [
    "B1Tasks",
    "B1TasksConfig",
    "CategoryAssignment",
    "CategoryChoice",
    "NO_CATEGORY",
    "canonical_category",
    "categories_block",
    "make_tasks",
    "panel_context",
    "rejected_task",
    "resolve_choices",
]
