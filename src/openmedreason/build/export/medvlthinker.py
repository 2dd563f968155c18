"""MedVLThinker's unified evaluation schema (``UCSC-VLAA/MedVLThinker-Eval``), as parquet.

Each row: ``images`` (list of HF ``Image``), ``question`` (the stem only: their prompt builder adds
``Options:`` and ``A. …`` lines itself), ``options`` (a JSON *string* of ``{"A": "…", "B": "…"}``,
read with ``json.loads``), ``answer_label`` (gold letter), ``answer`` (the gold option's text; their
grader accepts ``"B"``, ``"B. text"`` or the text), ``dataset_name`` (``"openmedreason"``),
``dataset_index`` (int, unique across the export), ``reasoning`` (our trace, optional in their
schema) and ``id``/``split`` + metadata. Files: ``train.parquet``, ``test.parquet``.
"""

from __future__ import annotations

import json
from typing import Any

from openmedreason.build.export.common import ParquetExporter, list_feature, meta_columns, meta_features
from openmedreason.build.export.validate import ExportItem, RecordSpec


class MedVLThinkerExporter(ParquetExporter):
    """MedVLThinker eval schema: ``images``/``question``/``options`` (JSON)/``answer_label``/``answer``."""

    name = "medvlthinker"
    spec = RecordSpec(
        required={
            "images": list,
            "question": str,
            "options": str,
            "answer_label": str,
            "answer": str,
            "dataset_name": str,
            "dataset_index": int,
            "id": str,
            "split": str,
        },
        images=lambda r: len(r["images"]),
        gold=lambda r: r["answer_label"],
        letters=lambda r: "".join(json.loads(r["options"])),
        split=lambda r: r["split"],
    )

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._next_index = 0

    def features(self) -> Any:
        from datasets import Features, Image, Value

        feats = {
            "images": list_feature(Image()),
            "question": Value("string"),
            "options": Value("string"),
            "answer_label": Value("string"),
            "answer": Value("string"),
            "reasoning": Value("string"),
            "dataset_name": Value("string"),
            "dataset_index": Value("int64"),
        }
        feats.update(meta_features())
        return Features(feats)

    def convert(self, item: ExportItem) -> dict[str, Any]:
        return {
            "images": [self.image_struct(item)],
            "question": item.stem,
            "options": json.dumps(item.options_map, ensure_ascii=False),
            "answer_label": item.answer,
            "answer": item.answer_text,
            "reasoning": item.reasoning or None,
            "dataset_name": self.ctx.options.data_source,
            "dataset_index": self._next_index,
            **meta_columns(item),
        }

    def write(self, record: dict[str, Any], item: ExportItem) -> None:
        super().write(record, item)
        self._next_index += 1
