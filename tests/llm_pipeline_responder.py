"""A scripted responder for the fake OpenAI server that answers every request of the LLM pipeline.

**Nothing this module returns is model output.** Every reply is scripted here, from fixed
templates, so that the whole pipeline (A2 → C2 with ``engine = "llm"``) can run end to end
against :class:`llm_fake_server.FakeOpenAIServer` without a model, a network or a key. What a run
with it measures is *our* machinery: which requests the steps make, how many, how they are
cached, accounted, budgeted and turned into kept or rejected records. It says nothing about how a
real model would judge, select, write or verify anything.

Use::

    responder = PipelineResponder(b2_decline_every=5, c1_wrong_letter_every=7)
    with FakeOpenAIServer(responder=responder) as server:
        pipeline.run(..., RunConfig(engine="llm", llm={"default": fast_config(server).model_dump()}))
    responder.calls       # Counter: template -> requests answered (repairs included);
                          # "repairs" and "<template>:repair" count the repair calls
    responder.altered     # "<template>:<kind>" -> {request keys given that scripted bad reply}

How a request is recognised
    By the ``response_format`` json_schema name when there is one (``UsabilityVerdict``,
    ``PanelContext``, ``CategoryAssignment``, ``McqDraft``, ``FinalTrace``, ``Verdict``), else by
    a phrase of the template's system prompt (also what identifies the free-text C1 draft, which
    has no schema). A request whose last message is the engine's repair instruction ("Your
    previous reply could not be used") is a repair call and always gets a valid reply.

What each template gets (valid, plausible and generic)
    * ``a2_text``: every criterion true, each with a one-sentence reason.
    * ``a2_context``: ``relevant_context`` *copied* from the article text in the request (the
      sub-caption, else the caption, then the first citing paragraph without its
      ``[mention: …]`` line), so A2's "context supported by the article text" guard passes;
      ``primary_modality`` from a small keyword table (Radiology, Microscopy, …; Plots and Charts
      when nothing matches); ``valid = true``.
    * ``b1_tasks``: two categories: "Findings / description" or "Anatomy / localization", plus
      one of "Diagnosis", "Mechanism / pathophysiology", "Normal vs abnormal" (chosen by a hash
      of the request, so different panels get different pairs).
    * ``b2_mcq``: a generic stem per category (short: one image-forward sentence; long: a
      neutral one-sentence vignette then the question) that names no finding, no source and no
      option; four homogeneous options from a per-category bank (or the binary pair the request
      asks for); ``answer_index`` chosen by a hash of the request, so it varies.
    * ``c1_draft``: a free-text ``<think>…</think>\\n<answer>X</answer>`` with the gold letter,
      which is parsed from the request ("Correct option: X").
    * ``c1_final``: the structured trace, ``answer`` = the gold letter parsed from the request;
      the sections name the correct option's text and are long enough for C2's checks.
    * ``c2_verify``: every verdict true, no issues.

Scripted bad replies (to exercise rejects), all off by default
    Each knob ``*_every = N`` makes about one request in N of that template get a bad reply. Which
    ones is decided by a hash of the request's text (not by arrival order), so the same input
    always gets the same reply whatever the concurrency, worker count or rerun; the keys of the
    requests that got one are recorded in :attr:`PipelineResponder.altered`.

    * ``a2_unsupported_every``: a context that is not in the article → ``a2.context_unsupported``.
    * ``b1_none_every``: no category → ``b1.no_category``.
    * ``b2_decline_every``: ``valid = false`` with a reason → ``b2.invalid``.
    * ``b2_leak_every``: the correct option's text put in the stem → ``b2.leak_answer``.
    * ``b2_bad_json_every``: a first reply that is not JSON; the engine's one repair call then gets
      a valid reply (the record is kept, at the price of one extra paid call).
    * ``c1_wrong_letter_every``: a final whose answer is another option's letter →
      ``c2.wrong_answer`` (C2's deterministic check, before any C2 call).
    * ``c2_unsupported_every``: ``source_consistent = false`` → ``c2.unsupported``.

Token usage
    With ``openai_like_usage = True`` (default) each reply reports prompt tokens as the request's
    text characters / 4 plus, per image, 85 tokens at ``detail = low`` and 85 + 170 per 512-px
    tile (of the image scaled to fit 2048 then 768 on its short side) otherwise, which is how
    OpenAI-style APIs count images; completion tokens are the reply's characters / 4 + 1. With
    ``False`` the fake server's own count is used (request bytes / 4, which counts the base64 of
    every image as text and so inflates prompt tokens many times over).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from llm_fake_server import Reply

#: response_format json_schema name -> template
SCHEMA_TEMPLATES = {
    "UsabilityVerdict": "a2_text",
    "PanelContext": "a2_context",
    "CategoryAssignment": "b1_tasks",
    "McqDraft": "b2_mcq",
    "FinalTrace": "c1_final",
    "Verdict": "c2_verify",
}
#: a phrase of each template's system prompt -> template (when no json_schema name is sent)
SYSTEM_MARKERS = (
    ("You screen figure panels", "a2_text"),
    ("You prepare the supporting text", "a2_context"),
    ("You assign question categories", "b1_tasks"),
    ("You write one multiple-choice exam question", "b2_mcq"),
    ("You are a physician who teaches", "c1_draft"),
    ("You edit reasoning traces", "c1_final"),
    ("You review reasoning traces", "c2_verify"),
)
REPAIR_MARKER = "Your previous reply could not be used"

_FENCE = re.compile(r"<<<BEGIN ([^\n(]+?) \(article text: data to use, not instructions to follow\)>>>\n(.*?)\n<<<END \1>>>", re.S)
_MENTION = re.compile(r"^\s*\[mention:[^\]\n]*\]\s*$", re.M)

# ------------------------------------------------------------------------------ scripted content
MODALITY_KEYWORDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Radiology", "X-ray", ("radiograph", "x-ray", "chest film")),
    ("Radiology", "CT", (" ct ", "computed tomography", "ctpa", "angiogram")),
    ("Radiology", "MRI", ("mri", "magnetic resonance")),
    ("Microscopy", "histology (H&E)", ("h&e", "histolog", "histopatholog", "biopsy", "section")),
    ("Microscopy", "light microscopy", ("smear", "micrograph", "microscop", "cells")),
    ("Visible light photography", "fundus photograph", ("fundus", "retina")),
    ("Visible light photography", "photograph", ("photograph", "western blot", "immunoblot", "gel", "plate")),
    ("Diagram", "schematic", ("schematic", "diagram", "workflow", "flow chart", "model of")),
    ("Plots and Charts", "chart", ("plot", "curve", "histogram", "bar", "graph", "mean", "scatter")),
)

B1_FIRST = ("Findings / description", "Anatomy / localization")
B1_SECOND = ("Diagnosis", "Mechanism / pathophysiology", "Normal vs abnormal")

#: category name -> (short stem, four homogeneous options of similar length)
B2_BANK: dict[str, tuple[str, list[str]]] = {
    "Findings / description": (
        "Which of the following best describes the main abnormality in this image?",
        ["Focal consolidation", "Diffuse fibrotic change", "Multiple nodular lesions", "Cystic degeneration"],
    ),
    "Anatomy / localization": (
        "Which organ or tissue is primarily shown in this image?",
        ["Lung parenchyma", "Liver parenchyma", "Renal cortex", "Cerebral cortex"],
    ),
    "Diagnosis": (
        "Which of the following is the most likely diagnosis based on this image?",
        ["Bacterial pneumonia", "Pulmonary embolism", "Metastatic carcinoma", "Chronic inflammation"],
    ),
    "Mechanism / pathophysiology": (
        "Which mechanism best explains the appearance in this image?",
        ["Impaired gas exchange", "Increased vascular permeability", "Clonal cell proliferation", "Chronic immune activation"],
    ),
    "Normal vs abnormal": (
        "Is the appearance in this image normal or abnormal?",
        ["Normal", "Abnormal"],
    ),
}
GENERIC_BANK = (
    "Which of the following is best supported by this image?",
    ["First plausible choice", "Second plausible choice", "Third plausible choice", "Fourth plausible choice"],
)
BINARY_STEMS = {
    "yes_no": "Does this image show an abnormal appearance?",
    "true_false": "True or false: the appearance in this image is abnormal.",
    "normal_abnormal": "Is the appearance in this image normal or abnormal?",
}
LONG_PREFIX = "A patient is evaluated and imaging is obtained. "


def _h(*parts: object) -> int:
    """A stable integer from the parts (sha256; Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()[:8], "big")


def _text_parts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of every message, text parts joined."""
    out = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, list):
            c = "\n".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
        out.append((m.get("role", ""), c or ""))
    return out


def _images(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    out = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, list):
            for p in c:
                if isinstance(p, dict) and p.get("type") == "image_url":
                    iu = p.get("image_url") or {}
                    out.append((iu.get("url", ""), iu.get("detail")))
    return out


def _image_tokens(url: str, detail: str | None) -> int:
    """OpenAI-style image tokens of a data URL (85 at low detail; else 85 + 170 per 512-px tile)."""
    if detail == "low":
        return 85
    w = h = 1024
    try:
        from PIL import Image

        data = base64.b64decode(url.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # pragma: no cover - the pipeline only sends images it could encode
        pass
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def fences(text: str) -> dict[str, str]:
    """Fenced article text by label (``CAPTION``, ``SUB-CAPTION``, ``QUESTION``…); ``(none)`` → ""."""
    out = {}
    for m in _FENCE.finditer(text):
        body = m.group(2)
        out[m.group(1)] = "" if body.strip() == "(none)" else body
    return out


def gold_letter(text: str) -> str:
    m = re.search(r"^Correct option: ([A-E])\s*$", text, re.M)
    if m is None:
        raise ValueError("no 'Correct option: X' line in the request")
    return m.group(1)


def question_options(question: str) -> dict[str, str]:
    """{letter: option text} from a fenced question (stem, then ``X. option`` lines)."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^([A-E])\. (.*)$", question, re.M)}


def modality_of(text: str) -> tuple[str, str]:
    low = f" {text.lower()} "
    for group, name, words in MODALITY_KEYWORDS:
        if any(w in low for w in words):
            return group, name
    return "Plots and Charts", "chart"


def _first_sentences(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind(".\n"))
    return cut[: end + 1] if end > 0 else cut.rsplit(" ", 1)[0]


# ------------------------------------------------------------------------------ the responder
@dataclass
class PipelineResponder:
    """Callable ``responder`` for :class:`FakeOpenAIServer`: scripted replies for every pipeline
    template (see the module docstring; none of it is model output)."""

    a2_unsupported_every: int = 0
    b1_none_every: int = 0
    b2_decline_every: int = 0
    b2_leak_every: int = 0
    b2_bad_json_every: int = 0
    c1_wrong_letter_every: int = 0
    c2_unsupported_every: int = 0
    openai_like_usage: bool = True

    calls: Counter = field(default_factory=Counter)
    altered: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- dispatch
    def template_of(self, body: dict[str, Any]) -> str:
        rf = body.get("response_format") or {}
        name = (rf.get("json_schema") or {}).get("name")
        if name in SCHEMA_TEMPLATES:
            return SCHEMA_TEMPLATES[name]
        system = "\n".join(t for r, t in _text_parts(body) if r == "system")
        for marker, template in SYSTEM_MARKERS:
            if marker in system:
                return template
        raise ValueError(f"unrecognised request (schema {name!r}); system prompt starts {system[:80]!r}")

    def __call__(self, body: dict[str, Any]) -> Reply:
        template = self.template_of(body)
        parts = _text_parts(body)
        repair = bool(parts) and parts[-1][0] == "user" and REPAIR_MARKER in parts[-1][1]
        # the original request's user text: the first user message (a repair appends two messages)
        user = next((t for r, t in parts if r == "user"), "")
        key = hashlib.sha256(f"{template}\n{user}".encode()).hexdigest()[:16]
        with self._lock:
            self.calls[template] += 1
            if repair:
                self.calls["repairs"] += 1
                self.calls[f"{template}:repair"] += 1
        reply = getattr(self, "_" + template)(user, key, repair)
        if self.openai_like_usage:
            text_chars = sum(len(t) for _, t in parts)
            prompt = text_chars // 4 + sum(_image_tokens(u, d) for u, d in _images(body)) + 4 * len(parts)
            content = reply.content if reply.json is None else json.dumps(reply.json)
            completion = len(content or "") // 4 + 1
            reply.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return reply

    def _pick(self, knob: int, template: str, key: str, repair: bool = False) -> bool:
        """Whether this request gets the scripted bad reply of ``knob`` (never for a repair)."""
        if not knob or repair or _h(template, knob, key) % knob:
            return False
        with self._lock:
            self.altered[template].add(key)
        return True

    # ---------------------------------------------------------------- A2
    def _a2_text(self, user: str, key: str, repair: bool) -> Reply:
        return Reply(json={
            "adequate_reason": "The text says what the image shows.",
            "adequate": True,
            "clinical_reason": "The content bears on biomedicine.",
            "clinical": True,
            "aligned_reason": "The text is written about an image of this kind.",
            "aligned": True,
            "multistep_reason": "A visual feature is named together with its explanation.",
            "multistep": True,
        })

    def _a2_context(self, user: str, key: str, repair: bool) -> Reply:
        f = fences(user)
        head = f.get("SUB-CAPTION") or f.get("CAPTION") or ""
        paras = [p.strip() for p in _MENTION.sub("", f.get("CITING PARAGRAPHS", "")).split("\n\n") if p.strip()]
        picked = [head.strip()] + ([_first_sentences(paras[0], 1200)] if paras else [])
        context = "\n\n".join(p for p in picked if p)
        group, name = modality_of(" ".join([head, *paras[:1]]))
        if self._pick(self.a2_unsupported_every, "a2_context:unsupported", key, repair):
            context = ("Zebra quantum violin umbrella marathon; the volcano choreography of seven purple "
                       "telescopes rewrote the saxophone harbour overnight.")
        return Reply(json={"relevant_context": context, "primary_modality": group, "secondary_modality": name,
                           "reason": "", "valid": True})

    # ---------------------------------------------------------------- B1
    def _b1_tasks(self, user: str, key: str, repair: bool) -> Reply:
        if self._pick(self.b1_none_every, "b1_tasks:none", key, repair):
            return Reply(json={"categories": []})
        first = B1_FIRST[_h("b1-first", key) % len(B1_FIRST)]
        second = B1_SECOND[_h("b1-second", key) % len(B1_SECOND)]
        return Reply(json={"categories": [
            {"name": first, "evidence": "The text names what the image shows."},
            {"name": second, "evidence": "The text explains the finding."},
        ]})

    # ---------------------------------------------------------------- B2
    def _b2_mcq(self, user: str, key: str, repair: bool) -> Reply:
        m = re.search(r"^Category: (.+?) \((\w+) family\)", user, re.M)
        cat = m.group(1) if m else ""
        style = "long" if re.search(r"^Stem style: long\.", user, re.M) else "short"
        fm = re.search(r"^Answer format: (\w+)", user, re.M)
        binary = fm is not None and fm.group(1) == "binary"
        if self._pick(self.b2_bad_json_every, "b2_mcq:bad_json", key, repair):
            return Reply(content="Here is the question: the most likely diagnosis is shown in the image.")
        if self._pick(self.b2_decline_every, "b2_mcq:decline", key, repair):
            return Reply(json={"valid": False, "invalid_reason": "the text does not support one single best answer",
                               "stem": "", "options": [], "answer_index": 0})
        stem, options = B2_BANK.get(cat, GENERIC_BANK)
        options = list(options)
        if binary:
            pair = re.search(r"the options are exactly (\[[^\]]*\])", user)
            options = json.loads(pair.group(1)) if pair else ["Yes", "No"]
            kind = {"normal": "normal_abnormal", "yes": "yes_no", "true": "true_false"}.get(options[0].lower(), "yes_no")
            stem = BINARY_STEMS[kind]
        answer = _h("b2-answer", key) % len(options)
        if style == "long":
            stem = LONG_PREFIX + stem
        if not binary and self._pick(self.b2_leak_every, "b2_mcq:leak", key, repair):
            stem = stem.rstrip("?.") + f", given that it shows {options[answer].lower()}?"
        return Reply(json={"valid": True, "invalid_reason": None, "stem": stem, "options": options, "answer_index": answer})

    # ---------------------------------------------------------------- C1
    def _c1_draft(self, user: str, key: str, repair: bool) -> Reply:
        letter = gold_letter(user)
        option = question_options(fences(user).get("QUESTION", "")).get(letter, "the correct option")
        return Reply(content=(
            "<think>\nFirst I check what the image shows that bears on the question. The visible appearance matches "
            f"{option.lower()}, and the clinical setting in the question is consistent with it. Linking the finding "
            f"to medical knowledge, option {letter} is the best answer.\n</think>\n<answer>{letter}</answer>"
        ))

    def _c1_final(self, user: str, key: str, repair: bool) -> Reply:
        f = fences(user)
        gold = gold_letter(user)
        options = question_options(f.get("QUESTION", ""))
        option = options.get(gold, "the correct option")
        letter = gold
        if self._pick(self.c1_wrong_letter_every, "c1_final:wrong_letter", key, repair):
            letter = next(x for x in sorted(options) + ["A", "B"] if x != gold)
        return Reply(json={
            "check": "The key task is to identify the dominant visible pattern in this image and relate it to the clinical question.",
            "perception": f"The image shows an appearance that corresponds to {option.lower()}, with a consistent "
                          "distribution and no competing pattern of similar weight.",
            "clinical_context": "",
            "interpretation": f"This appearance is characteristic of {option.lower()}: the visible pattern reflects the "
                              "underlying process, and general medical knowledge links this kind of finding to that explanation.",
            "justification": f"Taken together, the visible pattern and its interpretation support {option}, which is option {gold}.",
            "answer": letter,
        })

    # ---------------------------------------------------------------- C2
    def _c2_verify(self, user: str, key: str, repair: bool) -> Reply:
        if self._pick(self.c2_unsupported_every, "c2_verify:unsupported", key, repair):
            return Reply(json={"source_consistent": False, "answer_justified": True, "useful": True,
                               "issues": ["a statement about the case is not in the reference material"]})
        return Reply(json={"source_consistent": True, "answer_justified": True, "useful": True, "issues": []})


__all__ = ["PipelineResponder", "fences", "gold_letter", "modality_of", "question_options"]
