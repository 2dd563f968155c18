"""verl (``examples/data_preprocess/geo3k.py`` layout): parquet for PPO/GRPO with a rule reward.

Each row: ``data_source`` (``"openmedreason"``; pass it to your ``custom_reward_function``),
``prompt`` = ``[{"role": "user", "content": "<image>" + question + instruction}]`` (one ``<image>``
per image), ``images`` = list of HF ``Image`` values (``{"bytes", "path"}``), ``ability``
(``"medical_vqa"``), ``reward_model`` = ``{"style": "rule", "ground_truth": letter}`` and
``extra_info`` = ``{split, index, id, options, letters, answer_text, category, family, modality,
article_id, license}``; verl passes ``extra_info`` to ``compute_score(data_source, solution_str,
ground_truth, extra_info)``, so the options reach the reward. One schema for every row.
Files: ``train.parquet``, ``test.parquet`` (``data.train_files`` / ``data.val_files``).
"""

from __future__ import annotations

from typing import Any

from openmedreason.build.export.common import ANSWER_INSTRUCTION, ParquetExporter, list_feature
from openmedreason.build.export.validate import ExportItem, RecordSpec, count_image_tokens

EXTRA_META = ("category", "family", "modality", "article_id", "license")


class VerlExporter(ParquetExporter):
    """verl: ``data_source``/``prompt``/``images``/``ability``/``reward_model``/``extra_info``."""

    name = "verl"
    spec = RecordSpec(
        required={
            "data_source": str,
            "prompt": list,
            "images": list,
            "ability": str,
            "reward_model.style": str,
            "reward_model.ground_truth": str,
            "extra_info.split": str,
            "extra_info.index": int,
            "extra_info.id": str,
            "extra_info.options": list,
            "extra_info.letters": str,
        },
        images=lambda r: len(r["images"]),
        placeholders=lambda r: count_image_tokens(r["prompt"]),
        gold=lambda r: r["reward_model"]["ground_truth"],
        letters=lambda r: r["extra_info"]["letters"],
        split=lambda r: r["extra_info"]["split"],
    )

    def features(self) -> Any:
        from datasets import Features, Image, Value

        extra = {
            "split": Value("string"),
            "index": Value("int64"),
            "id": Value("string"),
            "options": list_feature(Value("string")),
            "letters": Value("string"),
            "answer_text": Value("string"),
            **{k: Value("string") for k in EXTRA_META},
        }
        return Features(
            {
                "data_source": Value("string"),
                "prompt": list_feature({"role": Value("string"), "content": Value("string")}),
                "images": list_feature(Image()),
                "ability": Value("string"),
                "reward_model": {"style": Value("string"), "ground_truth": Value("string")},
                "extra_info": extra,
            }
        )

    def convert(self, item: ExportItem) -> dict[str, Any]:
        return {
            "data_source": self.ctx.options.data_source,
            "prompt": [{"role": "user", "content": "<image>" + item.question + "\n\n" + ANSWER_INSTRUCTION}],
            "images": [self.image_struct(item)],
            "ability": "medical_vqa",
            "reward_model": {"style": "rule", "ground_truth": item.answer},
            "extra_info": {
                "split": item.split,
                "index": item.index,
                "id": item.id,
                "options": list(item.options),
                "letters": item.letters,
                "answer_text": item.answer_text,
                **{k: item.meta.get(k) for k in EXTRA_META},
            },
        }
