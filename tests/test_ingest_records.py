"""Ingest of image + caption + context record sets (JSONL, JSONL.gz, Parquet)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openmedreason.ingest import records_source as rs
from openmedreason.ingest.license import normalize_license
from openmedreason.ingest.records_source import (
    IMAGE_MISSING,
    PRESETS,
    RECORD_INVALID,
    FieldMap,
    count_rows,
    detect_preset,
    ingest_records,
    iter_record_units,
    parse_field_map,
    resolve_field_map,
)
from openmedreason.reasons import REASONS
from openmedreason.records import Panel
from openmedreason.run.steps import Rejected

MEDICAL = Path(__file__).resolve().parents[1] / "examples" / "corpus" / "medical"
METADATA = MEDICAL / "metadata.jsonl"


def _index_licence_counts() -> dict[str, int]:
    text = (MEDICAL / "INDEX.md").read_text()
    line = next(l for l in text.splitlines() if l.startswith("- Redistributable: CC"))
    return {label.strip(): int(n) for label, n in re.findall(r"([^:,]+):\s*(\d+)", line.split("Redistributable:", 1)[1])}


def _by_kind(items):
    kept = [x for x in items if isinstance(x, Panel)]
    rejected = [x for x in items if isinstance(x, Rejected)]
    return kept, rejected


def _key(item) -> tuple:
    if isinstance(item, Rejected):
        return ("rejected", item.reason, item.detail, item.record.model_dump_json())
    return ("panel", item.model_dump_json())


# --------------------------------------------------------------------------- the real fixture


def test_reason_codes_registered():
    assert RECORD_INVALID == "ingest.record_invalid" and IMAGE_MISSING == "ingest.image_missing"
    assert REASONS[IMAGE_MISSING] == "the figure's image file could not be found"
    assert RECORD_INVALID in REASONS


def test_medical_fixture_ingests_19_records():
    items = ingest_records(METADATA, field_map="medcorpus")
    kept, rejected = _by_kind(items)
    assert len(kept) == 19 and not rejected
    assert count_rows(METADATA) == 19
    # auto-detection picks the same mapping
    assert [p.model_dump() for p in ingest_records(METADATA)] == [p.model_dump() for p in kept]
    assert len({p.id for p in kept}) == 19
    for p in kept:
        assert p.source_kind == "records"
        assert p.image_path and os.path.isfile(p.image_path)
        assert Path(p.image_path).parent == MEDICAL / "images"
        assert p.full_image_path == p.image_path
    rows = [json.loads(l) for l in METADATA.read_text().splitlines() if l.strip()]
    for p, row in zip(kept, rows):
        assert p.id.endswith("|" + row["id"])
        assert p.license_text == row["license"]
        assert p.doi == row["source_doi"]
        # keyless rows: the figure stands for the article (the split must not tie them all together)
        assert p.article_id == (f"doi:{row['source_doi']}" if row["source_doi"] else f"file:metadata:{Path(row['image']).name}")
        assert p.caption == (row["caption"] or "").strip()
        expected = [t.strip() for t in (row.get("case_text"), row.get("discussion_text")) if t and t.strip()]
        assert [c.text for c in p.citing_paragraphs] == expected
        assert all(c.mention == "" and c.panels == [] for c in p.citing_paragraphs)
    r02 = next(p for p in kept if p.id.endswith("|R02"))
    assert r02.caption == "" and r02.citing_paragraphs[0].text.startswith("A 51 years old male")


def test_medical_fixture_licences_match_index():
    counts = _index_licence_counts()
    assert sum(counts.values()) == 19
    kept = ingest_records(METADATA, field_map="medcorpus")
    # raw licence text: each row's text starts with one INDEX.md label (the longest one that fits)
    labels = Counter(max((lab for lab in counts if p.license_text.startswith(lab)), key=len) for p in kept)
    assert dict(labels) == counts
    # normalised codes: the INDEX.md labels normalised give the same code counts
    expected = Counter()
    for label, n in counts.items():
        expected[normalize_license(None, label, None)] += n
    assert Counter(p.license for p in kept) == expected
    assert expected == {"cc-by": 10, "cc0": 5, "cc-by-sa": 3, "public-domain": 1}


# --------------------------------------------------------------------------- Open-PMC style files

IMAGES = {
    "a.png": "microaneurysms.png",
    "b.jpg": "hypersegmented_neutrophil.jpg",
    "full.jpg": "bronchiolitis_chest_xray.jpg",
}


@pytest.fixture()
def figs(tmp_path: Path) -> Path:
    d = tmp_path / "figs"
    d.mkdir()
    for name, src in IMAGES.items():
        shutil.copyfile(MEDICAL / "images" / src, d / name)
    return tmp_path


CTX_DICT = {"F1": ["Figure 1 shows the retina.", "As seen in Fig. 1, vessels are thin."], "F2": ["Fig. 2B shows a neutrophil."]}


def _good_rows(abs_image: str) -> list[dict]:
    return [
        {  # string context
            "PMC_ID": "PMC111", "subfig_path": "figs/a.png", "full_fig_path": "figs/full.jpg",
            "sub_caption": "Fundus crop.", "full_caption": "Figure 1. Fundus photographs.",
            "image_context": "The fundus (Fig. 1a) shows microaneurysms.", "license": "CC BY 4.0",
            "doi": "10.1/abc", "figure_id": "F1", "panel": "a",
        },
        {  # dict context, known figure id: only its entries
            "PMC_ID": "222", "subfig_path": "figs/b.jpg", "full_fig_path": "figs/full.jpg",
            "sub_caption": "Neutrophil.", "full_caption": "Figure 2. Smears.",
            "image_context": CTX_DICT, "license": "http://creativecommons.org/licenses/by-nc/4.0/",
            "figure_id": "F2", "panel": "(b)", "year": "2021-03-01",
        },
        {  # dict context, figure id unknown: all entries; no pmcid, DOI only; no panel -> row index
            "doi": "https://doi.org/10.2/xyz", "subfig_path": "figs/b.jpg",
            "caption": "A smear.", "image_context": CTX_DICT, "license": "CC0",
        },
        {  # absolute image path outside the record folder is allowed
            "subfig_path": abs_image, "full_caption": "Retina.", "image_context": None, "license": "Public domain",
        },
    ]


def _bad_rows() -> list[str]:
    return [
        '{"PMC_ID": "PMC333", "subfig_path": "figs/a.png", "full_caption": "broken',  # bad JSON
        json.dumps({"PMC_ID": "PMC444", "full_caption": "No image here.", "license": "CC BY"}),  # no image
        json.dumps({"PMC_ID": "PMC555", "subfig_path": "figs/missing.png", "full_caption": "Gone."}),  # missing file
        "[1, 2, 3]",  # not an object
        json.dumps({"PMC_ID": "PMC666", "subfig_path": "../escape.png", "full_caption": "Escapes."}),
        json.dumps({"PMC_ID": "PMC777", "subfig_path": "figs/a.png", "full_caption": {"oops": 1}}),  # bad type
    ]


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    body = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(body)
    else:
        path.write_text(body, encoding="utf-8")
    return path


def _openpmc_lines(figs: Path) -> list[str]:
    good = [json.dumps(r) for r in _good_rows(str(MEDICAL / "images" / "retina.jpg"))]
    bad = _bad_rows()
    # interleave, with a blank line that is not a row
    return good[:2] + [bad[0], ""] + good[2:] + bad[1:]


def _check_openpmc(items, stem: str) -> None:
    assert len(items) == 10
    kept, rejected = _by_kind(items)
    assert len(kept) == 4 and len(rejected) == 6
    p0, p1, p2, p3 = kept
    # row 0: string context, PMCID article key, panel letter upper-cased
    assert p0.id == "PMC111|F1|A" and p0.article_id == "PMC111" and p0.pmcid == "PMC111"
    assert p0.caption == "Figure 1. Fundus photographs." and p0.sub_caption == "Fundus crop."
    assert [c.text for c in p0.citing_paragraphs] == ["The fundus (Fig. 1a) shows microaneurysms."]
    assert p0.image_path.endswith(os.path.join("figs", "a.png")) and os.path.isabs(p0.image_path)
    assert p0.full_image_path.endswith(os.path.join("figs", "full.jpg"))
    assert p0.license == "cc-by" and p0.license_text == "CC BY 4.0" and p0.doi == "10.1/abc"
    assert p0.graphic_href == "figs/a.png"
    # row 1: dict context restricted to its figure; bare PMCID number; URL licence
    assert p1.id == "PMC222|F2|B" and p1.panel == "B" and p1.year == 2021
    assert [c.text for c in p1.citing_paragraphs] == CTX_DICT["F2"]
    assert p1.license == "cc-by-nc" and p1.license_url.startswith("http://creativecommons.org")
    # row 3 (after a bad line and a blank line, which is not a row): dict context, no figure id -> all paragraphs
    assert p2.id == f"doi:10.2/xyz|-|{stem}:3" and p2.doi == "10.2/xyz" and p2.article_id == "doi:10.2/xyz"
    assert [c.text for c in p2.citing_paragraphs] == CTX_DICT["F1"] + CTX_DICT["F2"]
    assert p2.caption == "A smear." and p2.license == "cc0" and p2.full_image_path == p2.image_path
    # row 4: absolute image outside the folder, null context, file-stem article key
    assert p3.id == f"file:{stem}|-|{stem}:4" and p3.image_path == str(MEDICAL / "images" / "retina.jpg")
    assert p3.article_id == f"file:{stem}:retina.jpg"
    assert p3.citing_paragraphs == [] and p3.license == "public-domain"

    reasons = [(r.reason, r.detail) for r in rejected]
    assert [code for code, _ in reasons] == [RECORD_INVALID, RECORD_INVALID, IMAGE_MISSING, RECORD_INVALID, RECORD_INVALID, RECORD_INVALID]
    details = [d for _, d in reasons]
    assert details[0].startswith("row 2: invalid JSON")
    assert details[1].startswith("row 5: no image")
    assert details[2].startswith("row 6: image not found") and "missing.png" in details[2]
    assert details[3] == "row 7: expected a JSON object, got list"
    assert details[4].startswith("row 8: subfig_path: relative image path leaves")
    assert details[5].startswith("row 9: full_caption: expected a string, got dict")
    # the readable fields are kept on the rejected panels
    no_image = rejected[1].record
    assert no_image.pmcid == "PMC444" and no_image.caption == "No image here." and no_image.license == "cc-by"
    assert no_image.image_path is None
    assert rejected[2].record.id == f"PMC555|-|{stem}:6" and rejected[2].record.caption == "Gone."
    assert rejected[5].record.pmcid == "PMC777" and rejected[5].record.caption == ""
    assert rejected[0].record.article_id == f"file:{stem}"
    assert len({x.id for x in kept} | {r.record.id for r in rejected}) == 10


@pytest.mark.parametrize("name", ["openpmc.jsonl", "openpmc.jsonl.gz"])
def test_openpmc_jsonl(figs: Path, name: str):
    path = _write_jsonl(figs / name, _openpmc_lines(figs))
    assert count_rows(path) == 10
    assert detect_preset(json.loads(_openpmc_lines(figs)[0])) == "openpmc"
    items = ingest_records(path)  # auto-detected
    _check_openpmc(items, "openpmc")
    assert [_key(x) for x in ingest_records(path, field_map="openpmc")] == [_key(x) for x in items]


@pytest.mark.parametrize("name", ["openpmc.jsonl", "openpmc.jsonl.gz"])
@pytest.mark.parametrize("rows_per_unit", [1, 3, 4, 100])
def test_chunked_reading_equals_one_pass(figs: Path, rows_per_unit: int, name: str, monkeypatch):
    path = _write_jsonl(figs / name, _openpmc_lines(figs))
    whole = [_key(x) for x in ingest_records(path)]
    units = list(iter_record_units(path, rows_per_unit=rows_per_unit))
    assert units[0].start == 0 and units[-1].stop == 10
    assert all(a.stop == b.start for a, b in zip(units, units[1:]))
    assert all(u.stop - u.start <= rows_per_unit for u in units)
    # with the byte offsets the units carry
    chunked = [_key(x) for u in units for x in ingest_records(u.path, start=u.start, stop=u.stop, offset=u.offset)]
    assert chunked == whole
    # with plain (path, start, stop) units, through the per-process checkpoint index
    monkeypatch.setattr(rs, "_CHECKPOINT_EVERY", 2)
    rs._INDEX.clear()
    plain = [_key(x) for u in units for x in ingest_records(u.path, start=u.start, stop=u.stop)]
    assert plain == whole
    rs._INDEX.clear()


def _parquet_rows(figs: Path, context_as: str) -> list[dict]:
    rows = _good_rows(str(MEDICAL / "images" / "retina.jpg"))
    rows.append({"PMC_ID": "PMC444", "full_caption": "No image here.", "license": "CC BY"})
    rows.append({"PMC_ID": "PMC555", "subfig_path": "figs/missing.png", "full_caption": "Gone."})
    for r in rows:
        ctx = r.get("image_context")
        if context_as == "string" and isinstance(ctx, dict):
            r["image_context"] = json.dumps(ctx)  # a dict kept in a string-typed column
    return rows


COLUMNS = ["PMC_ID", "subfig_path", "full_fig_path", "sub_caption", "full_caption", "caption",
           "image_context", "license", "doi", "figure_id", "panel", "year"]


@pytest.mark.parametrize("context_as", ["string", "struct", "map"])
def test_openpmc_parquet(figs: Path, context_as: str):
    rows = _parquet_rows(figs, context_as)
    full = [{c: r.get(c) for c in COLUMNS} for r in rows]
    if context_as == "string":
        table = pa.Table.from_pylist(full)
        assert table.schema.field("image_context").type == pa.string()
    else:
        if context_as == "struct":
            ctx_type = pa.struct([("F1", pa.list_(pa.string())), ("F2", pa.list_(pa.string()))])
        else:
            ctx_type = pa.map_(pa.string(), pa.list_(pa.string()))
        for r in full:
            if isinstance(r["image_context"], str):  # the string context as an entry for its figure
                r["image_context"] = {r["figure_id"]: [r["image_context"]]}
            if context_as == "map" and r["image_context"] is not None:
                r["image_context"] = list(r["image_context"].items())
        schema = pa.schema([(c, ctx_type if c == "image_context" else pa.string()) for c in COLUMNS])
        table = pa.Table.from_pylist(full, schema=schema)
    path = figs / "openpmc.parquet"
    pq.write_table(table, path, row_group_size=2)  # several row groups
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert count_rows(path) == 6
    items = ingest_records(path)
    kept, rejected = _by_kind(items)
    assert len(kept) == 4 and [r.reason for r in rejected] == [RECORD_INVALID, IMAGE_MISSING]
    assert [p.id for p in kept] == ["PMC111|F1|A", "PMC222|F2|B", "doi:10.2/xyz|-|openpmc:2", "file:openpmc|-|openpmc:3"]
    assert [c.text for c in kept[0].citing_paragraphs] == ["The fundus (Fig. 1a) shows microaneurysms."]
    assert [c.text for c in kept[1].citing_paragraphs] == CTX_DICT["F2"]
    assert [c.text for c in kept[2].citing_paragraphs] == CTX_DICT["F1"] + CTX_DICT["F2"]
    assert kept[3].citing_paragraphs == []
    assert rejected[0].detail.startswith("row 4: no image") and rejected[1].detail.startswith("row 5: image not found")
    # bounded reads by units give the same records
    for n in (1, 2, 4):
        units = list(iter_record_units(path, rows_per_unit=n))
        assert [_key(x) for u in units for x in ingest_records(path, start=u.start, stop=u.stop)] == [_key(x) for x in items]
    assert ingest_records(path, start=6, stop=6) == [] and ingest_records(path, start=3, stop=100)[0].id.endswith("openpmc:3")


def test_field_map_override_and_detection(figs: Path):
    rows = [
        {"img": "figs/a.png", "cap": "A caption.", "text": ["p1", "p2"], "more": "p3", "lic": "CC BY-SA 3.0", "pid": 7},
    ]
    path = _write_jsonl(figs / "custom.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(ValueError, match="cannot tell the record schema"):
        ingest_records(path)
    fm = parse_field_map("image=img, caption=cap, context=text+more, license=lic, id=pid")
    (p,) = ingest_records(path, field_map=fm)
    assert p.caption == "A caption." and [c.text for c in p.citing_paragraphs] == ["p1", "p2", "p3"]
    assert p.license == "cc-by-sa" and p.id == "file:custom|-|7"
    # the same spec as a string (as the CLI passes it) gives the same panel
    assert ingest_records(path, field_map="image=img,caption=cap,context=text|more,license=lic,id=pid")[0] == p
    # a spec extends the preset detected from the file
    med = resolve_field_map(METADATA, "context=case_text,license=")
    assert med.context == ["case_text"] and med.license == [] and med.image == ["image"]
    assert parse_field_map("preset=openpmc,caption=title").caption == ["title"]
    assert parse_field_map("medcorpus") == PRESETS["medcorpus"]
    assert parse_field_map("sub_caption=sc", base="openpmc").image == PRESETS["openpmc"].image
    assert FieldMap(image="x").image == ["x"]
    assert detect_preset({"image": 1, "caption": 2}) == "medcorpus"
    assert detect_preset({"subfig_path": 1}) == "openpmc" and detect_preset({"foo": 1}) is None
    assert parse_field_map(PRESETS["openpmc"].describe()) == PRESETS["openpmc"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("image", "has no '='"),
        ("image=img,colour=c", "unknown field map target 'colour'"),
        ("image=a,image=b", "given twice"),
        ("preset=nope", "unknown field map preset 'nope'"),
        ("context=a++b", "empty source field name"),
        ("", "empty field map"),
    ],
)
def test_parse_field_map_errors(spec: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_field_map(spec)


def test_field_map_without_image_is_an_error(figs: Path):
    path = _write_jsonl(figs / "x.jsonl", [json.dumps({"cap": "c"})])
    with pytest.raises(ValueError, match="names no image field"):
        ingest_records(path, field_map="caption=cap")


def test_unsupported_file_and_bad_range(tmp_path: Path):
    bad = tmp_path / "records.csv"
    bad.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported record file"):
        count_rows(bad)
    with pytest.raises(ValueError, match="rows_per_unit"):
        list(iter_record_units(METADATA, rows_per_unit=0))
    with pytest.raises(ValueError, match="bad row range"):
        ingest_records(METADATA, start=5, stop=2)
    assert [p.id.split("|")[-1] for p in ingest_records(METADATA, start=17)] == ["R18", "R19"]
