"""Build dedup and split: planted near-duplicates are caught with their reason and kept id, and the
split never separates an article from the article that shares a near-duplicate image."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_factory import make_instance, make_run_with_instances, real_images, write_instances
from openmedreason.build import hf
from openmedreason.build.config import BuildConfig
from openmedreason.build.dataset import build_dataset
from openmedreason.build.dedup import (
    UnionFind,
    hamming,
    jaccard,
    minhash,
    near_pairs,
    phash_file,
    question_words,
)
from openmedreason.build.split import assign, target_size
from openmedreason.reasons import REASONS


def _build(run: Path, tmp_path: Path, **cfg) -> tuple[dict, list[dict]]:
    bc = BuildConfig(**{"test_fraction": 0.3, **cfg})
    res = build_dataset(run, build_config=bc, registry=tmp_path / "empty_registry")
    rejected = pq.read_table(res.dataset_dir / "rejected.parquet").to_pylist()
    return res.build, rejected


def _rows(ds: Path, split: str) -> list[dict]:
    return list(hf.read_rows(ds, split, columns=["id", "article_id", "image_phash"]))


def test_reasons_declared():
    for code in ("build.dup_id", "build.dup_image", "build.dup_question", "build.image_missing", "build.contaminated"):
        assert code in REASONS
    import openmedreason.build.decontam  # noqa: F401

    assert "build.contaminated" in REASONS


def test_near_pairs_matches_brute_force():
    rng = random.Random(1)
    base = [rng.getrandbits(64) for _ in range(40)]
    hashes = base + [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in base[:10]]
    got = {(i, j) for i, j, _ in near_pairs(hashes, 3, block=7)}
    want = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes)) if hamming(hashes[i], hashes[j]) <= 3}
    assert got == want and len(want) >= 10


def test_union_find():
    uf = UnionFind(5)
    uf.union(0, 1)
    uf.union(3, 4)
    uf.union(1, 4)
    assert uf.find(0) == uf.find(3) and uf.find(2) != uf.find(0)


def test_resized_copy_is_near_duplicate_and_distinct_images_are_not(tmp_path):
    imgs = real_images()[:6]
    for p in imgs:
        with Image.open(p) as im:
            im.convert("RGB").resize((im.width // 2 + 1, im.height // 2 + 1)).save(tmp_path / "copy.jpg", quality=60)
        assert hamming(phash_file(p), phash_file(tmp_path / "copy.jpg")) <= BuildConfig().image_hamming
    hs = [phash_file(p) for p in imgs]
    assert min(hamming(a, b) for i, a in enumerate(hs) for b in hs[i + 1 :]) > BuildConfig().split_image_hamming


def test_question_signature_ignores_option_order_and_punctuation():
    a = minhash(question_words("Which finding is shown?", ["CT", "MRI", "X-ray"]), 64)
    b = minhash(question_words("which FINDING is shown", ["X-ray", "MRI", "CT"]), 64)
    assert jaccard(a, b) == 1.0


def test_planted_duplicates_are_caught(tmp_path):
    run = make_run_with_instances(tmp_path, 24, articles=6)
    rng = random.Random(5)
    imgs = sorted((run / "images").iterdir())
    # 1. a resized, recompressed copy of PMC1000's image republished by another article
    with Image.open(imgs[0]) as im:
        im.convert("RGB").resize((im.width * 2 // 3, im.height * 2 // 3)).save(run / "images" / "republished.jpg", quality=70)
    dup_img = make_instance(
        iid="PMC9000|F2|-|findings|0", article_id="PMC9000", image=run / "images" / "republished.jpg", category="findings", rng=rng
    )
    # 2. a lexically reworded stem with the same options on the same image (article PMC1001)
    opts = ["Pneumonia", "Pulmonary embolism", "Lung adenocarcinoma", "Sarcoidosis"]
    q1 = make_instance(
        iid="PMC1001|F1|-|diagnosis|q1", article_id="PMC1001", image=imgs[1], category="diagnosis", rng=rng,
        stem="What is the most likely diagnosis given the ground-glass opacities in the right lower lobe?", options=opts,
    )
    q2 = make_instance(
        iid="PMC1001|F1|-|diagnosis|q2", article_id="PMC1001", image=imgs[1], category="diagnosis", rng=rng,
        stem="Based on the ground-glass opacities seen in the right lower lobe, what is the most likely diagnosis?",
        options=list(reversed(opts)),
    )
    # 3. the same generic question on two different images is not a duplicate
    generic = "Which imaging modality was used to acquire this image?"
    g1 = make_instance(iid="PMC1002|F1|-|findings|g", article_id="PMC1002", image=imgs[2], category="findings", rng=rng,
                       stem=generic, options=["CT", "MRI", "Ultrasound", "Radiograph"])
    g2 = make_instance(iid="PMC1003|F1|-|findings|g", article_id="PMC1003", image=imgs[3], category="findings", rng=rng,
                       stem=generic, options=["CT", "MRI", "Ultrasound", "Radiograph"])
    # 4. the same article given twice (a second shard with an instance id already seen)
    write_instances(run, [q1, q2, g1, g2, dup_img], shard=0, batch=1)
    first = next(iter(pq.read_table(run / "c2_verify" / "kept-00000-0000.parquet").to_pylist()))
    from openmedreason.records import Instance

    write_instances(run, [Instance.model_validate(first)], shard=1, batch=0)
    # 5. an image file that disappeared
    gone = make_instance(iid="PMC1004|F9|-|findings|x", article_id="PMC1004", image=run / "images" / "gone.png", category="findings", rng=rng)
    write_instances(run, [gone], shard=2, batch=0)

    build, rejected = _build(run, tmp_path)
    by_id = {r["id"]: r for r in rejected}
    kept_ids_1000 = sorted(r["id"] for r in pq.read_table(run / "c2_verify" / "kept-00000-0000.parquet").to_pylist() if r["id"].startswith("PMC1000|"))

    r = by_id["PMC9000|F2|-|findings|0"]
    assert r["reason"] == "build.dup_image" and r["kept_id"] == kept_ids_1000[0] and "PMC1000" in r["detail"]
    r = by_id["PMC1001|F1|-|diagnosis|q2"]
    assert r["reason"] == "build.dup_question" and r["kept_id"] == "PMC1001|F1|-|diagnosis|q1"
    assert "PMC1001|F1|-|diagnosis|q1" not in by_id
    assert "PMC1002|F1|-|findings|g" not in by_id and "PMC1003|F1|-|findings|g" not in by_id
    dup = [r for r in rejected if r["reason"] == "build.dup_id"]
    assert len(dup) == 1 and dup[0]["id"] == first["id"] == dup[0]["kept_id"]
    assert by_id["PMC1004|F9|-|findings|x"]["reason"] == "build.image_missing"
    assert len(rejected) == 4
    # the funnel adds up and names every reason once
    steps = build["steps"]
    assert steps["build.input"]["rejected"] == {"build.dup_id": 1, "build.image_missing": 1}
    assert steps["build.dedup"]["rejected"] == {"build.dup_image": 1, "build.dup_question": 1}
    for s in steps.values():
        assert s["in"] == s["kept"] + sum(s["rejected"].values())
    assert steps["build.split"]["train"] + steps["build.split"]["test"] == steps["build.split"]["kept"] == 24 + 5 + 1 + 1 - 4


def test_compound_figure_panels_sharing_one_file_are_not_duplicates(tmp_path):
    rng = random.Random(0)
    img = real_images()[0]
    panels = [
        make_instance(iid=f"PMC1|F1|{p}|findings", article_id="PMC1", image=img, category="findings", rng=rng, panel=p)
        for p in "ABC"
    ]
    other = [make_instance(iid="PMC2|F1|-|findings", article_id="PMC2", image=real_images()[1], category="findings", rng=rng)]
    run = tmp_path / "run"
    write_instances(run, panels + other)
    build, rejected = _build(run, tmp_path)
    assert rejected == [] and build["steps"]["build.split"]["kept"] == 4


def _cropped_copy(src: Path, dst: Path, frac: float) -> None:
    with Image.open(src) as im:
        w, h = im.size
        im.convert("RGB").crop((int(w * frac), int(h * frac), w - int(w * frac), h - int(h * frac))).save(dst, quality=90)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_keeps_article_and_its_near_duplicate_image_together(tmp_path, seed):
    run = make_run_with_instances(tmp_path, 40, articles=10)
    rng = random.Random(seed)
    imgs = sorted((run / "images").iterdir())
    # a near-duplicate that survives dedup (distance above image_hamming, within split_image_hamming)
    src = imgs[0]
    for frac in (0.01, 0.015, 0.02, 0.03, 0.04):
        _cropped_copy(src, run / "images" / "crop.jpg", frac)
        d = hamming(phash_file(src), phash_file(run / "images" / "crop.jpg"))
        if d >= 2:
            break
    assert 2 <= d <= 12
    # the big article PMC1000 and a second article PMC7777 showing the near-duplicate image
    extra = [
        make_instance(iid=f"PMC7777|F1|-|findings|{k}", article_id="PMC7777", image=run / "images" / "crop.jpg", category="findings", rng=rng)
        for k in range(2)
    ] + [
        make_instance(iid=f"PMC7777|F2|-|anatomy|{k}", article_id="PMC7777", image=real_images()[30], category="anatomy", rng=rng)
        for k in range(2)
    ]
    write_instances(run, extra, shard=0, batch=1)
    for cfg in ({"image_hamming": d - 1, "split_image_hamming": 12}, {}):
        for size in (4, 10, 20):
            res = build_dataset(run, build_config=BuildConfig(test_size=size, seed=seed, **cfg), registry=tmp_path / "r")
            ds = res.dataset_dir
            where = {}
            for split in ("train", "test"):
                for r in _rows(ds, split):
                    where.setdefault(r["article_id"], set()).add(split)
            assert all(len(s) == 1 for s in where.values()), where
            if cfg:  # the copy survived dedup: PMC7777 is built, and in PMC1000's split
                assert where["PMC7777"] == where["PMC1000"]
            else:  # the copy was rejected as dup_image; the rest of PMC7777 still goes with PMC1000
                rej = pq.read_table(ds / "rejected.parquet").to_pylist()
                assert {r["reason"] for r in rej} == {"build.dup_image"} and len(rej) == 2
                assert where["PMC7777"] == where["PMC1000"]


def test_split_is_seeded_and_reproducible():
    from collections import Counter

    strata = [Counter({("Perception", "Radiology"): 3}), Counter({("Diagnosis", "Microscopy"): 2}), Counter({("Perception", "Radiology"): 1})] * 10
    keys = [f"PMC{i:03d}" for i in range(30)]
    a = assign(strata, keys, 12, seed=7)
    b = assign(strata, keys, 12, seed=7)
    c = assign(strata, keys, 12, seed=8)
    assert a.test_groups == b.test_groups and a.test_groups != c.test_groups
    assert abs(a.test_items - 12) <= 2
    # stratified: the radiology share of test is near its share overall (40 of 60)
    rad = a.achieved.get(("Perception", "Radiology"), 0)
    assert abs(rad / a.test_items - 40 / 60) < 0.2
    assert target_size(100, None, 0.1) == 10 and target_size(100, 7, 0.5) == 7 and target_size(3, None, 0.1) == 1


def test_question_dedup_in_a_big_cluster_uses_lsh_and_finds_the_same(tmp_path):
    """A cluster with more questions than the pairwise limit goes through the LSH path."""
    rng = random.Random(2)
    img = real_images()[0]
    insts = [make_instance(iid=f"PMC1|F1|-|q{k:03d}", article_id="PMC1", image=img, category="findings", rng=rng) for k in range(80)]
    target = insts[5]
    words = target.stem.rstrip("?").split()
    reworded = " ".join(words[:-1]) + " here, " + words[-1] + "?"  # one word added, same options
    insts.append(make_instance(iid="PMC1|F1|-|q999", article_id="PMC1", image=img, category="findings", rng=rng,
                               stem=reworded, options=list(reversed(target.options))))
    run = tmp_path / "run"
    write_instances(run, insts)
    _, rejected = _build(run, tmp_path)
    assert [(r["id"], r["reason"], r["kept_id"]) for r in rejected] == [("PMC1|F1|-|q999", "build.dup_question", target.id)]
