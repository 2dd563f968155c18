"""LLaMA-Factory (sharegpt formatting, OpenAI-style ``messages``), multimodal.

Files: ``train.json`` / ``test.json`` (a JSON list), ``images/<id>.<ext>`` and ``dataset_info.json``
with one entry per split (``openmedreason_train``, ``openmedreason_test``)::

    {"file_name": "train.json", "formatting": "sharegpt",
     "columns": {"messages": "messages", "images": "images"},
     "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
              "assistant_tag": "assistant", "system_tag": "system"}}

Each record: ``{"messages": [system?, {"role": "user", "content": "<image>" + question},
{"role": "assistant", "content": reasoning}], "images": ["images/<id>.jpg"]}``. ``images`` is always
a list (a bare string would be read character by character) with one ``<image>`` token per entry.
Image paths are relative to the folder: train with ``dataset_dir`` (and ``media_dir``) set to it.
Images are always written as files (LLaMA-Factory reads paths), whatever ``--images`` says.
"""

from __future__ import annotations

import json
from typing import Any

from openmedreason.bench.protocol import strip_instruction, user_text
from openmedreason.build.export.common import Exporter, JsonListSink
from openmedreason.build.export.validate import ExportItem, RecordSpec, count_image_tokens, require_trace

TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def _gold(record: dict[str, Any]) -> str:
    from openmedreason.build.export.validate import trace_letter

    letter = trace_letter(record["messages"][-1]["content"])
    return letter or ""


def _letters(record: dict[str, Any]) -> str:
    # the option lines of the user turn ("A. …", "B. …") are the letters the model sees
    from openmedreason.build.export.validate import parse_question

    user = next(m["content"] for m in record["messages"] if m["role"] == "user")
    _, options = parse_question(strip_instruction(user.replace("<image>", "")))
    return "ABCDEFGHIJ"[: len(options)]


class LlamaFactoryExporter(Exporter):
    """LLaMA-Factory: JSON list of ``messages`` + ``images`` paths, plus ``dataset_info.json``."""

    name = "llamafactory"
    image_modes = ("files",)
    spec = RecordSpec(
        required={"messages": list, "images": list, "_split": str},
        images=lambda r: len(r["images"]),
        placeholders=lambda r: count_image_tokens(r["messages"]),
        gold=_gold,
        letters=_letters,
        split=lambda r: r["_split"],
    )

    def begin_split(self, split: str) -> None:
        self._sink = JsonListSink(self.ctx.work / f"{split}.json")

    def convert(self, item: ExportItem) -> dict[str, Any]:
        trace = require_trace(item)
        messages = []
        if self.ctx.options.system_prompt:
            messages.append({"role": "system", "content": self.ctx.options.system_prompt})
        messages.append({"role": "user", "content": "<image>" + user_text(item.question)})
        messages.append({"role": "assistant", "content": trace})
        # _split is for the validator only; it is not written
        return {"messages": messages, "images": [self.image_relpath(item)], "_split": item.split}

    def write(self, record: dict[str, Any], item: ExportItem) -> None:
        self.write_image_file(item)
        self._sink.add({"messages": record["messages"], "images": record["images"]})

    def end_split(self, split: str) -> None:
        self._sink.close()
        self.files.append(f"{split}.json")

    def finish(self) -> dict[str, Any]:
        info = {
            f"{self.ctx.options.data_source}_{split}": {
                "file_name": f"{split}.json",
                "formatting": "sharegpt",
                "columns": {"messages": "messages", "images": "images"},
                "tags": dict(TAGS),
            }
            for split in self.ctx.splits
        }
        (self.ctx.work / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
        self.files.append("dataset_info.json")
        return {"dataset_info": sorted(info)}
