"""C2 verification (METHOD §5): Instance → Instance, one to one.

Step ``c2_verify`` (version 1). The public release had no verification stage and kept traces whose
answer differed from the gold letter; this step is that missing stage.

1. **Deterministic checks first** (:mod:`openmedreason.curate.trace_checks`), in this order:
   ``format``, ``answer_matches_gold``, ``length``, ``absent_image_reference``, ``cites_source``,
   ``copies_caption``, ``hedged`` and (``elimination = true``) ``elimination``. All of them run on
   every instance (they are cheap); the instance is rejected with the code of the first failure
   (``c2.format``, ``c2.wrong_answer``, ``c2.too_short`` / ``c2.too_long``,
   ``c2.absent_image_reference``, ``c2.cites_source``, ``c2.copies_caption``, ``c2.hedged``,
   ``c2.elimination``; the rules are in that module's docstring), and no LLM call is made for it.
2. **LLM verdict** (``engine = "llm"`` only, template ``c2_verify``): one structured call per
   instance that passed, given the grounding context (fenced; the same text C1 saw, see
   :func:`openmedreason.curate.c1.grounding_context`), the question (fenced), the gold letter and
   the trace (fenced). The schema is ``{source_consistent: bool, answer_justified: bool,
   useful: bool, issues: [str]}``; only the booleans decide, checked in that order:
   ``source_consistent = false`` → ``c2.unsupported``, ``answer_justified = false`` →
   ``c2.unjustified``, ``useful = false`` → ``c2.not_useful``; ``issues`` goes to the reject
   detail and the check details. A failed LLM result rejects with its ``llm.*`` reason. The image
   is not sent by default (the verdict is about the text's support); ``verify_image = true``
   sends it.

Every instance that leaves the step (kept or rejected) carries ``checks``: one
``Check(name, passed, detail)`` per check run, the deterministic ones first (on a pass the detail
holds the measurement, e.g. ``"1843 characters"``; on a failure ``"<code>: <detail>"``), then
``source_consistency``, ``answer_justification`` and ``utility`` from the LLM verdict. With the
offline engine there is no verdict: the list ends with ``llm_verification_skipped`` (passed,
detail "offline engine: deterministic checks only …") so the record itself says what it was not
checked for. C2 appends its own provenance entry (``template = c2_verify@<version>`` with model
and cache key, or ``offline-c2_verify@1``).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import BaseModel, Field

from openmedreason.curate.c1 import (
    CONTEXT_LABEL,
    TYPICAL_TRACE_CHARS,
    combine_estimates,
    grounding_context,
    sample_questions,
)
from openmedreason.curate.trace_checks import TraceLimits, first_failure, run_trace_checks
from openmedreason.llm import INVALID_OUTPUT, Estimate, LLMRequest, Message, estimate, resolve_llm_config
from openmedreason.curate.common import llm_provenance, offline_provenance
from openmedreason.llm.step import LLMStep
from openmedreason.prompts import fence, load
from openmedreason.reasons import reason
from openmedreason.records import Check, Instance, Question
from openmedreason.run.steps import Rejected, StepConfig, StepResult

UNSUPPORTED = reason("c2.unsupported", "LLM verdict: the trace states something the context does not support (source_consistent=false)")
UNJUSTIFIED = reason("c2.unjustified", "LLM verdict: the trace's reasoning does not justify the gold answer (answer_justified=false)")
NOT_USEFUL = reason("c2.not_useful", "LLM verdict: the trace is padded, repetitive or off the question (useful=false)")

TEMPLATE = "c2_verify"
SKIPPED = Check(
    name="llm_verification_skipped",
    passed=True,
    detail="offline engine: deterministic checks only; source consistency, answer justification and utility were not judged",
)


class C2Config(StepConfig):
    engine: Literal["offline", "llm"] = Field(default="offline", description="offline = deterministic checks only; llm = checks then one LLM verdict")
    min_chars: int = Field(default=300, ge=0, description="c2.too_short below this many characters inside <think>")
    max_chars: int = Field(default=6000, ge=1, description="c2.too_long above this many characters inside <think> (published max ~6,000)")
    copy_ngram: int = Field(default=12, ge=3, description="c2.copies_caption when this many consecutive words are shared with the caption")
    elimination: bool = Field(default=True, description="run the elimination-dominated heuristic (c2.elimination)")
    elimination_share: float = Field(default=0.5, ge=0, le=1, description="c2.elimination when more than this share of sentences rule options out")
    max_context_chars: int = Field(default=3500, ge=200, description="grounding context shown to the verifier is cut to this many characters")
    verify_image: bool = Field(default=False, description="also show the image to the verifier")


class Verdict(BaseModel):
    """The verifier's structured answer: only the booleans decide."""

    source_consistent: bool = Field(description="every case-specific statement is supported by the context or the question")
    answer_justified: bool = Field(description="the reasoning flows from the findings to the correct option, forward and without hedging")
    useful: bool = Field(description="no padding, repetition or digressions")
    issues: list[str] = Field(description="specific problems found; empty when none")


class C2Verify(LLMStep):
    templates = (TEMPLATE,)
    name = "c2_verify"
    version = "1"
    Config = C2Config
    output = Instance
    one_to_one = True

    def __init__(self, config: C2Config | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.uses_llm = self.config.engine == "llm"

    @property
    def limits(self) -> TraceLimits:
        c = self.config
        return TraceLimits(
            min_chars=c.min_chars, max_chars=c.max_chars, copy_ngram=c.copy_ngram, elimination=c.elimination,
            elimination_share=c.elimination_share,
        )

    def request(self, inst: Question, trace: str) -> LLMRequest:
        tpl = load(TEMPLATE)
        system, user = tpl.render(
            context=fence(CONTEXT_LABEL, grounding_context(inst, self.config.max_context_chars)),
            question=fence("question", inst.question_text()),
            answer_letter=inst.answer,
            trace=fence("reasoning trace", trace),
        )
        images = [inst.image_path] if (self.config.verify_image and inst.image_path) else []
        return LLMRequest(self.name, tpl.name, tpl.version, [Message.system(system), Message.user(user, images=images)], Verdict, record_id=inst.id)

    def process(self, batch: Sequence[Instance]) -> StepResult[Instance]:
        out: StepResult[Instance] = StepResult()
        limits = self.limits
        judge: list[tuple[Instance, list[Check]]] = []
        for inst in batch:
            results = run_trace_checks(inst.reasoning, inst, limits)
            checks = [c.as_check() for c in results]
            fail = first_failure(results)
            if fail is not None:
                code, value, detail = fail
                out.rejected.append(Rejected(inst.model_copy(update={"checks": checks}), code, value, detail))
            elif self.uses_llm:
                judge.append((inst, checks))
            else:
                prov = offline_provenance(self.name, self.version)
                out.kept.append(inst.model_copy(update={"checks": [*checks, SKIPPED], "provenance": [*inst.provenance, prov]}))
        if not judge:
            return out
        results = self.complete(self.request(inst, inst.reasoning) for inst, _ in judge)
        for (inst, checks), r in zip(judge, results):
            if not r.ok or r.parsed is None:
                detail = f"{r.detail or r.reason}" + (f" | reply: {r.text[:300]}" if r.text else "")
                out.rejected.append(Rejected(inst.model_copy(update={"checks": checks}), r.reason or INVALID_OUTPUT, detail=detail))
                continue
            v: Verdict = r.parsed  # type: ignore[assignment]
            issues = "; ".join(i.strip() for i in v.issues if i and i.strip()) or None
            verdict = [
                Check(name="source_consistency", passed=v.source_consistent, detail=None if v.source_consistent else issues),
                Check(name="answer_justification", passed=v.answer_justified, detail=None if v.answer_justified else issues),
                Check(name="utility", passed=v.useful, detail=None if v.useful else issues),
            ]
            prov = llm_provenance(self.name, r)
            rec = inst.model_copy(update={"checks": [*checks, *verdict], "provenance": [*inst.provenance, prov]})
            failed = next(
                (code for ok, code in ((v.source_consistent, UNSUPPORTED), (v.answer_justified, UNJUSTIFIED), (v.useful, NOT_USEFUL)) if not ok),
                None,
            )
            if failed is None:
                out.kept.append(rec)
            else:
                out.rejected.append(Rejected(rec, failed, detail=issues))
        return out

    def estimate(self, sample: Sequence[Any], total: int) -> dict[str, Any]:
        if not self.uses_llm:
            return Estimate(notes=["offline engine: deterministic checks only, no LLM calls"]).as_dict()
        qs, per = sample_questions(sample)
        if not qs:
            return Estimate(notes=["empty sample"]).as_dict()
        cfg = resolve_llm_config(self.name, self.ctx.llm if self.ctx is not None else {})
        reqs = []
        for q in qs:
            trace = q.reasoning if isinstance(q, Instance) and q.reasoning else "x" * TYPICAL_TRACE_CHARS
            reqs.append(self.request(q, trace))
        est = estimate(cfg, reqs, output_tokens=150)
        notes = [f"one call per instance that passes the deterministic checks (all assumed to); {per:g} instance(s) per sampled record"]
        return combine_estimates({self.name: est}, per * total / len(sample), notes)


__all__ = ["C2Config", "C2Verify", "NOT_USEFUL", "UNJUSTIFIED", "UNSUPPORTED", "Verdict"]
