"""lmms-eval task functions for an OpenMedReason export.

``omr export --format lmms-eval`` copies this file verbatim as ``utils.py`` next to the task YAML
(``doc_to_visual: !function utils.doc_to_visual`` …). It has no dependency beyond Pillow: answers are
extracted with ``openmedreason.bench.answers.extract_answer`` when openmedreason is importable, else
with the small fallback below (last ``<answer>X</answer>`` tag, then ``\\boxed{X}``, then
"answer is X", then a reply that is only a letter). Metrics: ``acc_strict`` (the extracted letter
equals the gold letter; no extraction counts as wrong) and ``invalid_rate`` (no letter extracted).
"""

from __future__ import annotations

import io
import re
from typing import Any

DEFAULT_POST_PROMPT = (
    "\nThink step by step inside <think></think>, then give only the letter of the correct option inside <answer></answer>."
)

_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S | re.I)
_BOXED = re.compile(r"\\boxed\{\s*\(?([A-Za-z])\)?\s*\}")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*\(?\**([A-Za-z])\**\)?(?![A-Za-z])", re.I)
_BARE = re.compile(r"^\s*\(?([A-Za-z])\)?[.):]?\s*$")


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The item's image as a one-element list of RGB PIL images."""
    from PIL import Image

    image = doc["image"]
    if isinstance(image, dict):  # parquet read without HF features: {"bytes", "path"}
        image = Image.open(io.BytesIO(image["bytes"]))
    return [image.convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """``pre_prompt`` + the question (stem, then ``A. …`` lines) + ``post_prompt``."""
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', DEFAULT_POST_PROMPT)}"


def doc_to_target(doc: dict[str, Any]) -> str:
    """The gold letter."""
    return doc["answer"]


def fallback_extract(text: str, letters: str) -> tuple[str | None, str]:
    """Minimal letter extraction used when openmedreason is not installed: (letter or None, method)."""
    text = text or ""
    tags = _TAG.findall(text)
    if tags:
        m = _BARE.match(tags[-1])
        letter = m.group(1).upper() if m else None
        return (letter, "answer_tag") if letter in letters and letter else (None, "invalid:answer_tag")
    for pattern, method in ((_BOXED, "boxed"), (_ANSWER_IS, "answer_is"), (_BARE, "bare_letter")):
        found = pattern.findall(text)
        if found:
            letter = found[-1].upper()
            return (letter, method) if letter in letters else (None, f"invalid:{method}")
    return None, "none"


def extract_letter(text: str, letters: str, options: list[str] | None = None) -> tuple[str | None, str]:
    """The predicted letter and the extraction method."""
    try:
        from openmedreason.bench.answers import extract_answer
    except ImportError:
        return fallback_extract(text, letters)
    ex = extract_answer(text, letters=letters, options=options)
    return ex.letter, ex.method


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Per-item metric inputs: ``acc_strict`` and ``invalid_rate`` (both averaged by ``mean``)."""
    response = results[0] if results else ""
    letter, _method = extract_letter(response, doc["letters"], list(doc.get("options") or []))
    return {"acc_strict": float(letter is not None and letter == doc["answer"]), "invalid_rate": float(letter is None)}
