"""Benchmark loaders (``openmedreason.bench.loaders``) on small samples in each real file layout.

The samples under ``tests/fixtures/benchmarks/`` (rebuilt by ``build_fixtures.py`` there) hold real
open-licence images, downscaled, with questions written for these tests.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import pytest
from PIL import Image

from openmedreason.bench.items import BenchItem
from openmedreason.bench.loaders import BenchFormatError, detect_benchmark, iter_items, load_items, parse_question_text

FX = Path(__file__).parent / "fixtures" / "benchmarks"


def decodes(item: BenchItem) -> tuple[int, int]:
    with Image.open(io.BytesIO(item.image_bytes())) as im:
        im.load()
        return im.size


def copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FX / name, dst)
    return dst


def test_slake_keeps_english_and_maps_closed_yes_no_to_mcq():
    assert detect_benchmark(FX / "slake") == "slake"
    items = load_items(FX / "slake")
    assert [i.id for i in items] == ["slake:101", "slake:102", "slake:104"]  # the zh question is left out
    closed, open_, ct = items
    assert (closed.kind, closed.options, closed.answer) == ("mcq", ["Yes", "No"], "B")
    assert (open_.kind, open_.options, open_.answer) == ("open", [], "Chest")
    assert (ct.answer, ct.modality, ct.cluster) == ("A", "CT", "slake-img:2")
    assert closed.cluster == open_.cluster == "slake-img:1"  # same image → same bootstrap cluster
    assert all(max(decodes(i)) <= 128 for i in items)
    assert Path(closed.image_path).is_absolute() and closed.image is None


def test_vqa_rad_public_json_test_split_by_phrase_type():
    assert detect_benchmark(FX / "vqa-rad") == "vqa-rad"
    test = load_items(FX / "vqa-rad")
    assert [i.id for i in test] == ["vqa-rad:1", "vqa-rad:2", "vqa-rad:4"]
    assert (test[0].kind, test[0].answer) == ("mcq", "A")
    assert (test[1].kind, test[1].answer) == ("open", "hazy infiltrates")
    # a closed question whose answer is not yes/no stays open (its gold text is kept)
    assert (test[2].kind, test[2].answer, test[2].meta["answer_type"]) == ("open", "hyperinflated", "CLOSED")
    train = load_items(FX / "vqa-rad", split="train")
    assert [(i.id, i.answer) for i in train] == [("vqa-rad:3", "A")]  # "CLOSED " with a stray space
    decodes(test[0])


def test_vqa_rad_hugging_face_parquet():
    assert detect_benchmark(FX / "vqa-rad-hf") == "vqa-rad"
    items = load_items(FX / "vqa-rad-hf")
    assert [(i.kind, i.answer) for i in items] == [("mcq", "A"), ("open", "peripheral mid and lower zones")]
    assert items[0].image is not None and items[0].image_path is None
    assert decodes(items[0])


def test_vqa_rad_hf_folder_with_other_json_files(tmp_path):
    d = copy("vqa-rad-hf", tmp_path)
    (d / "dataset_infos.json").write_text('{"default": {}}')
    assert len(load_items(d, benchmark="vqa-rad")) == 2


def test_pathvqa_parquet_and_shared_image_cluster():
    assert detect_benchmark(FX / "path-vqa") == "pathvqa"
    items = load_items(FX / "path-vqa")
    assert [(i.kind, i.answer) for i in items] == [("mcq", "A"), ("open", "reed-sternberg cell"), ("mcq", "B")]
    assert items[1].cluster == items[2].cluster != items[0].cluster  # two questions on one image
    assert all(i.benchmark == "pathvqa" for i in items)


def test_pathvqa_pickle_is_refused_without_being_opened(tmp_path):
    pkl = tmp_path / "pvqa" / "qas" / "test" / "test_qa.pkl"
    pkl.parent.mkdir(parents=True)
    # a pickle whose loading would run code: loading it must never happen
    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "pwned").touch, ())

    pkl.write_bytes(pickle.dumps([Boom()]))
    for target in (pkl, tmp_path / "pvqa"):
        with pytest.raises(BenchFormatError, match="pickle"):
            load_items(target, benchmark="pathvqa")
    with pytest.raises(BenchFormatError, match="pickle"):
        detect_benchmark(pkl)
    assert not (tmp_path / "pwned").exists()


def test_pmc_vqa_csv_strips_choice_prefixes():
    assert detect_benchmark(FX / "pmc-vqa") == "pmc-vqa"
    items = load_items(FX / "pmc-vqa")
    first, second = items
    assert first.options == ["CT", "Chest radiograph", "MRI", "Ultrasound"] and first.answer == "B"
    assert second.answer == "C" and second.options[2] == "Bilateral lung periphery"
    assert first.cluster == "s40779-020-0233-6"
    assert decodes(first)


def test_medxpertqa_mm_jsonl_with_several_images():
    assert detect_benchmark(FX / "medxpertqa") == "medxpertqa-mm"
    items = load_items(FX / "medxpertqa")
    one, two = items
    assert one.id == "MM-F1" and one.answer == "B" and len(one.options) == 5
    assert "Answer Choices" not in one.question and one.question.endswith("most likely diagnosis?")
    assert len(two.meta["image_paths"]) == 2 and two.image_path == two.meta["image_paths"][0]
    assert (one.meta["medical_task"], one.meta["question_type"]) == ("Diagnosis", "Reasoning")
    assert decodes(two)


def test_our_dataset_folder_with_rubric_units():
    path = FX / "omr-dataset"
    assert detect_benchmark(path) == "omr-bench"
    items = load_items(path)
    assert [i.id for i in items] == ["omr-fx-1", "omr-fx-2", "omr-fx-3"]
    first = items[0]
    assert first.options[0] == "Optic disc" and first.answer == "A"
    assert first.cluster == "doi:10.15347/wjm/2014.008" and first.category == "anatomy"
    assert [u.unit_id for u in first.perception] == ["P1"] and [u.unit_id for u in first.knowledge] == ["K1"]
    assert first.has_rubric() and not items[1].has_rubric()
    assert first.reference_reasoning.startswith("<think>") and first.meta["source_format"] == "omr-dataset"
    assert load_items(path, split="train") == []
    assert decodes(first)


def test_released_parquet_parses_stem_and_options_back():
    path = FX / "omr-release"
    assert detect_benchmark(path) == "omr-bench"
    ours = load_items(FX / "omr-dataset")
    rel = load_items(path)
    assert [(r.question, r.options, r.answer) for r in rel] == [(o.question, o.options, o.answer) for o in ours]
    assert rel[0].perception == ours[0].perception
    assert rel[0].meta["source_format"] == "omr-release" and rel[0].cluster.startswith("img:")
    # a single loose file works too
    assert len(load_items(path / "test-00000-of-00001.parquet")) == 3


def test_iter_items_streams_and_limit():
    it = iter_items(FX / "omr-dataset", limit=2)
    assert next(it).id == "omr-fx-1"
    assert len(list(it)) == 1
    assert load_items(FX / "slake", limit=0) == []
    assert len(load_items(FX / "path-vqa", limit=1)) == 1


def test_parse_question_text():
    assert parse_question_text("Stem?\nA. one\nB. two") == ("Stem?", ["one", "two"])
    assert parse_question_text("Line 1\nLine 2?\nA. x\nB. y\nC. z") == ("Line 1\nLine 2?", ["x", "y", "z"])
    # lines that do not run A, B, C… are part of the stem
    assert parse_question_text("Stem?\nB. one\nC. two") == ("Stem?\nB. one\nC. two", [])
    assert parse_question_text("Just a stem") == ("Just a stem", [])


def test_missing_image_names_file_and_row(tmp_path):
    d = copy("slake", tmp_path)
    (d / "imgs" / "xmlab2" / "source.jpg").unlink()
    with pytest.raises(BenchFormatError, match=r"test\.json, row 3: image file not found"):
        load_items(d)


def test_malformed_rows_name_file_and_row(tmp_path):
    d = copy("medxpertqa", tmp_path)
    jf = d / "MM" / "test.jsonl"
    lines = jf.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["label"] = "Z"
    jf.write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(BenchFormatError, match=r"test\.jsonl, row 2: label 'Z'"):
        load_items(d)
    jf.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(BenchFormatError, match=r"row 2: not valid JSON"):
        load_items(d)

    v = copy("vqa-rad", tmp_path)
    jpath = v / "VQA_RAD Dataset Public.json"
    rows = json.loads(jpath.read_text())
    rows[1]["question"] = ""
    jpath.write_text(json.dumps(rows))
    with pytest.raises(BenchFormatError, match=r"row 1: missing or empty field 'question'"):
        load_items(v)
    rows[1]["question"] = "ok?"
    rows[1]["image_name"] = "../../etc/passwd"
    jpath.write_text(json.dumps(rows))
    with pytest.raises(BenchFormatError, match="must be relative"):
        load_items(v)

    p = copy("pmc-vqa", tmp_path)
    csv_path = p / "test.csv"
    csv_path.write_text(csv_path.read_text().replace(",B\r\n", ",Q\r\n").replace(",B\n", ",Q\n").replace("Chest radiograph,A:", "X-ray,A:"))
    with pytest.raises(BenchFormatError, match=r"test\.csv, row 0: cannot read the gold answer"):
        load_items(p)


def test_detection_needs_a_hint_for_anonymous_image_question_parquet(tmp_path):
    anon = tmp_path / "some-benchmark"
    shutil.copytree(FX / "path-vqa", anon)
    with pytest.raises(BenchFormatError, match="pass benchmark="):
        load_items(anon)
    assert len(load_items(anon, benchmark="path-vqa")) == 3  # aliases accepted
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_items(anon, benchmark="mmmu")
    with pytest.raises(FileNotFoundError):
        load_items(tmp_path / "nope")


def test_our_fixture_parquet_loads_in_datasets_with_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(FX / "omr-release" / "*.parquet"), split="train", cache_dir=str(tmp_path))
    assert isinstance(ds.features["image"], datasets.Image) and ds.num_rows == 3
