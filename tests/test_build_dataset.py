"""The built dataset (contract D): `datasets` loads both splits and decodes images, the card's
numbers equal the Parquet's, rebuilds are byte-identical, and a real `omr demo` run builds."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from dataset_factory import make_dataset, make_run_with_instances
from openmedreason.build import hf
from openmedreason.build.card import write_card
from openmedreason.build.config import BuildConfig
from openmedreason.build.dataset import build_dataset

ROOT = Path(__file__).resolve().parents[1]


def _table(card: str, heading: str) -> list[list[str]]:
    """Rows of the first Markdown table after ``heading``."""
    lines = card.split(heading, 1)[1].splitlines()
    rows, started = [], False
    for line in lines:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= {"-"}:
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # drop the header


def test_schema_and_hf_load(tmp_path):
    import datasets
    from PIL import Image

    ds_dir = make_dataset(tmp_path, 40)
    names = sorted(p.name for p in (ds_dir / "data").iterdir())
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    for split in ("train", "test"):
        for p in hf.split_files(ds_dir, split):
            schema = pq.read_schema(p)  # (Parquet names list items "element"; equals() ignores that)
            assert schema.equals(hf.DATASET_SCHEMA) and schema.metadata == hf.DATASET_SCHEMA.metadata
    d = datasets.load_dataset("parquet", data_dir=str(ds_dir / "data"))
    assert set(d) == {"train", "test"} and d["train"].num_rows + d["test"].num_rows == 40
    assert isinstance(d["train"].features["image"], datasets.Image)
    img = d["train"][0]["image"]
    assert isinstance(img, Image.Image) and img.size[0] > 0
    row = d["test"][0]
    assert row["question"].startswith(row["stem"] + "\nA. ")
    assert row["reasoning"].endswith(f"<answer>{row['answer']}</answer>")
    assert row["perception"] == [] and row["models"] == [] and re.fullmatch(r"[0-9a-f]{16}", row["image_phash"])
    assert row["options"] and row["license"] and row["article_id"].startswith("PMC") and row["pmcid"] == row["article_id"]
    # streaming reader, column subset
    ids = [r["id"] for r in hf.read_rows(ds_dir, "train", columns=["id"])]
    assert len(ids) == d["train"].num_rows and ids == d["train"]["id"]


def test_shards_split_by_rows_per_file_and_empty_split(tmp_path):
    ds_dir = make_dataset(tmp_path, 30, build={"rows_per_file": 7, "row_group_rows": 3, "test_fraction": 0.0})
    train = hf.split_files(ds_dir, "train")
    assert [p.name for p in train] == [f"train-{i:05d}-of-00005.parquet" for i in range(5)]
    assert [pq.ParquetFile(p).metadata.num_rows for p in train] == [7, 7, 7, 7, 2]
    assert pq.ParquetFile(train[0]).metadata.num_row_groups == 3
    assert hf.split_files(ds_dir, "test") == [] and hf.count_rows(ds_dir, "test") == 0  # no file for an empty split
    import datasets

    d = datasets.load_dataset("parquet", data_dir=str(ds_dir / "data"))
    assert set(d) == {"train"} and d["train"].num_rows == 30
    front = (ds_dir / "README.md").read_text().split("---")[1]
    assert "path: data/train-*" in front and "data/test-*" not in front


def test_models_come_from_provenance(tmp_path):
    ds_dir = make_dataset(tmp_path, 8, engine="llm", model="qwen2.5-vl-72b-instruct")
    rows = list(hf.read_rows(ds_dir, "train", columns=["models", "engine"]))
    assert rows and all(r["models"] == ["qwen2.5-vl-72b-instruct"] and r["engine"] == "llm" for r in rows)
    card = (ds_dir / "README.md").read_text()
    assert "qwen2.5-vl-72b-instruct" in card and "c2_verify@1" in card


def test_card_numbers_equal_the_parquet(tmp_path):
    ds_dir = make_dataset(tmp_path, 48, articles=12)
    card = (ds_dir / "README.md").read_text()
    front = card.split("---")[1]
    assert "path: data/train-*" in front and "path: data/test-*" in front and "license: other" in front
    rows = {s: list(hf.read_rows(ds_dir, s, columns=[c for c in hf.COLUMNS if c != "image"])) for s in ("train", "test")}
    sizes = {r[0]: r for r in _table(card, "## Sizes")}
    for s in ("train", "test"):
        assert int(sizes[s][1]) == len(rows[s])
        assert int(sizes[s][2]) == len({r["article_id"] for r in rows[s]})
    assert int(sizes["total"][1]) == 48
    cats = Counter((r["category"], s) for s in rows for r in rows[s])
    for cat, _fam, tr, te in _table(card, "## Categories"):
        assert (int(tr), int(te)) == (cats[(cat, "train")], cats[(cat, "test")])
    letters = Counter((r["answer"], s) for s in rows for r in rows[s])
    for a, tr, te, _share in _table(card, "## Answer letters"):
        assert (int(tr), int(te)) == (letters[(a, "train")], letters[(a, "test")])
    lic = Counter(r["license"] for s in rows for r in rows[s])
    assert {row[0]: int(row[1]) for row in _table(card, "## Licences")} == dict(lic)
    attribution = _table(card, "## Attribution")
    arts = Counter(r["article_id"] for s in rows for r in rows[s])
    assert {row[0]: int(row[4]) for row in attribution} == dict(arts)
    assert all("doi.org" in row[2] and "PMC" in row[2] for row in attribution)
    build = json.loads((ds_dir / "build.json").read_text())
    funnel = {r[0]: r for r in _table(card, "Build funnel")}
    for step, s in build["steps"].items():
        assert int(funnel[step][1]) == s["in"] and int(funnel[step][2]) == s["kept"]
    assert "## Rubric" not in card


def test_card_refreshes_rubric_counts(tmp_path):
    ds_dir = make_dataset(tmp_path, 20)
    unit = {"unit_id": "p1", "topic": "t", "claim": "c", "presence_question": "p?", "correctness_question": "c?", "source_quote": "q", "importance": "core"}
    rows = list(hf.read_rows(ds_dir, "test"))
    for r in rows:
        r["perception"] = [unit]
        r["knowledge"] = [unit, {**unit, "unit_id": "k2"}]
    hf.write_split(ds_dir, "test", rows, len(rows))
    write_card(ds_dir)
    card = (ds_dir / "README.md").read_text()
    table = {r[0]: r for r in _table(card, "## Rubric")}
    assert table["test"][1:] == [str(len(rows)), str(len(rows)), str(2 * len(rows)), "0"]
    assert table["train"][1:] == ["0", "0", "0", "0"]


def test_rebuild_is_byte_identical(tmp_path):
    run = make_run_with_instances(tmp_path, 30)
    cfg = BuildConfig(test_fraction=0.3)
    first = build_dataset(run, build_config=cfg, registry=tmp_path / "reg")
    blobs = {p.name: p.read_bytes() for p in sorted((first.dataset_dir / "data").iterdir())}
    other = build_dataset(run, build_config=cfg, registry=tmp_path / "reg", out=tmp_path / "again")
    assert {p.name: p.read_bytes() for p in sorted((other.dataset_dir / "data").iterdir())} == blobs
    again = build_dataset(run, build_config=cfg, registry=tmp_path / "reg")  # replaces RUN/dataset
    assert {p.name: p.read_bytes() for p in sorted((again.dataset_dir / "data").iterdir())} == blobs
    assert (again.dataset_dir / "rejected.parquet").read_bytes() == (other.dataset_dir / "rejected.parquet").read_bytes()
    assert not list(run.glob(".dataset*"))
    # another seed moves groups
    moved = build_dataset(run, build_config=BuildConfig(test_fraction=0.3, seed=99), registry=tmp_path / "reg", out=tmp_path / "s99")
    assert {r["id"] for r in hf.read_rows(moved.dataset_dir, "test", ["id"])} != {r["id"] for r in hf.read_rows(first.dataset_dir, "test", ["id"])}


def test_config_validation():
    import pytest
    from pydantic import ValidationError

    from openmedreason.config import RunConfig

    with pytest.raises(ValidationError):
        BuildConfig(bogus=1)
    with pytest.raises(ValidationError):
        BuildConfig(image_hamming=9, split_image_hamming=8)
    bc = BuildConfig.from_run(RunConfig(seed=5, build={"test_size": 10}), test_fraction=0.2)
    assert bc.test_size is None and bc.test_fraction == 0.2 and bc.resolved_seed(5) == 5
    for name, f in BuildConfig.model_fields.items():
        assert f.description, name


def test_build_on_a_real_demo_run(tmp_path, monkeypatch):
    """The offline pipeline on the bundled corpus, then `omr build` on its run directory."""
    from openmedreason.cli import app
    from openmedreason.config import RunConfig
    from openmedreason.run import pipeline

    monkeypatch.setenv("OMR_DECONTAM_DIR", str(tmp_path / "registry"))
    arts = ROOT / "examples" / "corpus" / "articles"
    run = tmp_path / "demo"
    pipeline.run([arts / "elife-43154", ROOT / "examples" / "corpus" / "medical" / "metadata.jsonl"], run, RunConfig(engine="offline"))
    verified = json.loads((run / "funnel.json").read_text())["steps"]["c2_verify"]["kept"]
    assert verified > 0
    res = CliRunner().invoke(app, ["build", str(run), "--test-fraction", "0.5"])
    assert res.exit_code == 0, res.output
    ds = run / "dataset"
    build = json.loads((ds / "build.json").read_text())
    assert build["input"]["instances"] == verified
    assert hf.count_rows(ds, "train") + hf.count_rows(ds, "test") == build["steps"]["build.split"]["kept"]
    card = (ds / "README.md").read_text()
    assert "Curation funnel" in card and "c2_verify" in card and "Step versions" in card
    import datasets

    d = datasets.load_dataset("parquet", data_dir=str(ds / "data"))
    assert d["train"][0]["image"].size[0] > 0 and d["train"][0]["engine"] == "offline"
