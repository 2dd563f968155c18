"""EasyR1 (``verl/utils/dataset.py``'s ``RLHFDataset``): parquet with ``problem``, ``answer``, ``images``.

``problem`` is the question text with exactly one literal ``<image>`` per image (the loader splits the
string on ``<image>`` to place the images; without it the image is never shown) followed by the
answer-format instruction; set ``data.prompt_key=problem`` (``answer_key=answer``,
``image_key=images`` are the defaults). ``images`` is a list of HF ``Image`` values (``{"bytes", "path"}``;
EasyR1 opens ``image["bytes"]`` or a PIL image).

EasyR1 hands the reward function only ``response`` and ``ground_truth`` (the ``answer`` column), so
the options would be lost. By default (``--easyr1-answer json``) ``answer`` is a JSON string packing
them: ``{"letter": "B", "options": {"A": "…", "B": "…"}, "answer_text": "…"}``; a reward reads it with
``json.loads(ground_truth)["letter"]``. ``--easyr1-answer letter`` writes the bare letter instead.
Metadata columns travel along (the loader keeps them in the batch, the reward does not see them).
Files: ``train.parquet``, ``test.parquet``.
"""

from __future__ import annotations

import json
from typing import Any

from openmedreason.build.export.common import ANSWER_INSTRUCTION, ParquetExporter, list_feature, meta_columns, meta_features
from openmedreason.build.export.validate import ExportItem, RecordSpec


def decode_answer(answer: str) -> tuple[str, str]:
    """(gold letter, option letters) from an EasyR1 ``answer`` in either mode."""
    text = answer.strip()
    if text.startswith("{"):
        packed = json.loads(text)
        return packed["letter"], "".join(packed["options"])
    return text, ""


class EasyR1Exporter(ParquetExporter):
    """EasyR1: ``problem`` with ``<image>``, ``answer`` (JSON-packed letter + options, or the letter)."""

    name = "easyr1"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        mode = ctx.options.easyr1_answer
        if mode not in ("json", "letter"):
            raise ValueError(f"easyr1 answer mode must be json or letter, not {mode!r}")
        self.spec = RecordSpec(
            required={"problem": str, "answer": str, "images": list, "id": str, "split": str},
            images=lambda r: len(r["images"]),
            placeholders=lambda r: r["problem"].count("<image>"),
            gold=lambda r: decode_answer(r["answer"])[0],
            # in letter mode the options are not in the answer: read them from the problem text
            letters=(lambda r: decode_answer(r["answer"])[1]) if mode == "json" else _letters_from_problem,
            split=lambda r: r["split"],
        )

    def features(self) -> Any:
        from datasets import Features, Image, Value

        feats = {"problem": Value("string"), "answer": Value("string"), "images": list_feature(Image())}
        feats.update(meta_features())
        return Features(feats)

    def convert(self, item: ExportItem) -> dict[str, Any]:
        if self.ctx.options.easyr1_answer == "json":
            answer = json.dumps({"letter": item.answer, "options": item.options_map, "answer_text": item.answer_text}, ensure_ascii=False)
        else:
            answer = item.answer
        return {
            "problem": "<image>" + item.question + "\n\n" + ANSWER_INSTRUCTION,
            "answer": answer,
            "images": [self.image_struct(item)],
            **meta_columns(item),
        }


def _letters_from_problem(record: dict[str, Any]) -> str:
    from openmedreason.build.export.validate import parse_question

    text = record["problem"].replace("<image>", "")
    text = text[: text.rfind("\n\n")] if "\n\n" in text else text
    _, options = parse_question(text)
    return "ABCDEFGHIJ"[: len(options)]
