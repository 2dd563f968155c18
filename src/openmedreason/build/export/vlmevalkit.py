"""VLMEvalKit image-MCQ TSV (``vlmeval/dataset/image_mcq.py`` conventions).

One file per split, ``OpenMedReason_<split>.tsv`` (tab-separated, csv quoting for fields holding tabs,
quotes or newlines; ``pandas.read_csv(path, sep="\\t")`` reads it). Columns: ``index`` (int, unique
across the export), ``image`` (base64 of the RGB JPEG/PNG bytes), ``question`` (the stem only: the
kit builds ``Options:`` from the columns), ``hint`` (empty), one column per option ``A``…``E`` (empty
when the item has fewer options, which the kit skips), ``answer`` (gold letter), ``category`` (our
question category), ``l2-category`` (its family), ``split``, then ``id``, ``modality``, ``article_id``.
The MD5 of each file is printed and recorded in ``export.json`` (VLMEvalKit checks a dataset's MD5).
Images are always embedded (base64).
"""

from __future__ import annotations

import base64
import csv
import hashlib
from typing import Any

from openmedreason.build.export.common import Exporter
from openmedreason.build.export.validate import LETTERS, ExportItem, RecordSpec

COLUMNS = ["index", "image", "question", "hint", *LETTERS, "answer", "category", "l2-category", "split", "id", "modality", "article_id"]


def _letters(record: dict[str, Any]) -> str:
    present = "".join(l for l in LETTERS if record.get(l))
    if present != LETTERS[: len(present)]:
        raise ValueError(f"option columns not contiguous: {present}")
    return present


def _images(record: dict[str, Any]) -> int:
    return 1 if base64.b64decode(record["image"], validate=True) else 0


class VlmEvalKitExporter(Exporter):
    """VLMEvalKit: TSV with base64 ``image``, option columns ``A``…``E``, ``answer``, categories."""

    name = "vlmevalkit"
    image_modes = ("embed",)
    spec = RecordSpec(
        required={"index": int, "image": str, "question": str, "answer": str, "category": str, "split": str},
        images=_images,
        gold=lambda r: r["answer"],
        letters=_letters,
        split=lambda r: r["split"],
    )

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._next_index = 0
        self.md5: dict[str, str] = {}

    def file_name(self, split: str) -> str:
        return f"OpenMedReason_{split}.tsv"

    def begin_split(self, split: str) -> None:
        path = self.ctx.work / self.file_name(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("w", encoding="utf-8", newline="")
        self._w = csv.writer(self._f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        self._w.writerow(COLUMNS)

    def convert(self, item: ExportItem) -> dict[str, Any]:
        row: dict[str, Any] = {
            "index": self._next_index,
            "image": base64.b64encode(item.image).decode("ascii"),
            "question": item.stem,
            "hint": "",
            "answer": item.answer,
            "category": item.meta.get("category") or "unknown",
            "l2-category": item.meta.get("family") or "",
            "split": item.split,
            "id": item.id,
            "modality": item.meta.get("modality") or "",
            "article_id": item.meta.get("article_id") or "",
        }
        for letter in LETTERS:
            row[letter] = item.options_map.get(letter, "")
        return row

    def write(self, record: dict[str, Any], item: ExportItem) -> None:
        # base64 never needs quoting: written as is, instead of csv scanning ~200 kB per row
        self._f.write(f"{record['index']}\t{record['image']}\t")
        self._w.writerow([record.get(c, "") for c in COLUMNS[2:]])
        self._next_index += 1

    def end_split(self, split: str) -> None:
        self._f.close()
        name = self.file_name(split)
        with (self.ctx.work / name).open("rb") as f:
            self.md5[name] = hashlib.file_digest(f, "md5").hexdigest()
        self.files.append(name)

    def finish(self) -> dict[str, Any]:
        return {"md5": dict(self.md5)}
