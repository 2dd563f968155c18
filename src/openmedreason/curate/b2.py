"""B2 constrained USMLE-style question construction (METHOD §4, B2).

Step :class:`B2Mcq` (``b2_mcq``, version 1): Task → Question, fan-out (``one_to_one`` False).
One Task (a panel and one category) gives one question per stem style of its category
(:attr:`openmedreason.taxonomy.Category.styles`: short, long, or both); each question is kept
or rejected, so every Task leaves the step with at least one record. Config
:class:`B2McqConfig`; the pipeline sets ``engine`` (``offline`` | ``llm``).

Question id: ``<task id>|<style>``.

Seeded, deterministic plan (both engines, :func:`plan_questions`)
    * image scope: short questions of ``panel_only_short`` categories (findings, anatomy,
      annotation, spatial) always show the panel; so does every question of a panel without a
      distinct whole-figure image. Otherwise the whole figure is shown when
      ``u(seed|panel id|category|style) < full_figure_share`` (0.30), where ``u`` maps the
      sha256 of the string to [0, 1). Full-figure questions get the whole caption and every
      citing paragraph as context; panel questions the sub-caption and the A2 context.
    * answer format: ``normal_abnormal`` for that category (always); for the "sometimes"-binary
      categories (findings, diagnosis, differential) binary when
      ``u(seed|panel id|category|style|binary) < binary_share`` (0.20), then Yes/No or
      True/False by a second hash (50/50); otherwise ``standard`` (4–5 options).

LLM engine
    One structured call per question (template ``b2_mcq``): our own USMLE-style instructions
    (one objective; short = one image-forward sentence; long = only real non-visual clinical
    facts; the image essential; no leakage of the finding; no mention of captions, figures,
    panels or the provided text; homogeneous distractors of similar length; an explicit decline
    with a reason for unsupported / ambiguous / text-answerable / unseen-panel / leaking /
    invented-detail cases). The response schema is :class:`McqDraft`
    ``{valid, invalid_reason, stem, options, answer_index}``: the answer is an index into the
    options, so the model never chooses a letter. Article text (sub-caption, caption, context)
    is fenced (:func:`openmedreason.prompts.fence`); the image (panel or whole figure, by scope)
    is attached. ``valid=false`` rejects with ``b2.invalid`` and the model's reason as detail;
    LLM failures reject with the engine's ``llm.*`` code.

Offline engine
    :mod:`openmedreason.offline.b2`: questions for :data:`OFFLINE_CATEGORIES` (findings as
    modality/stain/plane recognition, anatomy, normal vs abnormal) built from the panel's
    vocabulary; other categories and panels whose vocabulary gives no answer are rejected
    ``b2.invalid`` with the reason in the detail.

Then, in both engines
    1. binary formats: the two options are mapped onto the canonical pair (``b2.binary_options``
       when they are not it);
    2. the deterministic checks of :mod:`openmedreason.curate.checks` (codes ``b2.empty_stem``,
       ``b2.stem_length``, ``b2.option_count``, ``b2.answer_not_in_options``,
       ``b2.duplicate_options``, ``b2.all_of_the_above``, ``b2.option_length``,
       ``b2.source_reference``, ``b2.leak_answer``, ``b2.leak_finding``, ``b2.leak_caption``);
    3. letters: standard questions that passed are shuffled with balanced answer positions
       (:func:`~openmedreason.curate.checks.balance_positions` over the batch, per option
       count; :func:`~openmedreason.curate.checks.shuffle_options`); binary questions keep the
       canonical order (A = Normal / Yes / True).

Rejected questions are stored as Question records with whatever the generator produced (stem,
options, and ``answer`` = the letter of the correct option in the generator's order, or "" when
there is none), so a reviewer can see what leaked. Kept questions record ``engine`` and carry
the Task's provenance plus one entry for this step (offline: ``offline-b2_mcq@1``; LLM: model,
``b2_mcq@<version>`` and cache key).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

from pydantic import BaseModel, Field

from openmedreason.curate import checks
from openmedreason.curate.checks import INVALID, CheckSettings, hash_unit
from openmedreason.llm import Estimate, LLMRequest, Message, estimate, resolve_llm_config
from openmedreason.curate.common import llm_provenance, offline_provenance
from openmedreason.llm.step import LLMStep
from openmedreason.offline import b2 as offline_b2
from openmedreason.offline.b2 import OFFLINE_CATEGORIES  # noqa: F401  (re-exported for B1)
from openmedreason.prompts import fence, load
from openmedreason.records import Panel, Provenance, Question, Task
from openmedreason.run.steps import Rejected, StepConfig, StepResult
from openmedreason.taxonomy import BINARY_OPTIONS, BINARY_SHARE, FULL_FIGURE_SHARE, Category, category as get_category

log = logging.getLogger(__name__)

TEMPLATE = "b2_mcq"
#: questions per panel assumed by ``--dry-run`` when it samples panels rather than tasks
ASSUMED_QUESTIONS_PER_PANEL = 3.0


class McqDraft(BaseModel):
    """The generator's reply (LLM response schema)."""

    valid: bool = Field(description="false to decline: no fair, image-dependent, single-best-answer question is possible")
    invalid_reason: str | None = Field(description="why the question was declined; null when valid")
    stem: str = Field(description="the question stem; empty when declined")
    options: list[str] = Field(description="the options, without letters; empty when declined")
    answer_index: int = Field(description="0-based index of the correct option in options")


class B2McqConfig(StepConfig):
    engine: Literal["offline", "llm"] = Field("offline", description="offline heuristics or the LLM (set by the pipeline)")
    seed: int = Field(0, description="seed of every hashed choice: scope, format, letters, offline distractors")
    full_figure_share: float = Field(FULL_FIGURE_SHARE, ge=0, le=1, description="share of eligible questions that show the whole figure")
    binary_share: float = Field(BINARY_SHARE, ge=0, le=1, description="share of 'sometimes'-binary questions asked as Yes/No or True/False")
    max_short_stem_chars: int = Field(300, ge=20, description="longest short (image-forward) stem")
    max_long_stem_chars: int = Field(1200, ge=20, description="longest long (vignette) stem")
    max_option_ratio: float = Field(3.0, gt=1, description="longest/shortest option length ratio allowed (standard formats)")
    option_length_floor: int = Field(12, ge=1, description="options shorter than this count as this long in the ratio")
    leak_answer_overlap: float = Field(0.5, gt=0, le=1, description="share of the answer's distinctive words in the stem that rejects")
    leak_ngram: int = Field(5, ge=2, description="shared run of content words with the caption/descriptive context that rejects")
    balance_letters: bool = Field(True, description="balance answer positions over each batch (else per-question hash)")
    max_context_chars: int = Field(6000, ge=200, description="context sent to the LLM is cut to this many characters")
    max_tokens: int = Field(800, ge=64, description="output token limit of one generation call")

    def check_settings(self) -> CheckSettings:
        return CheckSettings(
            max_short_stem_chars=self.max_short_stem_chars, max_long_stem_chars=self.max_long_stem_chars,
            max_option_ratio=self.max_option_ratio, option_length_floor=self.option_length_floor,
            leak_answer_overlap=self.leak_answer_overlap, leak_ngram=self.leak_ngram,
        )


@dataclass(frozen=True)
class QuestionPlan:
    """One question to write: the Task, its style and the seeded choices."""

    task: Task
    cat: Category
    style: str
    image_scope: str
    answer_format: str

    @property
    def id(self) -> str:
        return f"{self.task.id}|{self.style}"

    @property
    def panel(self) -> Panel:
        return self.task.panel


def has_full_image(panel: Panel) -> bool:
    return bool(panel.full_image_path) and panel.full_image_path != panel.image_path


def image_scope(panel: Panel, cat: Category, style: str, seed: int, share: float = FULL_FIGURE_SHARE) -> str:
    if (cat.panel_only_short and style == "short") or not has_full_image(panel):
        return "panel"
    return "full" if hash_unit(seed, panel.id, cat.key, style) < share else "panel"


def answer_format(panel: Panel, cat: Category, style: str, seed: int, share: float = BINARY_SHARE) -> str:
    if cat.binary == "always":
        return "normal_abnormal"
    if cat.binary == "sometimes" and hash_unit(seed, panel.id, cat.key, style, "binary") < share:
        return "yes_no" if hash_unit(seed, panel.id, cat.key, style, "binary-kind") < 0.5 else "true_false"
    return "standard"


def plan_questions(task: Task, config: B2McqConfig) -> list[QuestionPlan]:
    cat = get_category(task.category)
    return [
        QuestionPlan(task, cat, style, image_scope(task.panel, cat, style, config.seed, config.full_figure_share),
                     answer_format(task.panel, cat, style, config.seed, config.binary_share))
        for style in cat.styles
    ]


def question_texts(plan: QuestionPlan) -> tuple[str, str]:
    """(caption, context) the question is grounded in and checked against, by scope."""
    p = plan.panel
    if plan.image_scope == "full":
        return p.caption or "", p.all_context() or ""
    caption = "\n".join(t for t in (p.sub_caption, p.caption) if t)
    return caption, p.context or p.all_context() or ""


# --------------------------------------------------------------------------------------------
# prompt pieces (ours; see prompts/b2_mcq.md)
# --------------------------------------------------------------------------------------------

STYLE_RULES = {
    "short": "short. One image-forward sentence that asks the question; no patient details, no vignette.",
    "long": "long. Start with a brief vignette made only of non-visual clinical facts the text states "
            "(age, sex, complaint, history, laboratory results, treatment so far), then ask the question. "
            "Never describe the image in the vignette and never add facts the text does not state. "
            "If the text has no such facts, decline.",
}
FORMAT_RULES = {
    "standard": "standard: 4 or 5 options, exactly one correct.",
    "normal_abnormal": 'binary: the options are exactly ["Normal", "Abnormal"] in this order; ask whether the '
                       "appearance is normal or abnormal without naming any finding.",
    "yes_no": 'binary: the options are exactly ["Yes", "No"] in this order; ask a yes/no question whose '
              "answer needs the image.",
    "true_false": 'binary: the options are exactly ["True", "False"] in this order; give a statement about '
                  "the image to be judged true or false.",
}
CATEGORY_RULES = {
    "annotation": "You may refer to a visible marker that is not a letter (an arrow, arrowhead, circle, box, "
                  "star, bracket or outline) as long as the attached image shows it; ask what it marks.",
    "spatial": 'You may refer to the finding only neutrally ("the abnormality", "the lesion") and ask where it '
               "lies; do not mention any marker.",
    "counting": "Ask for a count of something visible in the attached image; the stem must not contain the number.",
}
DEFAULT_CATEGORY_RULE = "Do not mention arrows, boxes, labels or other markers."


def _image_note(plan: QuestionPlan) -> str:
    if plan.image_scope == "full":
        return "the whole figure (all of its panels)"
    p = plan.panel
    if p.shows_whole_figure:
        # the source has no separate panel image: the whole figure is attached, so say which part
        return f"the whole figure; the question is about its panel {p.panel} only"
    if p.panel:
        return "one panel of a larger figure (only this panel is visible to the student)"
    return "the figure image"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


# --------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------


class B2Mcq(LLMStep):
    templates = (TEMPLATE,)
    name = "b2_mcq"
    version = "1"
    Config = B2McqConfig
    output = Question
    one_to_one = False

    def __init__(self, config: B2McqConfig | dict | None = None) -> None:
        super().__init__(config)
        self.uses_llm = self.config.engine == "llm"  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ requests
    def request(self, plan: QuestionPlan) -> LLMRequest:
        cfg: B2McqConfig = self.config  # type: ignore[assignment]
        tpl = load(TEMPLATE)
        p = plan.panel
        if plan.image_scope == "full":
            sub_caption, caption, context = None, p.caption, p.all_context()
        else:
            sub_caption, caption, context = p.sub_caption, p.caption, p.context or p.all_context()
        system, user = tpl.render(
            category_name=plan.cat.name,
            family=plan.cat.family,
            objective=plan.cat.objective,
            category_rules=CATEGORY_RULES.get(plan.cat.key, DEFAULT_CATEGORY_RULE),
            style_rules=STYLE_RULES[plan.style],
            format_rules=FORMAT_RULES[plan.answer_format],
            modality=" / ".join(x for x in (p.modality_group, p.modality) if x) or "unknown",
            image_note=_image_note(plan),
            sub_caption=fence("sub-caption", sub_caption),
            caption=fence("caption", caption),
            context=fence("context", _cut(context or "", cfg.max_context_chars)),
        )
        image = p.full_image_path if plan.image_scope == "full" else p.image_path
        return LLMRequest(
            step=self.name, template=tpl.name, template_version=tpl.version,
            messages=[Message.system(system), Message.user(user, images=[image] if image else [])],
            response_model=McqDraft, overrides={"max_tokens": cfg.max_tokens}, record_id=plan.id,
        )

    # ------------------------------------------------------------------ processing
    def process(self, batch: Sequence[Task]) -> StepResult[Question]:
        cfg: B2McqConfig = self.config  # type: ignore[assignment]
        out: StepResult[Question] = StepResult()
        plans: list[QuestionPlan] = []
        for task in batch:
            try:
                plans.extend(plan_questions(task, cfg))
            except KeyError:
                out.rejected.append(Rejected(_skeleton(task), INVALID, detail=f"unknown question category {task.category!r}"))
        drafts: list[tuple[QuestionPlan, McqDraft | None, Provenance, str | None, str | None]] = []
        if cfg.engine == "llm":
            todo: list[QuestionPlan] = []
            for pl in plans:
                if pl.panel.full_image_path if pl.image_scope == "full" else pl.panel.image_path:
                    todo.append(pl)
                else:
                    out.rejected.append(Rejected(_question(pl, "", [], "", "llm", []), INVALID, detail="no image to show"))
            results = self.complete(self.request(pl) for pl in todo) if todo else []
            for pl, r in zip(todo, results):
                prov = llm_provenance(self.name, r) if r.cache_key else Provenance(
                    step=self.name, engine="llm", template=f"{TEMPLATE}@{load(TEMPLATE).version}")
                if not r.ok:
                    drafts.append((pl, None, prov, r.reason, r.detail or r.text))
                else:
                    drafts.append((pl, r.parsed, prov, None, None))  # type: ignore[arg-type]
        else:
            prov = offline_provenance(self.name, self.version)
            for pl in plans:
                d = offline_b2.generate(pl.panel, pl.cat.key, pl.style, pl.answer_format, pl.image_scope, cfg.seed, pl.id)
                if isinstance(d, offline_b2.Decline):
                    drafts.append((pl, McqDraft(valid=False, invalid_reason=d.detail, stem="", options=[], answer_index=0),
                                   prov, None, None))
                else:
                    drafts.append((pl, McqDraft(valid=True, invalid_reason=None, stem=d.stem, options=d.options,
                                                answer_index=d.answer_index), prov, None, None))
        passed: list[tuple[QuestionPlan, McqDraft, Provenance]] = []
        for pl, draft, prov, llm_reason, llm_detail in drafts:
            engine = prov.engine
            if draft is None:
                out.rejected.append(Rejected(_question(pl, "", [], "", engine, [prov]), llm_reason or "llm.invalid_output",
                                             detail=llm_detail))
                continue
            problem, draft = self.check(pl, draft)
            if problem is not None:
                code, value, detail = problem
                ok_index = 0 <= draft.answer_index < min(len(draft.options), len(checks.LETTERS))
                letter = checks.LETTERS[draft.answer_index] if ok_index else ""
                out.rejected.append(Rejected(_question(pl, draft.stem, list(draft.options), letter, engine, [prov]),
                                             code, value, detail))
                continue
            passed.append((pl, draft, prov))
        out.kept.extend(self.finish(passed))
        return out

    def check(self, plan: QuestionPlan, draft: McqDraft) -> tuple[checks.Problem | None, McqDraft]:
        """Decline marker, canonical binary pair, then every deterministic check. Returns the
        first problem (or None) and the draft with trimmed text and canonical binary options."""
        cfg: B2McqConfig = self.config  # type: ignore[assignment]
        if not draft.valid:
            return (INVALID, None, (draft.invalid_reason or "declined without a reason").strip()[:500]), draft
        stem = draft.stem.strip()
        options = [o.strip() for o in draft.options]
        idx = draft.answer_index
        if plan.answer_format in BINARY_OPTIONS:
            canon = checks.canonical_binary(options, idx, plan.answer_format)
            if isinstance(canon[0], str):  # a problem tuple
                return canon, draft.model_copy(update={"stem": stem, "options": options})  # type: ignore[return-value]
            options, idx = canon  # type: ignore[misc]
        clean = draft.model_copy(update={"stem": stem, "options": options, "answer_index": idx})
        caption, context = question_texts(plan)
        problem = checks.run_checks(stem, options, idx, category=plan.cat.key, style=plan.style,
                                    answer_format=plan.answer_format, caption=caption, context=context,
                                    settings=cfg.check_settings())
        return problem, clean

    def finish(self, passed: list[tuple[QuestionPlan, McqDraft, Provenance]]) -> list[Question]:
        """Shuffle standard questions with balanced answer positions; binary ones stay canonical."""
        cfg: B2McqConfig = self.config  # type: ignore[assignment]
        standard = [(pl, d) for pl, d, _ in passed if pl.answer_format not in BINARY_OPTIONS]
        positions: dict[str, int] = {}
        if cfg.balance_letters and standard:
            pos = checks.balance_positions([(pl.id, len(d.options)) for pl, d in standard], cfg.seed)
            positions = {pl.id: p for (pl, _), p in zip(standard, pos)}
        kept: list[Question] = []
        for pl, d, prov in passed:
            if pl.answer_format in BINARY_OPTIONS:
                options, letter = list(d.options), checks.LETTERS[d.answer_index]
            else:
                options, letter = checks.shuffle_options(d.options, d.answer_index, pl.id, cfg.seed, positions.get(pl.id))
            kept.append(_question(pl, d.stem, options, letter, prov.engine, [prov]))
        return kept

    # ------------------------------------------------------------------ dry run
    def estimate(self, sample: Sequence[Task | Panel], total: int) -> dict:
        if self.config.engine != "llm":  # type: ignore[attr-defined]
            return Estimate(notes=["offline engine: no LLM calls"]).as_dict()
        config = resolve_llm_config(self.name, self.ctx.llm if self.ctx else {})
        sample = list(sample)
        plans: list[QuestionPlan] = []
        per_input = 1.0
        note = ""
        for item in sample:
            if isinstance(item, Task):
                plans.extend(plan_questions(item, self.config))  # type: ignore[arg-type]
            else:  # panels (the dry run samples the last free step's output): a representative task
                task = Task(id=f"{item.id}|diagnosis", panel=item, category="diagnosis", family="Diagnosis")
                plans.append(plan_questions(task, self.config)[0])  # type: ignore[arg-type]
                per_input = ASSUMED_QUESTIONS_PER_PANEL
                note = (f"sampled panels, not tasks: assumed {ASSUMED_QUESTIONS_PER_PANEL:g} questions per panel "
                        "(B1 and A2 attrition unknown before the run)")
        reqs = [self.request(pl) for pl in plans]
        if not reqs:
            return Estimate(notes=["empty sample"]).as_dict()
        avg_chars = sum(sum(len(m.text) for m in r.messages) for r in reqs) / len(reqs)
        per = (len(plans) / len(sample)) if per_input == 1.0 else per_input
        n_calls = round(total * per)
        est = estimate(config, n_calls=n_calls, avg_prompt_chars=avg_chars, images_per_call=1.0,
                       output_tokens=min(self.config.max_tokens, 512))  # type: ignore[attr-defined]
        if note:
            est.notes.append(note)
        est.notes.append(f"{per:.2f} questions per input from a sample of {len(sample)}; scaled to {total} inputs")
        return est.as_dict()


def _question(plan: QuestionPlan, stem: str, options: list[str], letter: str, engine: str,
              prov: list[Provenance]) -> Question:
    return Question(
        id=plan.id, panel=plan.panel, category=plan.cat.key, family=plan.cat.family, style=plan.style,
        image_scope=plan.image_scope, answer_format=plan.answer_format, stem=stem, options=options, answer=letter,
        engine=engine, provenance=[*plan.task.provenance, *prov],
    )


def _skeleton(task: Task) -> Question:
    return Question(id=f"{task.id}|-", panel=task.panel, category=task.category, family=task.family, style="",
                    image_scope="panel", answer_format="standard", stem="", options=[], answer="", engine="",
                    provenance=list(task.provenance))


__all__ = [
    "ASSUMED_QUESTIONS_PER_PANEL", "B2Mcq", "B2McqConfig", "McqDraft", "OFFLINE_CATEGORIES", "QuestionPlan",
    "answer_format", "has_full_image", "image_scope", "plan_questions", "question_texts",
]
