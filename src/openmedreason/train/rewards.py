"""GRPO rewards shared with evaluation: format, accuracy and an optional length penalty.

Plain functions on text first (:func:`format_score`, :func:`accuracy_score`,
:func:`length_score`), then adapters:

- TRL ``GRPOTrainer``: :func:`format_reward`, :func:`accuracy_reward`, :func:`make_length_penalty`
  (``f(completions, **columns) -> list[float]``; the gold letter comes from the ``answer`` column,
  the valid letters from ``options`` / ``letters``);
- EasyR1 (``worker.reward.reward_function=…/easyr1_reward.py:compute_score``):
  :func:`easyr1_compute_score`, batch mode;
- verl (``custom_reward_function.path=…/verl_reward.py``, ``name=compute_score``):
  :func:`verl_compute_score`.

The accuracy reward uses the evaluation's answer extractor
(:func:`openmedreason.bench.answers.extract_answer`), so the reward and the metric agree, and it
is stricter than the metric in one way: the answer must come from exactly one
``<answer>…</answer>`` tag, read there as the metric reads it (a letter, ``B. text``, or exactly
one option's text; only the format reward insists on a bare letter). Everything else gets 0:
hedges ("A or B"), empty tags, two tags (also a repeated ``<answer>A</answer>``), letters outside
the options, an answer outside the tag, a bare letter as the whole completion. (The
release compared the whole completion with the letter, and its format regex wanted newlines the
data does not have; see docs/training.md.)

No torch import: the module loads in any Python with this package installed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Callable

from openmedreason.bench.answers import extract_answer, format_ok

__all__ = [
    "format_score",
    "accuracy_score",
    "length_score",
    "completion_text",
    "format_reward",
    "accuracy_reward",
    "make_length_penalty",
    "parse_ground_truth",
    "easyr1_compute_score",
    "verl_compute_score",
]

_OPEN_TAG = re.compile(r"<answer\s*>", re.I)
_CLOSE_TAG = re.compile(r"</answer\s*>", re.I)


def _letters_for(letters: str | None, options: Sequence[str] | None) -> str:
    if options:
        return "ABCDEFGHIJ"[: len(options)]
    return (letters or "ABCDE").upper()


def format_score(text: str | None, letters: str | None = None) -> float:
    """1.0 iff ``text`` is ``<think>`` non-empty reasoning ``</think>`` then exactly one
    ``<answer>X</answer>`` (X one upper-case letter, in ``letters`` when given) and nothing else
    but whitespace: the dataset's own ``<think>…</think>\\n<answer>X</answer>`` form."""
    return 1.0 if format_ok(text, letters) else 0.0


def accuracy_score(
    text: str | None, gold: str | None, letters: str | None = None, options: Sequence[str] | None = None
) -> float:
    """1.0 iff the completion has exactly one ``<answer>…</answer>`` and the evaluation's extractor
    reads one valid letter from it that equals ``gold``; else 0.0 (never a partial credit)."""
    if not text or not gold:
        return 0.0
    valid = _letters_for(letters, options)
    gold = gold.strip().upper()
    if gold not in valid:
        return 0.0
    if len(_OPEN_TAG.findall(text)) != 1 or len(_CLOSE_TAG.findall(text)) != 1:
        return 0.0
    got = extract_answer(text, valid, list(options) if options else None)
    if got.method != "answer_tag" or got.letter is None:
        return 0.0
    return 1.0 if got.letter == gold else 0.0


def length_score(n_tokens: int, max_tokens: int, buffer: int) -> float:
    """Soft over-length penalty in [-1, 0]: 0 up to ``max_tokens - buffer``, then linear to -1 at
    ``max_tokens`` (a completion cut at the limit gets -1)."""
    start = max_tokens - buffer
    if n_tokens <= start:
        return 0.0
    return -min(1.0, (n_tokens - start) / max(buffer, 1))


# --------------------------------------------------------------------------------------------
# TRL adapters


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string, or a conversational message list
    (``completion[0]["content"]``, the content a string or text blocks)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for msg in completion:
        content = msg.get("content") if isinstance(msg, dict) else msg
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return "".join(parts)


def _column(kwargs: dict[str, Any], name: str, n: int) -> list[Any]:
    value = kwargs.get(name)
    if value is None:
        return [None] * n
    return list(value)


def format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward: :func:`format_score` per completion (letters from the ``options``/``letters`` columns when present)."""
    n = len(completions)
    opts, lets = _column(kwargs, "options", n), _column(kwargs, "letters", n)
    return [format_score(completion_text(c), _letters_for(l, o)) for c, o, l in zip(completions, opts, lets)]


def accuracy_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward: :func:`accuracy_score` per completion against the ``answer`` column."""
    n = len(completions)
    golds = _column(kwargs, "answer", n)
    if all(g is None for g in golds):
        raise KeyError("accuracy_reward needs an 'answer' column with the gold letter")
    opts, lets = _column(kwargs, "options", n), _column(kwargs, "letters", n)
    return [accuracy_score(completion_text(c), g, l, o) for c, g, o, l in zip(completions, golds, opts, lets)]


def make_length_penalty(max_completion_length: int, buffer: int = 128) -> Callable[..., list[float]]:
    """A TRL reward giving :func:`length_score` of each completion's token count
    (``completion_ids``; whitespace words when TRL does not pass them)."""

    def length_penalty(completions: list[Any], completion_ids: list[Any] | None = None, **kwargs: Any) -> list[float]:
        if completion_ids is not None:
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c).split()) for c in completions]
        return [length_score(n, max_completion_length, buffer) for n in lengths]

    return length_penalty


# --------------------------------------------------------------------------------------------
# EasyR1 and verl


def parse_ground_truth(ground_truth: Any) -> tuple[str | None, list[str] | None, str | None]:
    """``(letter, options, letters)`` from a ground truth that is a letter (``"B"``) or a JSON
    string / dict packing ``{"letter": "B", "options": ["…", …]}`` (``"answer"`` is accepted for
    ``"letter"``, ``"letters"`` for the valid letters, and options may be a ``{"A": "…"}`` map)."""
    if ground_truth is None:
        return None, None, None
    data: Any = ground_truth
    if isinstance(ground_truth, str):
        s = ground_truth.strip()
        if s.startswith("{"):
            try:
                data = json.loads(s)
            except ValueError:
                return None, None, None
        else:
            return (s.upper() or None), None, None
    if not isinstance(data, dict):
        return None, None, None
    letter = data.get("letter", data.get("answer"))
    options = data.get("options")
    if isinstance(options, dict):
        options = [options[k] for k in sorted(options)]
    return (str(letter).strip().upper() if letter else None), (list(options) if options else None), data.get("letters")


#: EasyR1 calls compute_score once with the whole batch
REWARD_TYPE = "batch"


def easyr1_compute_score(reward_inputs: list[dict[str, Any]], format_weight: float = 0.5) -> list[dict[str, float]]:
    """EasyR1 batch reward: inputs ``{response, response_length, ground_truth}``; returns one dict
    per input with ``overall = (1 - format_weight)·accuracy + format_weight·format``, ``format``
    and ``accuracy``. The default weight 0.5 is the release's equal weighting of the two rewards."""
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError("format_weight must be in [0, 1]")
    scores = []
    for item in reward_inputs:
        letter, options, letters = parse_ground_truth(item.get("ground_truth"))
        text = item.get("response") or ""
        valid = _letters_for(letters, options)
        fmt = format_score(text, valid)
        acc = accuracy_score(text, letter, valid, options)
        scores.append({"overall": (1.0 - format_weight) * acc + format_weight * fmt, "format": fmt, "accuracy": acc})
    return scores


def verl_compute_score(
    data_source: str | None, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None
) -> dict[str, float]:
    """verl custom reward: ``score = accuracy + format_weight·format`` (``format_weight`` from
    ``extra_info``, default 1.0 = the release's equal weights), with ``accuracy`` and ``format``
    logged. ``ground_truth`` as in :func:`parse_ground_truth`; ``extra_info`` may carry
    ``options`` (list) and ``letters`` when the ground truth is a bare letter."""
    letter, options, letters = parse_ground_truth(ground_truth)
    extra = extra_info or {}
    options = options or extra.get("options") or None
    letters = letters or extra.get("letters")
    valid = _letters_for(letters, options)
    fmt = format_score(solution_str, valid)
    acc = accuracy_score(solution_str, letter, valid, options)
    weight = float(extra.get("format_weight", 1.0))
    return {"score": acc + weight * fmt, "accuracy": acc, "format": fmt}
