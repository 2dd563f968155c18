"""A2 text & context usability, and panel context selection (METHOD §3, A2).

Step :class:`A2Text` (``a2_text``, version 1): Panel → Panel, one to one. Config
:class:`A2TextConfig`; the pipeline sets ``engine`` (``offline`` | ``llm``).

What the step reads
    The text about a panel is its sub-caption (when the figure is compound), the figure caption
    and the citing paragraphs routed to the panel at ingest (``Panel.citing_paragraphs``:
    paragraphs that name this panel or the figure as a whole). Residual XML markup
    (``<xref …>Figure 5</xref>B``) is removed before anything else (:func:`clean_markup`).

Checks, in order (the first failure rejects)
    1. ``a2.too_short`` (deterministic, both engines, costs nothing): sub-caption + caption +
       routed paragraphs shorter than ``min_chars`` (50) characters; the value is the length.
    2. Usability verdict. LLM engine: one structured call (template ``a2_text``) that returns,
       for each of four criteria, a one-sentence reason and a boolean. The booleans alone decide
       (never a substring of the free text: the published release kept "insufficient" because
       it contains "sufficient"). Each failing criterion has its own code, and the first one in
       this order is the record's reason: ``a2.inadequate`` (the text does not say what the
       image shows: navigation or a bare label), ``a2.not_clinical``, ``a2.misaligned`` (text
       and image are not about the same thing), ``a2.no_multistep`` (no visual feature named
       together with the text's explanation of its cause, meaning or consequence). The value is
       the number of failing criteria; the detail lists each failing criterion with the
       model's reason. Offline engine: the heuristics of :mod:`openmedreason.offline.a2`, with
       the same codes (it never emits ``a2.misaligned``: it cannot see the image).
    3. Context selection. LLM engine: a second structured call (template ``a2_context``) with
       the images (the whole figure at low detail plus the panel at ``context_image_detail``
       when the panel is a separate file; otherwise the one figure image) returns
       ``relevant_context`` (the passages about this panel, copied, markup removed),
       ``primary_modality`` (one of :data:`~openmedreason.taxonomy.MODALITY_GROUPS`, enforced
       by the schema), ``secondary_modality`` and ``valid``. ``valid=false``, or a context that
       is empty after cleaning, rejects with ``a2.invalid_context``. Then a deterministic guard:
       the share of the selected context's words that occur in the article text given to the
       model must be at least ``min_context_support`` (0.85), else ``a2.context_unsupported``
       (the model wrote text instead of selecting it; C1/C2 treat the context as ground truth,
       so invented text must not get through). Offline engine: the context is the sub-caption
       (else the caption) followed by the routed paragraphs; the modality comes from the
       lexicon (:func:`openmedreason.offline.vocab.detect_modality`).
    LLM failures (schema not met after one repair, refusal, truncation, unreadable image, …)
    reject with the engine's ``llm.*`` code; the detail keeps the raw reply for review.

What a kept panel gets
    ``context`` (trimmed to ``max_context_chars`` at a sentence boundary), ``modality_group``,
    ``modality`` (secondary modality, None when unknown) and one :class:`Provenance` entry per
    call (``a2_text@1`` and ``a2_context@1`` with model and cache key; offline:
    ``offline-a2_text@1``). Rejected panels keep the provenance of the calls that judged them.

Why two calls and not one
    The method runs the verdict and the context selection as separate steps, and so do we:
    the verdict is cheap (text plus the panel image at low detail, a fixed ~85 image tokens on
    OpenAI-style pricing) and rejects most panels of a typical article (navigational and
    bare-label text), so only the survivors pay for the second, image-heavy call (the figure
    plus the panel at high detail, several hundred to ~1,500 image tokens). One combined call
    would send the high-detail images for every panel, and would let one answer mix two
    questions (is the text usable at all; which part of it is about this panel), which is
    harder to audit and to revise: the two templates are versioned and cached separately, so
    rewording one does not pay again for the other. The cost: the panel's text is sent twice
    for survivors, and two round trips per kept panel. ``--dry-run`` assumes every panel that
    passes the length pre-filter reaches the second call (an upper bound).
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

from pydantic import BaseModel, Field

from openmedreason.llm import Estimate, ImageInput, LLMRequest, Message, resolve_llm_config
from openmedreason.curate.common import llm_failure, llm_provenance, offline_provenance, scaled_estimate
from openmedreason.llm.step import LLMStep
from openmedreason.prompts import fence, load
from openmedreason.reasons import reason
from openmedreason.records import Panel
from openmedreason.run.steps import Rejected, StepConfig, StepResult
from openmedreason.taxonomy import MODALITY_GROUPS

TOO_SHORT = reason("a2.too_short", "sub-caption + caption + citing text shorter than min_chars (value: the length)")
INADEQUATE = reason("a2.inadequate", "the text does not say what the image shows (navigational or bare-label text)")
NOT_CLINICAL = reason("a2.not_clinical", "the text is not clinically or biomedically relevant")
MISALIGNED = reason("a2.misaligned", "the text and the image are not about the same thing")
NO_MULTISTEP = reason(
    "a2.no_multistep", "the text does not name a visual feature together with an explanation of its cause, meaning or consequence"
)
INVALID_CONTEXT = reason(
    "a2.invalid_context", "no usable text about this panel (context selection returned valid=false or an empty context)"
)
CONTEXT_UNSUPPORTED = reason(
    "a2.context_unsupported", "the selected context is not copied from the article text (value: share of its words found there)"
)

#: verdict criteria in the order their failures are reported: (field, reject code)
CRITERIA: tuple[tuple[str, str], ...] = (
    ("adequate", INADEQUATE),
    ("clinical", NOT_CLINICAL),
    ("aligned", MISALIGNED),
    ("multistep", NO_MULTISTEP),
)

VERDICT_TEMPLATE = "a2_text"
CONTEXT_TEMPLATE = "a2_context"

ImageDetail = Literal["none", "low", "high", "auto"]


class A2TextConfig(StepConfig):
    engine: Literal["offline", "llm"] = Field(default="offline", description="offline heuristics or an LLM judge (set by the pipeline)")
    min_chars: int = Field(default=50, ge=0, description="pre-filter: minimum length of sub-caption + caption + citing text")
    max_context_chars: int = Field(
        default=8000, ge=200, description="citing text sent to the LLM, and the kept context, are trimmed to this at a sentence boundary"
    )
    verdict_image_detail: ImageDetail = Field(
        default="low", description="the panel image sent with the usability verdict (none = text only)"
    )
    context_image_detail: ImageDetail = Field(
        default="high", description="the panel image sent with the context selection (the whole figure, when separate, goes at low)"
    )
    min_context_support: float = Field(
        default=0.85, ge=0.0, le=1.0, description="LLM: minimum share of the selected context's words that occur in the article text"
    )
    min_content_words: int = Field(
        default=5, ge=0, description="offline: fewer content words (after removing figure/panel labels and stop words) = a2.inadequate"
    )


# --------------------------------------------------------------------------------------------
# response schemas
# --------------------------------------------------------------------------------------------


class UsabilityVerdict(BaseModel):
    """The usability verdict: for each criterion, a one-sentence reason, then the boolean.
    Only the booleans are read."""

    adequate_reason: str = Field(description="one sentence")
    adequate: bool = Field(description="the text says what the panel shows")
    clinical_reason: str = Field(description="one sentence")
    clinical: bool = Field(description="the content is clinically or biomedically relevant")
    aligned_reason: str = Field(description="one sentence")
    aligned: bool = Field(description="text and image are about the same thing")
    multistep_reason: str = Field(description="one sentence")
    multistep: bool = Field(description="a visual feature named in the text plus the text's explanation of it")

    def failures(self) -> list[tuple[str, str, str]]:
        """(criterion, reject code, model's reason) for every failing criterion, in order."""
        return [(f, code, getattr(self, f"{f}_reason")) for f, code in CRITERIA if not getattr(self, f)]


class PanelContext(BaseModel):
    """The context selection for one panel."""

    relevant_context: str = Field(description="passages about this panel, copied from the text, markup removed")
    primary_modality: Literal[MODALITY_GROUPS] = Field(description="one of the five modality groups")  # type: ignore[valid-type]
    secondary_modality: str = Field(description="the specific technique, e.g. CT, MRI, histology (H&E), bar chart")
    reason: str = Field(description="why the text is not valid; may be empty when valid")
    valid: bool = Field(description="false when no usable text about this panel can be identified")


# --------------------------------------------------------------------------------------------
# deterministic text helpers (shared with the offline engine)
# --------------------------------------------------------------------------------------------

_XREF = re.compile(r"<xref\b[^>]*>(.*?)</xref\s*>", re.S | re.I)
_TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
_WORD = re.compile(r"[^\W_]+", re.U)
_MENTION_LINE = re.compile(r"^\s*\[mention:[^\]\n]*\]\s*$", re.M)


def clean_markup(text: str | None) -> str:
    """Remove residual XML/HTML markup (``<xref …>Figure 5</xref>B`` → ``Figure 5B``) and
    collapse runs of spaces; paragraph breaks are kept."""
    if not text:
        return ""
    out = _TAG.sub("", _XREF.sub(r"\1", text))
    lines = [_SPACES.sub(" ", ln).strip() for ln in out.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def trim_sentences(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` at the last sentence (or line) end that fits; at a
    word boundary when not even the first sentence fits."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    ends = [m.start() for m in _SENTENCE_END.finditer(head) if m.start() <= max_chars]
    if ends and ends[-1] > 0:
        return head[: ends[-1]].rstrip()
    cut = head.rfind(" ", 0, max_chars)
    return head[: cut if cut > 0 else max_chars].rstrip()


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def panel_texts(panel: Panel) -> tuple[str, str, list[tuple[str, str]]]:
    """(sub-caption, caption, [(mention, paragraph)]) of a panel, markup removed; the
    sub-caption is empty when it repeats the caption, and repeated paragraphs appear once."""
    caption = clean_markup(panel.caption)
    sub = clean_markup(panel.sub_caption)
    if sub and _same(sub, caption):
        sub = ""
    seen: set[str] = set()
    paras: list[tuple[str, str]] = []
    for cp in panel.citing_paragraphs:
        t = clean_markup(cp.text)
        if t and t not in seen:
            seen.add(t)
            paras.append((clean_markup(cp.mention), t))
    return sub, caption, paras


def text_length(panel: Panel) -> int:
    """Length of sub-caption + caption + citing text, joined by single spaces (the pre-filter)."""
    sub, caption, paras = panel_texts(panel)
    return len(" ".join(t for t in (sub, caption, *(p for _, p in paras)) if t))


def paragraphs_block(paras: list[tuple[str, str]], max_chars: int, with_mentions: bool = True) -> str:
    """The citing paragraphs as one block (each preceded by its figure mention), whole
    paragraphs while they fit, the last one trimmed at a sentence boundary."""
    out = ""
    for mention, text in paras:
        block = f"[mention: {mention}]\n{text}" if (with_mentions and mention) else text
        sep = "\n\n" if out else ""
        room = max_chars - len(out) - len(sep)
        if len(block) > room:
            block = trim_sentences(block, room) if room > 0 else ""
            if block:
                out += sep + block
            break
        out += sep + block
    return out


def word_support(selected: str, source: str) -> float:
    """Share of the words (case-folded) of ``selected`` that occur in ``source``; 1.0 when
    ``selected`` has no words."""
    words = [w.casefold() for w in _WORD.findall(selected)]
    if not words:
        return 1.0
    vocab = {w.casefold() for w in _WORD.findall(source)}
    return sum(w in vocab for w in words) / len(words)


def panel_description(panel: Panel) -> tuple[str, str]:
    """("panel B", "a figure with 4 panels") from the record's structure (no article text)."""
    if panel.panel:
        return f"panel {panel.panel}", f"a figure with {panel.panel_count} panels"
    return "the whole figure", "a figure without separate panels"


# --------------------------------------------------------------------------------------------
# shared with the other curation steps
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------


def _attached_note(panel: Panel) -> str:
    if panel.shows_whole_figure:
        return f"Attached: the figure image; {panel_description(panel)[0]} is one part of it."
    return "Attached: the panel image."


class A2Text(LLMStep):
    """A2: text usability verdict, then the panel's context and modality (see module doc)."""

    templates = (VERDICT_TEMPLATE, CONTEXT_TEMPLATE)
    name = "a2_text"
    version = "1"
    Config = A2TextConfig
    output = Panel
    one_to_one = True

    def __init__(self, config: A2TextConfig | dict | None = None) -> None:
        super().__init__(config)
        self.uses_llm = self.config.engine == "llm"

    # ---------------------------------------------------------------- requests
    def _fenced(self, panel: Panel) -> dict[str, str]:
        cfg: A2TextConfig = self.config  # type: ignore[assignment]
        sub, caption, paras = panel_texts(panel)
        panel_desc, figure_desc = panel_description(panel)
        return dict(
            panel_desc=panel_desc,
            figure_desc=figure_desc,
            sub_caption=fence("sub-caption", sub or None),
            caption=fence("caption", caption or None),
            context=fence("citing paragraphs", paragraphs_block(paras, cfg.max_context_chars) or None),
        )

    def verdict_request(self, panel: Panel) -> LLMRequest:
        cfg: A2TextConfig = self.config  # type: ignore[assignment]
        tpl = load(VERDICT_TEMPLATE)
        images: list[ImageInput] = []
        if cfg.verdict_image_detail != "none" and panel.image_path:
            images.append(ImageInput(path=panel.image_path, detail=cfg.verdict_image_detail))
            note = _attached_note(panel)
        else:
            note = "No image is attached; judge alignment from the text alone."
        system, user = tpl.render(image_note=note, **self._fenced(panel))
        return LLMRequest(
            self.name, tpl.name, tpl.version, [Message.system(system), Message.user(user, images)], UsabilityVerdict, record_id=panel.id
        )

    def context_request(self, panel: Panel) -> LLMRequest:
        cfg: A2TextConfig = self.config  # type: ignore[assignment]
        tpl = load(CONTEXT_TEMPLATE)
        images: list[ImageInput] = []
        full, own = panel.full_image_path, panel.image_path
        detail = cfg.context_image_detail
        if detail == "none":
            note = "No image is attached."
        elif full and own and full != own:
            images = [ImageInput(path=full, detail="low"), ImageInput(path=own, detail=detail)]
            note = "Attached: first the whole figure, then the panel."
        elif own or full:
            images = [ImageInput(path=own or full, detail=detail)]  # type: ignore[arg-type]
            note = _attached_note(panel)
        else:
            note = "No image is attached."
        system, user = tpl.render(image_note=note, **self._fenced(panel))
        return LLMRequest(
            self.name, tpl.name, tpl.version, [Message.system(system), Message.user(user, images)], PanelContext, record_id=panel.id
        )

    # ---------------------------------------------------------------- processing
    def process(self, batch: Sequence[Panel]) -> StepResult[Panel]:
        cfg: A2TextConfig = self.config  # type: ignore[assignment]
        out: StepResult[Panel] = StepResult()
        todo: list[Panel] = []
        for panel in batch:
            n = text_length(panel)
            if n < cfg.min_chars:
                out.rejected.append(Rejected(panel, TOO_SHORT, value=n, detail=f"{n} characters of text < min_chars={cfg.min_chars}"))
            else:
                todo.append(panel)
        if not todo:
            return out
        if cfg.engine == "offline":
            from openmedreason.offline.a2 import judge_panel

            for panel in todo:
                decision = judge_panel(panel, cfg)
                prov = panel.provenance + [offline_provenance(self.name, self.version)]
                if decision.reject is not None:
                    out.rejected.append(
                        Rejected(panel.model_copy(update={"provenance": prov}), decision.reject, value=decision.value, detail=decision.detail)
                    )
                else:
                    out.kept.append(
                        panel.model_copy(
                            update={"context": decision.context, "modality_group": decision.modality_group,
                                    "modality": decision.modality, "provenance": prov}
                        )
                    )
            return out
        return self._process_llm(todo, out)

    def _process_llm(self, todo: list[Panel], out: StepResult[Panel]) -> StepResult[Panel]:
        cfg: A2TextConfig = self.config  # type: ignore[assignment]
        verdicts = self.complete(self.verdict_request(p) for p in todo)
        passed: list[Panel] = []
        for panel, r in zip(todo, verdicts):
            if not r.ok:
                out.rejected.append(llm_failure(panel, r, "usability verdict"))
                continue
            judged = panel.model_copy(update={"provenance": panel.provenance + [llm_provenance(self.name, r)]})
            fails = r.parsed.failures()  # type: ignore[union-attr]
            if fails:
                detail = "; ".join(f"{crit}: {why}" for crit, _, why in fails)
                out.rejected.append(Rejected(judged, fails[0][1], value=len(fails), detail=detail))
            else:
                passed.append(judged)
        if not passed:
            return out
        selections = self.complete(self.context_request(p) for p in passed)
        for panel, r in zip(passed, selections):
            if not r.ok:
                out.rejected.append(llm_failure(panel, r, "context selection"))
                continue
            sel: PanelContext = r.parsed  # type: ignore[assignment]
            judged = panel.model_copy(update={"provenance": panel.provenance + [llm_provenance(self.name, r)]})
            context = trim_sentences(clean_markup(_MENTION_LINE.sub("", sel.relevant_context)), cfg.max_context_chars)
            if not sel.valid or not context:
                why = sel.reason.strip() or ("valid=false" if not sel.valid else "empty context")
                out.rejected.append(Rejected(judged, INVALID_CONTEXT, value=len(context), detail=why))
                continue
            sub, caption, paras = panel_texts(panel)
            source = "\n".join([sub, caption, *(m + "\n" + t for m, t in paras)])
            support = word_support(context, source)
            if support < cfg.min_context_support:
                out.rejected.append(
                    Rejected(judged, CONTEXT_UNSUPPORTED, value=support,
                             detail=f"{support:.2f} of the selected context's words occur in the article text "
                                    f"(< {cfg.min_context_support}); selected: {context[:1000]}")
                )
                continue
            out.kept.append(
                judged.model_copy(
                    update={"context": context, "modality_group": sel.primary_modality,
                            "modality": _clean_modality(sel.secondary_modality)}
                )
            )
        return out

    # ---------------------------------------------------------------- dry run
    def estimate(self, sample: Sequence[Panel], total: int) -> dict:
        if self.config.engine != "llm":  # type: ignore[attr-defined]
            return Estimate(notes=["offline engine: no LLM calls"]).as_dict()
        config = resolve_llm_config(self.name, self.ctx.llm if self.ctx else {})
        cfg: A2TextConfig = self.config  # type: ignore[assignment]
        sample = list(sample)
        survivors = [p for p in sample if text_length(p) >= cfg.min_chars]
        reqs = [self.verdict_request(p) for p in survivors] + [self.context_request(p) for p in survivors]
        est = scaled_estimate(config, reqs, len(sample), total)
        est.notes.append(
            f"{len(survivors)}/{len(sample)} sampled panels pass the length pre-filter; upper bound: every one of them "
            f"is assumed to pass the verdict and reach the context call"
        )
        return est.as_dict()


_NO_MODALITY = {"", "none", "unknown", "n/a", "na", "other", "not applicable", "unspecified"}


def _clean_modality(text: str | None) -> str | None:
    t = _SPACES.sub(" ", (text or "").strip()).strip(" .")
    return None if t.lower() in _NO_MODALITY else t[:80]


__all__ = [
    "A2Text",
    "A2TextConfig",
    "CONTEXT_UNSUPPORTED",
    "CRITERIA",
    "INADEQUATE",
    "INVALID_CONTEXT",
    "MISALIGNED",
    "NOT_CLINICAL",
    "NO_MULTISTEP",
    "PanelContext",
    "TOO_SHORT",
    "UsabilityVerdict",
    "clean_markup",
    "llm_failure",
    "llm_provenance",
    "offline_provenance",
    "panel_texts",
    "paragraphs_block",
    "scaled_estimate",
    "text_length",
    "trim_sentences",
    "word_support",
]
