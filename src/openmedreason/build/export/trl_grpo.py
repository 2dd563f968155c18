"""TRL ``GRPOTrainer`` (vision): conversational ``prompt`` + ``images`` + reward columns.

Each row: ``prompt`` (as in the SFT export: optional system + user ``[image block, question]``),
``images`` (HF ``Image`` list, embedded bytes), ``answer`` (gold letter), ``options`` (option texts),
``letters`` (e.g. ``"ABCD"``) and the metadata columns. TRL passes every extra column to each reward
function as a keyword argument: ``def reward(completions, answer, options, letters, **kw)``.
No ``completion`` column (GRPO generates it). Files: ``train.parquet``, ``test.parquet``.
"""

from __future__ import annotations

from typing import Any

from openmedreason.build.export.common import ParquetExporter
from openmedreason.build.export.trl_sft import TRL_SPEC_COMMON, _letters, _prompt_images, common_features, common_record
from openmedreason.build.export.validate import ExportItem, RecordSpec


class TrlGrpoExporter(ParquetExporter):
    """TRL GRPO: ``prompt`` + ``images`` + ``answer``/``options``/``letters`` (reward kwargs)."""

    name = "trl-grpo"
    spec = RecordSpec(
        required=dict(TRL_SPEC_COMMON),
        images=lambda r: len(r["images"]),
        placeholders=_prompt_images,
        gold=lambda r: r["answer"],
        letters=_letters,
        split=lambda r: r["split"],
    )

    def features(self) -> Any:
        from datasets import Features

        return Features(common_features())

    def convert(self, item: ExportItem) -> dict[str, Any]:
        return common_record(self, item)
