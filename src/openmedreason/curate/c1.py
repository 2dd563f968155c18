"""C1 reasoning trace, draft then final (METHOD §5): Question → Instance, one to one.

Step ``c1_trace`` (version 1). Its output is an :class:`~openmedreason.records.Instance` whose
``reasoning`` is exactly ``<think>…</think>\\n<answer>X</answer>``; C2 verifies it.

**LLM engine** (``engine = "llm"``): two calls per question, each with its own endpoint settings.

1. *Draft* (sub-step ``c1_draft``, template ``c1_draft``): a vision-language model sees the image
   (the panel, or the whole figure for ``image_scope = "full"``), the grounding context fenced and
   labelled "ground truth, do not cite", the question with its options (fenced) and the gold
   letter, and writes a free-text draft. The draft is kept verbatim in ``Instance.draft``.
2. *Final* (sub-step ``c1_final``, template ``c1_final``): an LLM (by default also shown the
   image; ``final_image = false`` for a text-only model) rewrites the draft using only supported
   claims. It answers with a **structured schema** ``{check, perception, clinical_context,
   interpretation, justification, answer}`` and the step assembles the trace from the fields with
   :func:`~openmedreason.curate.trace_checks.assemble_trace`::

       <think>
       <check>

       Perception: <perception>

       Clinical context: <clinical_context>          (left out when empty)

       Interpretation and medical knowledge: <interpretation>

       Answer justification: <justification>
       </think>
       <answer><answer></answer>

   Assembling from fields makes the format deterministic (no stray text after ``</answer>``, one
   tag each) and puts the sections in the method's order whatever the model does. The letter is the
   one the model wrote (normalised: ``"(B)."`` → ``B``), not the gold letter, so that C2 can catch a
   final that disagrees with the gold answer (``c2.wrong_answer``) instead of hiding it.

Endpoint settings: ``[llm.default]``, then ``[llm.c1_trace]`` (both sub-steps), then
``[llm.c1_draft]`` / ``[llm.c1_final]`` (one sub-step), then the ``OMR_LLM_*`` environment, so
the drafting VLM (e.g. a medical 7B VLM on vLLM) and the rewriting LLM are configured separately.
Requests are accounted under the sub-step names (``usage.json``; batch state per sub-step).

The *grounding context* (:func:`grounding_context`) is the scope's caption (the sub-caption for a
panel question, when there is one, else the caption; the whole caption for a full-figure one)
followed by the scope's text (``panel.context`` from A2, else the citing paragraphs; all of the
figure's citing paragraphs for a full-figure question), cut to ``max_context_chars`` (3,500) at a
sentence or word boundary.

A failed LLM result rejects the question with the LLM's reason (``llm.invalid_output``,
``llm.refusal``, ``llm.truncated``, …); ``reject_detail`` says which sub-step failed. The rejected
record is an ``Instance`` carrying the draft when there is one.

**Offline engine** (``engine = "offline"``, the default): no network, no model. The trace is
assembled from the article's own sentences by :mod:`openmedreason.offline.c1` (perception from
caption sentences, knowledge and rationale from citing-text sentences, fixed connective text). It
is a baseline for tests and demos, **not a substitute for a model**; ``draft`` is None and the
provenance engine is ``offline``.

Reject codes:

* ``c1.no_image`` (llm): the question has no image path for its scope, so nothing can be shown to
  the drafting model.
* ``c1.no_evidence`` (offline): no caption or citing-text sentence describing the image survived
  the cleaning, so there is nothing to build a perception section from.
* ``llm.*``: the draft or final call failed (see ``docs/llm.md``).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Sequence

from pydantic import BaseModel, Field

from openmedreason.curate.trace_checks import TraceLimits, assemble_trace
from openmedreason.llm import (
    EMPTY_REPLY,
    INVALID_OUTPUT,
    Estimate,
    LLMConfig,
    LLMRequest,
    LLMResult,
    Message,
    engine_for_step,
    estimate,
    resolve_llm_config,
)
from openmedreason.llm.engine import LLMEngine
from openmedreason.curate.common import llm_provenance, offline_provenance
from openmedreason.llm.step import LLMStep
from openmedreason.offline.c1 import compose_trace
from openmedreason.prompts import fence, load
from openmedreason.reasons import reason
from openmedreason.records import Instance, Panel, Question
from openmedreason.run.steps import Rejected, StepConfig, StepResult
from openmedreason.taxonomy import category

NO_IMAGE = reason("c1.no_image", "llm engine: the question has no image for its scope, so the drafting model cannot see it")
NO_EVIDENCE = reason(
    "c1.no_evidence", "offline engine: no caption or citing-text sentence describing the image survived cleaning"
)

DRAFT = "c1_draft"
FINAL = "c1_final"
SUBSTEPS = (DRAFT, FINAL)
CONTEXT_LABEL = "ground truth, do not cite"

#: for ``--dry-run`` from a sample of panels: questions per panel that reach C1 (B1 assigns a few
#: categories per panel and "both"-style categories give two questions). A rough planning figure.
QUESTIONS_PER_PANEL = 3.0
#: typical trace size used in estimates (the published median is ~1,900 characters)
TYPICAL_TRACE_CHARS = 1900
TRACE_OUTPUT_TOKENS = 700


class C1Config(StepConfig):
    engine: Literal["offline", "llm"] = Field(default="offline", description="offline = assembled from article sentences; llm = draft + final calls")
    max_context_chars: int = Field(default=3500, ge=200, description="grounding context shown to the models is cut to this many characters")
    final_image: bool = Field(default=True, description="also show the image to the rewriting (final) model; false for a text-only LLM")
    offline_max_perception: int = Field(default=3, ge=1, description="offline: at most this many perception sentences")
    offline_max_knowledge: int = Field(default=4, ge=0, description="offline: at most this many knowledge/rationale sentences")


class FinalTrace(BaseModel):
    """The rewriting model's structured answer; the step assembles the trace from it."""

    check: str = Field(description="one or two sentences: what has to be checked in the image to answer the question")
    perception: str = Field(description="the key visible findings that bear on the question")
    clinical_context: str = Field(description="relevant facts from the question stem; empty string when there are none")
    interpretation: str = Field(description="what the findings mean, with the medical knowledge linking them to the answer")
    justification: str = Field(description="short conclusion tying perception, context and interpretation to the correct option")
    answer: str = Field(description="the letter of the correct option")


# --------------------------------------------------------------------------- shared helpers
def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a sentence end (else a word end), marked with […]."""
    if len(text) <= limit:
        return text
    head = text[: max(0, limit - 6)]
    m = None
    for m in re.finditer(r"[.!?](?=\s)", head):
        pass
    if m is not None and m.end() > limit * 0.6:
        head = head[: m.end()]
    else:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip() + " […]"


def grounding_context(q: Question, max_chars: int = 3500) -> str:
    """The article text that grounds a trace for ``q`` (caption first, then the scope's text)."""
    p = q.panel
    if q.image_scope == "full":
        caption = p.caption
        body = p.all_context() or p.context or ""
    else:
        caption = p.sub_caption or p.caption
        if p.context is not None:
            body = p.context
        else:
            body = "\n\n".join(c.text for c in p.citing_paragraphs if not c.panels or (p.panel and p.panel in c.panels))
    parts = []
    if caption and caption.strip() and caption.strip() not in body:
        parts.append(caption.strip())
    if body.strip():
        parts.append(body.strip())
    return _cut("\n\n".join(parts), max_chars)


def category_name(key: str) -> str:
    try:
        return category(key).name
    except KeyError:
        return key


def instance_of(q: Question, *, engine: str, draft: str | None = None, reasoning: str = "", provenance: Sequence[Any] = ()) -> Instance:
    """An Instance carrying every field of ``q`` plus the trace fields."""
    data = q.model_dump()
    data.update(engine=engine, draft=draft, reasoning=reasoning, checks=[], provenance=[*data.get("provenance", []), *provenance])
    return Instance.model_validate(data)


def sample_questions(sample: Sequence[Any]) -> tuple[list[Question], float]:
    """For estimates: the sample as questions, and how many questions each sample record stands
    for. Panels (what ``--dry-run`` samples) become one placeholder question each, standing for
    :data:`QUESTIONS_PER_PANEL` questions."""
    qs: list[Question] = []
    per = 1.0
    for rec in sample:
        if isinstance(rec, Question):
            qs.append(rec)
            continue
        panel = rec if isinstance(rec, Panel) else getattr(rec, "panel", None)
        if panel is None:
            continue
        if isinstance(rec, Panel):
            per = QUESTIONS_PER_PANEL
        qs.append(
            Question(
                id=panel.id, panel=panel, category=getattr(rec, "category", "diagnosis"), family="Diagnosis", style="short",
                image_scope="panel", answer_format="standard",
                stem="Based on this image, which of the following is the most likely diagnosis?",
                options=["A plausible diagnosis of moderate length"] * 4, answer="A", engine="offline",
            )
        )
    return qs, per


def combine_estimates(parts: dict[str, Estimate], factor: float, notes: list[str]) -> dict[str, Any]:
    """Sum per-sub-step estimates and scale them by ``factor`` (sample → total)."""
    tot = Estimate(notes=list(notes))
    by: dict[str, Any] = {}
    for name, e in parts.items():
        scaled = Estimate(
            calls=round(e.calls * factor), cached=round(e.cached * factor), prompt_tokens=round(e.prompt_tokens * factor),
            completion_tokens=round(e.completion_tokens * factor), cost_usd=e.cost_usd * factor, images=round(e.images * factor),
        )
        by[name] = scaled.as_dict()
        tot.calls += scaled.calls
        tot.cached += scaled.cached
        tot.prompt_tokens += scaled.prompt_tokens
        tot.completion_tokens += scaled.completion_tokens
        tot.cost_usd += scaled.cost_usd
        tot.images += scaled.images
        tot.notes.extend(n for n in e.notes if n not in tot.notes)
    d = tot.as_dict()
    d["substeps"] = by
    return d


# --------------------------------------------------------------------------- the step
class C1Trace(LLMStep):
    templates = (DRAFT, FINAL)
    llm_names = ("c1_draft", "c1_final")
    name = "c1_trace"
    version = "1"
    Config = C1Config
    output = Instance
    one_to_one = True

    def __init__(self, config: C1Config | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.uses_llm = self.config.engine == "llm"

    # ------------------------------------------------------------ engines per sub-step
    def llm_config(self, name: str) -> LLMConfig:
        return self.substep_config(name)

    def substep_config(self, sub: str) -> LLMConfig:
        """``[llm.default]`` ← ``[llm.c1_trace]`` ← ``[llm.<sub>]`` ← environment."""
        llm = dict(self.ctx.llm) if self.ctx is not None else {}
        base = {**(llm.get("default") or {}), **(llm.get(self.name) or {})}
        return resolve_llm_config(sub, {"default": base, sub: llm.get(sub) or {}})

    def substep_engine(self, sub: str) -> LLMEngine:
        engines = self.__dict__.setdefault("_engines", {})
        eng = engines.get(sub)
        if eng is None:
            if self.ctx is None:
                raise RuntimeError(f"step {self.name} needs a run context (Step.bind) to reach its LLM")
            eng = engine_for_step(
                sub, self.ctx.llm, self.ctx.run_dir, no_cache=self.ctx.no_cache, max_cost_usd=self.ctx.max_cost_usd,
                processes=self.ctx.workers, config=self.substep_config(sub),
            )
            engines[sub] = eng
        return eng

    def complete_sub(self, sub: str, requests: list[LLMRequest]) -> list[LLMResult]:
        if not requests:
            return []
        eng = self.substep_engine(sub)
        try:
            return eng.complete_many(requests)
        finally:
            eng.flush()

    def close(self) -> None:
        for eng in self.__dict__.pop("_engines", {}).values():
            eng.close()
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_engines", None)
        return state

    # ------------------------------------------------------------ requests
    def _values(self, q: Question) -> dict[str, str]:
        return dict(
            context=fence(CONTEXT_LABEL, grounding_context(q, self.config.max_context_chars)),
            category=category_name(q.category),
            style=q.style,
            question=fence("question", q.question_text()),
            answer_letter=q.answer,
        )

    def draft_request(self, q: Question) -> LLMRequest:
        tpl = load(DRAFT)
        system, user = tpl.render(**self._values(q))
        images = [q.image_path] if q.image_path else []
        return LLMRequest(DRAFT, tpl.name, tpl.version, [Message.system(system), Message.user(user, images=images)], record_id=q.id)

    def final_request(self, q: Question, draft: str) -> LLMRequest:
        tpl = load(FINAL)
        system, user = tpl.render(**self._values(q), draft=fence("draft reasoning", draft))
        images = [q.image_path] if (q.image_path and self.config.final_image) else []
        return LLMRequest(
            FINAL, tpl.name, tpl.version, [Message.system(system), Message.user(user, images=images)], FinalTrace, record_id=q.id
        )

    # ------------------------------------------------------------ processing
    def process(self, batch: Sequence[Question]) -> StepResult[Instance]:
        if not self.uses_llm:
            return self._offline(batch)
        out: StepResult[Instance] = StepResult()
        todo = []
        for q in batch:
            if not q.image_path:
                out.rejected.append(Rejected(instance_of(q, engine="llm"), NO_IMAGE, detail=f"image_scope={q.image_scope}"))
            else:
                todo.append(q)
        drafts = self.complete_sub(DRAFT, [self.draft_request(q) for q in todo])
        ready: list[tuple[Question, LLMResult]] = []
        for q, r in zip(todo, drafts):
            if r.ok and (r.text or "").strip():
                ready.append((q, r))
            else:
                detail = f"{DRAFT}: {r.detail or r.reason or 'empty draft'}"
                prov = [llm_provenance(self.name, r)] if r.cache_key else []
                rec = instance_of(q, engine="llm", draft=r.text, provenance=prov)
                out.rejected.append(Rejected(rec, r.reason or EMPTY_REPLY, detail=detail))
        finals = self.complete_sub(FINAL, [self.final_request(q, d.text or "") for q, d in ready])
        for (q, d), f in zip(ready, finals):
            prov = [llm_provenance(self.name, d)]
            draft = (d.text or "").strip()
            if not f.ok or f.parsed is None:
                detail = f"{FINAL}: {f.detail or f.reason}" + (f" | reply: {f.text[:300]}" if f.text else "")
                rec = instance_of(q, engine="llm", draft=draft, provenance=prov)
                out.rejected.append(Rejected(rec, f.reason or INVALID_OUTPUT, detail=detail))
                continue
            ft: FinalTrace = f.parsed  # type: ignore[assignment]
            reasoning = assemble_trace(ft.check, ft.perception, ft.clinical_context, ft.interpretation, ft.justification, ft.answer)
            prov.append(llm_provenance(self.name, f))
            out.kept.append(instance_of(q, engine="llm", draft=draft, reasoning=reasoning, provenance=prov))
        return out

    def _offline(self, batch: Sequence[Question]) -> StepResult[Instance]:
        out: StepResult[Instance] = StepResult()
        limits = TraceLimits()
        prov = offline_provenance(self.name, self.version)
        for q in batch:
            t = compose_trace(
                q, max_perception=self.config.offline_max_perception, max_knowledge=self.config.offline_max_knowledge,
                max_chars=limits.max_chars, copy_ngram=limits.copy_ngram,
            )
            if t is None:
                out.rejected.append(Rejected(instance_of(q, engine="offline", provenance=[prov]), NO_EVIDENCE))
            else:
                out.kept.append(instance_of(q, engine="offline", reasoning=t.reasoning, provenance=[prov]))
        return out

    # ------------------------------------------------------------ dry run
    def estimate(self, sample: Sequence[Any], total: int) -> dict[str, Any]:
        if not self.uses_llm:
            return Estimate(notes=["offline engine: no LLM calls"]).as_dict()
        qs, per = sample_questions(sample)
        if not qs:
            return Estimate(notes=["empty sample"]).as_dict()
        factor = per * total / len(sample)
        placeholder = "x" * TYPICAL_TRACE_CHARS
        parts = {
            DRAFT: estimate(self.substep_config(DRAFT), [self.draft_request(q) for q in qs], output_tokens=TRACE_OUTPUT_TOKENS),
            FINAL: estimate(self.substep_config(FINAL), [self.final_request(q, placeholder) for q in qs], output_tokens=TRACE_OUTPUT_TOKENS),
        }
        notes = [f"two calls per question (draft + final); {per:g} question(s) per sampled record; final prompt sized with a {TYPICAL_TRACE_CHARS}-character draft"]
        return combine_estimates(parts, factor, notes)
