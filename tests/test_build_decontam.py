"""Decontamination: registered benchmark items (by image, question and article id) are caught in
the build as ``build.contaminated`` with the benchmark's name and item id."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from dataset_factory import make_dataset, make_run_with_instances
from openmedreason.bench.items import BenchItem
from openmedreason.build import hf
from openmedreason.build.config import BuildConfig
from openmedreason.build.dataset import build_dataset, iter_instances
from openmedreason.build.decontam import Registry


def _jpeg_copy(path: Path) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").resize((im.width * 3 // 4, im.height * 3 // 4)).save(buf, "JPEG", quality=60)
    return buf.getvalue()


def _other_image_bytes() -> bytes:
    from dataset_factory import real_images

    return real_images()[60].read_bytes()


def test_registry_roundtrip(tmp_path):
    reg = Registry(tmp_path / "reg")
    items = [
        BenchItem(id="s1", benchmark="slake", question="What modality is used?", answer="CT", kind="open", image=_other_image_bytes()),
        BenchItem(id="s2", benchmark="slake", question="Is this normal?", answer="Yes", cluster="img42"),
    ]
    info = reg.add("slake", items, source="here")
    assert info["items"] == 2 and info["with_image"] == 1 and info["with_article"] == 0  # cluster is not an article for SLAKE
    assert reg.names() == ["slake"] and reg.info("slake")["source"] == "here"
    rows = pq.read_table(reg.path("slake")).to_pylist()
    assert rows[0]["question"] == "what modality is used" and len(rows[0]["signature"]) == 64 and len(rows[0]["image_phash"]) == 16
    with pytest.raises(ValueError):
        reg.add("../evil", items)
    with pytest.raises(KeyError):
        reg.index(["nope"])
    reg.remove("slake")
    assert reg.names() == []


def test_registered_items_are_caught(tmp_path):
    run = make_run_with_instances(tmp_path, 24, articles=6)
    insts = list(iter_instances(run))
    by_article = {}
    for inst in insts:
        by_article.setdefault(inst.panel.article_id, []).append(inst)
    img_victim = by_article["PMC1001"]  # its image is registered (recompressed, resized)
    q_victim = by_article["PMC1002"][0]  # its stem is registered, options differ
    reg = Registry(tmp_path / "reg")
    reg.add(
        "vqa-mini",
        [
            BenchItem(id="v7", benchmark="vqa-mini", question="What organ is shown?", answer="liver", kind="open", image=_jpeg_copy(Path(img_victim[0].image_path))),
            BenchItem(id="v8", benchmark="vqa-mini", question=q_victim.stem.upper() + " ", options=["x", "y"], answer="A", image=_other_image_bytes()),
            # a short generic stem equal to nothing specific: never evidence on its own
            BenchItem(id="v9", benchmark="vqa-mini", question="Which finding is shown?", answer="A", options=["a", "b"]),
        ],
    )
    reg.add("omr-bench", [BenchItem(id="omr1", benchmark="omr-bench", question="q", answer="A", options=["a", "b"], cluster="pmc1003")])
    res = build_dataset(run, build_config=BuildConfig(test_fraction=0.3), registry=reg.root)
    rej = {r["id"]: r for r in pq.read_table(res.dataset_dir / "rejected.parquet").to_pylist()}
    for inst in img_victim:
        r = rej[inst.id]
        assert r["reason"] == "build.contaminated" and r["benchmark"] == "vqa-mini" and r["detail"].startswith("vqa-mini:v7 (image")
    r = rej[q_victim.id]
    assert r["benchmark"] == "vqa-mini" and r["detail"].startswith("vqa-mini:v8 (question Jaccard")
    for inst in by_article["PMC1003"]:
        assert rej[inst.id]["benchmark"] == "omr-bench" and rej[inst.id]["detail"] == "omr-bench:omr1 (article PMC1003)"
    assert len(rej) == len(img_victim) + 1 + len(by_article["PMC1003"])
    built = {r["id"] for s in ("train", "test") for r in hf.read_rows(res.dataset_dir, s, ["id"])}
    assert not built & set(rej) and len(built) + len(rej) == 24
    assert res.build["steps"]["build.decontam"]["rejected"] == {"build.contaminated": len(rej)}
    assert res.build["decontam"]["benchmarks"] == {"omr-bench": 1, "vqa-mini": 3}
    card = (res.dataset_dir / "README.md").read_text()
    assert "omr-bench (1 items)" in card and "build.contaminated" in card
    # choosing benchmarks: only omr-bench, or none
    only = build_dataset(run, build_config=BuildConfig(decontam_benchmarks=["omr-bench"]), registry=reg.root, out=tmp_path / "only")
    assert only.rejected == {"build.contaminated": len(by_article["PMC1003"])}
    none = build_dataset(run, build_config=BuildConfig(decontam_benchmarks=[]), registry=reg.root, out=tmp_path / "none")
    assert none.rejected == {}


def test_cli_add_and_list(tmp_path, monkeypatch):
    from openmedreason.build import decontam
    from openmedreason.cli import app

    seen = {}

    def fake_iter(path, benchmark):  # the loaders are BENCH-CORE's; here the CLI wiring is tested
        seen["args"] = (Path(path), benchmark)
        yield BenchItem(id="p1", benchmark="pmc-vqa", question="What is shown in the image?", answer="A", options=["a", "b"])

    monkeypatch.setattr(decontam, "iter_bench_items", fake_iter)
    src = tmp_path / "pmcvqa"
    src.mkdir()
    r = CliRunner().invoke(app, ["decontam", "add", "pmc-vqa", str(src), "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0, r.output
    assert seen["args"] == (src, "pmc-vqa") and "1 items" in r.output
    r = CliRunner().invoke(app, ["decontam", "list", "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0 and "pmc-vqa" in r.output


def test_our_released_test_split_decontaminates_a_rebuild(tmp_path):
    """`omr decontam add omr-bench RUN/dataset` through the real loaders, then a second run built
    from the same articles loses every instance of the registered test articles."""
    pytest.importorskip("openmedreason.bench.loaders")
    from openmedreason.cli import app

    ds = make_dataset(tmp_path / "a", 24, build={"test_fraction": 0.3})
    test_articles = {r["article_id"] for r in hf.read_rows(ds, "test", ["article_id"])}
    r = CliRunner().invoke(app, ["decontam", "add", "omr-bench", str(ds), "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0, r.output
    run2 = make_run_with_instances(tmp_path / "b", 24, seed=3)
    res = build_dataset(run2, build_config=BuildConfig(), registry=tmp_path / "reg")
    rej = pq.read_table(res.dataset_dir / "rejected.parquet").to_pylist()
    assert {r["article_id"] for r in rej} >= test_articles
    assert all(r["benchmark"] == "omr-bench" for r in rej)
