"""``export_dataset``: one streaming pass over a built dataset feeding one or several formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from openmedreason.build.export.common import ExportContext, Exporter, ExportOptions
from openmedreason.build.export.source import build_info, dataset_hash, iter_rows, split_files
from openmedreason.build.export.validate import DUPLICATE_ID, SPLITS, Reject, check_record, normalize_row

#: version of the export layouts (bump when a format's fields change)
EXPORT_VERSION = 1


def resolve_formats(spec: str | Iterable[str]) -> list[str]:
    """``"all"``, one name, a comma-separated list or an iterable → known format names, in registry order."""
    from openmedreason.build.export.registry import FORMATS

    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if "all" in names:
        return list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown export format(s) {unknown or names}; choose from: all, {', '.join(FORMATS)}")
    return [n for n in FORMATS if n in names]


def resolve_splits(dataset_dir: Path, split: str) -> list[str]:
    """``train`` / ``test`` / ``all`` → the splits to export (``all``: those the dataset has)."""
    if split not in (*SPLITS, "all"):
        raise ValueError(f"--split must be train, test or all, not {split!r}")
    wanted = list(SPLITS) if split == "all" else [split]
    present = [s for s in wanted if split_files(dataset_dir, s)]
    if not present:
        raise ValueError(f"{dataset_dir} has no {' or '.join(wanted)} split under data/")
    return present


def export_dataset(
    dataset_dir: Path | str,
    formats: str | Iterable[str],
    out: Path | str,
    *,
    split: str = "all",
    options: ExportOptions | None = None,
    limit: int | None = None,
    on_row: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export ``dataset_dir`` (contract D) to each format under ``out/<format>/``; return the manifests.

    The source is read once, a batch at a time; each row is checked and normalised once
    (:func:`~openmedreason.build.export.validate.normalize_row`), then every format builds its record,
    the shared validator checks it, and the format writes it. Rejected rows go to
    ``out/<format>/rejected.jsonl`` with their reason. Each format is written to a hidden work folder
    and renamed into place at the end, replacing an earlier export. ``limit``: rows read per split;
    ``on_row``: called once per row read (progress bars).
    """
    from openmedreason import __version__
    from openmedreason.build.export.registry import FORMATS, describe

    dataset_dir = Path(dataset_dir)
    out = Path(out)
    options = options or ExportOptions()
    if options.images not in ("embed", "files"):
        raise ValueError(f"--images must be embed or files, not {options.images!r}")
    if limit is not None and limit < 0:
        raise ValueError("--limit must be >= 0")
    names = resolve_formats(formats)
    splits = resolve_splits(dataset_dir, split)
    digest = dataset_hash(dataset_dir)
    out.mkdir(parents=True, exist_ok=True)

    exporters: dict[str, Exporter] = {}
    rejects: dict[str, Any] = {}
    counts: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names}
    for name in names:
        work = out / f".{name}.partial"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        ctx = ExportContext(
            work=work,
            final=out / name,
            options=options,
            splits=splits,
            source=dataset_dir,
            extra={"openmedreason_version": __version__, "dataset_hash": digest},
        )
        exporters[name] = FORMATS[name](ctx)
        rejects[name] = (work / "rejected.jsonl").open("w", encoding="utf-8")

    def reject(name: str, item_id: Any, split_name: str, index: int, exc: Reject) -> None:
        c = counts[name][split_name]["rejected"]
        c[exc.code] = c.get(exc.code, 0) + 1
        rec = {"id": item_id, "split": split_name, "index": index, "reason": exc.code, "detail": exc.detail}
        rejects[name].write(json.dumps(rec, ensure_ascii=False) + "\n")

    converted = 0
    seen: set[str] = set()
    try:
        for split_name in splits:
            for name, ex in exporters.items():
                counts[name][split_name] = {"read": 0, "written": 0, "rejected": {}}
                ex.begin_split(split_name)
            for index, row in enumerate(iter_rows(dataset_dir, split_name, batch_size=options.rows_per_group)):
                if limit is not None and index >= limit:
                    break
                if on_row is not None:
                    on_row()
                for name in names:
                    counts[name][split_name]["read"] += 1
                rid = row.get("id")
                try:
                    if isinstance(rid, str) and rid in seen:
                        raise Reject(DUPLICATE_ID, f"id {rid!r} already exported")
                    item = normalize_row(row, split_name, index, min_image_side=options.min_image_side)
                except Reject as exc:
                    for name in names:
                        reject(name, rid, split_name, index, exc)
                    continue
                seen.add(item.id)
                converted += item.image_converted is not None
                for name, ex in exporters.items():
                    try:
                        record = ex.convert(item)
                        check_record(record, ex.spec, item)
                    except Reject as exc:
                        reject(name, item.id, split_name, index, exc)
                        continue
                    ex.write(record, item)
                    counts[name][split_name]["written"] += 1
            for ex in exporters.values():
                ex.end_split(split_name)
        manifests: dict[str, dict[str, Any]] = {}
        for name, ex in exporters.items():
            rejects[name].close()
            extra = ex.finish()
            for s, c in counts[name].items():
                if c["read"] != c["written"] + sum(c["rejected"].values()):
                    raise RuntimeError(f"{name}/{s}: read {c['read']} != written + rejected {c}")
            manifest = {
                "format": name,
                "description": describe(name),
                "export_version": EXPORT_VERSION,
                "openmedreason_version": __version__,
                "source": {"path": str(dataset_dir.resolve()), "dataset_hash": digest, "build": build_info(dataset_dir)},
                "options": {
                    "split": split,
                    "images": ex.image_mode,
                    "limit": limit,
                    "min_image_side": options.min_image_side,
                    "system_prompt": options.system_prompt,
                    **({"easyr1_answer": options.easyr1_answer} if name == "easyr1" else {}),
                    **({"task_name": options.task_name} if name == "lmms-eval" else {}),
                },
                "splits": splits,
                "counts": counts[name],
                "totals": {
                    "read": sum(c["read"] for c in counts[name].values()),
                    "written": sum(c["written"] for c in counts[name].values()),
                    "rejected": sum(sum(c["rejected"].values()) for c in counts[name].values()),
                },
                "images_converted_to_rgb": converted,
                "files": sorted(set(ex.files)) + ["rejected.jsonl"],
                **extra,
            }
            (ex.ctx.work / "export.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
            final = ex.ctx.final
            if final.exists():
                shutil.rmtree(final)
            ex.ctx.work.rename(final)
            manifests[name] = manifest
        return manifests
    except BaseException:
        for name, ex in exporters.items():
            if not rejects[name].closed:
                rejects[name].close()
            shutil.rmtree(ex.ctx.work, ignore_errors=True)
        raise
