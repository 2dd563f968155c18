"""TRL ``SFTTrainer`` (vision): conversational prompt–completion with an ``images`` column.

Each row: ``prompt`` = optional system message + one user message whose content blocks are
``[{"type": "image"}, {"type": "text", "text": question}]``; ``completion`` = one assistant message
``[{"type": "text", "text": reasoning}]`` (``<think>…</think>\\n<answer>X</answer>``); ``images`` = the
image as an HF ``Image`` list (embedded bytes), so ``load_dataset("parquet", data_dir=…)`` yields PIL
images; plus ``answer``, ``options``, ``letters`` and the metadata columns (ignored by the trainer).
Every content list has the same struct (``type``, ``text``): image blocks carry ``text = None``.
Files: ``train.parquet``, ``test.parquet``.
"""

from __future__ import annotations

from typing import Any

from openmedreason.bench.protocol import user_text
from openmedreason.build.export.common import ParquetExporter, list_feature, meta_columns, meta_features
from openmedreason.build.export.validate import ExportItem, RecordSpec, count_image_blocks, require_trace


def prompt_messages(item: ExportItem, system_prompt: str | None) -> list[dict[str, Any]]:
    """System (optional) + user message with one image block before the question text."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": user_text(item.question)}]})
    return messages


def message_features() -> Any:
    from datasets import Value

    block = {"type": Value("string"), "text": Value("string")}
    return list_feature({"role": Value("string"), "content": list_feature(block)})


def common_features() -> dict[str, Any]:
    from datasets import Image, Value

    feats = {
        "prompt": message_features(),
        "images": list_feature(Image()),
        "answer": Value("string"),
        "options": list_feature(Value("string")),
        "letters": Value("string"),
    }
    feats.update(meta_features())
    return feats


def _prompt_images(record: dict[str, Any]) -> int:
    return count_image_blocks(record["prompt"])


def _letters(record: dict[str, Any]) -> str:
    letters = record["letters"]
    if len(letters) != len(record["options"]):
        raise ValueError(f"{len(record['options'])} options but letters {letters!r}")
    return letters


def common_record(exporter: ParquetExporter, item: ExportItem) -> dict[str, Any]:
    """The columns the SFT and GRPO exports share: prompt, images, reward kwargs, metadata."""
    return {
        "prompt": prompt_messages(item, exporter.ctx.options.system_prompt),
        "images": [exporter.image_struct(item)],
        "answer": item.answer,
        "options": list(item.options),
        "letters": item.letters,
        **meta_columns(item),
    }


TRL_SPEC_COMMON: dict[str, Any] = {
    "prompt": list,
    "images": list,
    "answer": str,
    "options": list,
    "letters": str,
    "id": str,
    "split": str,
}


class TrlSftExporter(ParquetExporter):
    """TRL SFT: conversational ``prompt`` + ``completion`` + ``images`` (+ metadata)."""

    name = "trl-sft"
    spec = RecordSpec(
        required={**TRL_SPEC_COMMON, "completion": list},
        images=lambda r: len(r["images"]),
        placeholders=_prompt_images,
        gold=lambda r: r["answer"],
        letters=_letters,
        split=lambda r: r["split"],
    )

    def features(self) -> Any:
        from datasets import Features

        feats = common_features()
        feats["completion"] = message_features()
        return Features(feats)

    def convert(self, item: ExportItem) -> dict[str, Any]:
        trace = require_trace(item)
        return {**common_record(self, item), "completion": [{"role": "assistant", "content": [{"type": "text", "text": trace}]}]}
