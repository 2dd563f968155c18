"""lmms-eval task folder: ``<task>.yaml`` + ``utils.py`` + the split parquet(s).

Run with ``lmms_eval --include_path DIR/lmms-eval --tasks openmedreason_mcq …``. The YAML loads the
parquet through ``dataset_path: parquet`` and ``dataset_kwargs.data_files`` (absolute paths of the
export: move the folder → re-export or edit them), evaluates ``test_split`` (``test`` when exported,
else ``train``) with ``output_type: generate_until``, and scores with ``process_results`` →
``acc_strict`` and ``invalid_rate`` (``mean`` aggregation). ``utils.py`` is
:mod:`openmedreason.build.export.lmms_eval_utils`, copied verbatim. Parquet columns: ``id``,
``image`` (HF ``Image``), ``question`` (stem + ``A. …`` lines), ``stem``, ``options``, ``letters``,
``answer``, ``answer_text``, ``reasoning`` (reference trace) and the metadata columns; ``article_id``
is the cluster key for clustered statistics (``metadata.cluster_field``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openmedreason.build.export.common import ParquetExporter, list_feature, meta_columns, meta_features
from openmedreason.build.export.validate import ExportItem, RecordSpec

YAML_VERSION = 1.0


class LmmsEvalExporter(ParquetExporter):
    """lmms-eval: task YAML (``!function utils.…``) + ``utils.py`` + parquet with an ``image`` column."""

    name = "lmms-eval"
    spec = RecordSpec(
        required={"id": str, "question": str, "options": list, "letters": str, "answer": str, "split": str},
        images=lambda r: 1 if r["image"] and (r["image"].get("bytes") or r["image"].get("path")) else 0,
        gold=lambda r: r["answer"],
        letters=lambda r: r["letters"] if len(r["letters"]) == len(r["options"]) else "",
        split=lambda r: r["split"],
    )

    def features(self) -> Any:
        from datasets import Features, Image, Value

        feats = {
            "image": Image(),
            "question": Value("string"),
            "stem": Value("string"),
            "options": list_feature(Value("string")),
            "letters": Value("string"),
            "answer": Value("string"),
            "answer_text": Value("string"),
            "reasoning": Value("string"),
        }
        feats.update(meta_features())
        return Features(feats)

    def convert(self, item: ExportItem) -> dict[str, Any]:
        return {
            "image": self.image_struct(item),
            "question": item.question,
            "stem": item.stem,
            "options": list(item.options),
            "letters": item.letters,
            "answer": item.answer,
            "answer_text": item.answer_text,
            "reasoning": item.reasoning or None,
            **meta_columns(item),
        }

    def finish(self) -> dict[str, Any]:
        task = self.ctx.options.task_name
        test_split = "test" if "test" in self.ctx.splits else self.ctx.splits[0]
        data_files = {s: str((self.ctx.final / self.parquet_name(s)).resolve()) for s in self.ctx.splits}
        yaml_text = task_yaml(task, data_files, test_split, self.ctx.extra)
        (self.ctx.work / f"{task}.yaml").write_text(yaml_text)
        src = Path(__file__).with_name("lmms_eval_utils.py")
        (self.ctx.work / "utils.py").write_text(src.read_text())
        self.files += [f"{task}.yaml", "utils.py"]
        return {"task": task, "test_split": test_split}


def _q(value: Any) -> str:
    """A YAML scalar (JSON strings and numbers are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def task_yaml(task: str, data_files: dict[str, str], test_split: str, extra: dict[str, Any]) -> str:
    """The task YAML text (written by hand: ``!function`` tags are not plain YAML)."""
    lines = [
        "# lmms-eval task written by `omr export --format lmms-eval` (openmedreason); regenerate, do not edit.",
        f"task: {_q(task)}",
        "dataset_path: parquet",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        *[f"    {split}: {_q(path)}" for split, path in data_files.items()],
        f"test_split: {test_split}",
        "output_type: generate_until",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: !function utils.doc_to_target",
        "lmms_eval_specific_kwargs:",
        "  default:",
        '    pre_prompt: ""',
        f"    post_prompt: {_q(chr(10) + 'Think step by step inside <think></think>, then give only the letter of the correct option inside <answer></answer>.')}",
        "generation_kwargs:",
        "  max_new_tokens: 4096",
        "  temperature: 0",
        "  top_p: 1.0",
        "  num_beams: 1",
        "  do_sample: false",
        "process_results: !function utils.process_results",
        "metric_list:",
        "  - metric: acc_strict",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: invalid_rate",
        "    aggregation: mean",
        "    higher_is_better: false",
        "metadata:",
        f"  version: {YAML_VERSION}",
        "  cluster_field: article_id",
        *[f"  {k}: {_q(v)}" for k, v in extra.items()],
    ]
    return "\n".join(lines) + "\n"
