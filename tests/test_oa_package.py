"""PMC OA package reading (openmedreason.ingest.oa_package).

The test package is built at run time the way PMC ships one (``PMC3460867/`` with the real
``pone.0046493.nxml`` from tests/fixtures/jats, a full-size JPEG plus a GIF thumbnail per figure,
a PDF), with real images from scikit-image's data folder and examples/corpus/medical/images.
Attack packages plant one hostile member each next to a valid article.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from openmedreason.ingest.jats import IMAGE_MISSING
from openmedreason.ingest.oa_package import (
    ARCHIVE_ERROR,
    ARCHIVE_TOO_LARGE,
    NO_ARTICLE,
    UNSAFE_MEMBER,
    extracted_folder,
    ingest_oa_package,
    package_stem,
    sanitize_name,
)
from openmedreason.records import Panel
from openmedreason.run.steps import Rejected

ROOT = Path(__file__).resolve().parents[1]
NXML = ROOT / "tests" / "fixtures" / "jats" / "pone.0046493.nxml"
MEDICAL = ROOT / "examples" / "corpus" / "medical" / "images"


def _skimage_data() -> Path | None:
    try:
        import skimage.data

        return Path(skimage.data.__file__).parent
    except Exception:  # pragma: no cover - scikit-image is a core dependency
        return None


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    b = io.BytesIO()
    im.convert("RGB").save(b, "JPEG", quality=quality)
    return b.getvalue()


def _encode(im: Image.Image, fmt: str) -> bytes:
    b = io.BytesIO()
    im.convert("RGB").save(b, fmt)
    return b.getvalue()


def _real_images() -> list[Image.Image]:
    sk = _skimage_data()
    paths = [MEDICAL / "retina.jpg", MEDICAL / "bronchiolitis_chest_xray.jpg", MEDICAL / "reed_sternberg_cell.jpg"]
    if sk is not None and (sk / "ihc.png").exists():
        paths[2] = sk / "ihc.png"
    out = []
    for p in paths:
        with Image.open(p) as im:
            im.load()
            out.append(im.copy())
    return out


def _add(tf: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1_700_000_000
    for k, v in attrs.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data))


def _add_special(tf: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.mtime = 1_700_000_000
    tf.addfile(ti)


def _article_members(tf: tarfile.TarFile, images: list[Image.Image]) -> None:
    d = tarfile.TarInfo("PMC3460867")
    d.type = tarfile.DIRTYPE
    tf.addfile(d)
    _add(tf, "PMC3460867/pone.0046493.nxml", NXML.read_bytes())
    retina, xray, third = images
    # g001: full JPEG + GIF thumbnail (the usual PMC pair)
    _add(tf, "PMC3460867/pone.0046493.g001.jpg", _jpeg(retina))
    _add(tf, "PMC3460867/pone.0046493.g001.gif", _encode(retina.resize((100, 100)), "GIF"))
    # g002: the full-size file is a PNG and the small one a JPEG: pixels decide, not the extension
    _add(tf, "PMC3460867/pone.0046493.g002.png", _encode(xray, "PNG"))
    _add(tf, "PMC3460867/pone.0046493.g002.jpg", _jpeg(xray.resize((80, 60))))
    # g003: TIFF only
    _add(tf, "PMC3460867/pone.0046493.g003.tif", _encode(third, "TIFF"))
    # g004: no image at all -> image_missing; plus members the ingest does not need
    _add(tf, "PMC3460867/pone.0046493.pdf", b"%PDF-1.4 not needed")
    _add(tf, "PMC3460867/pone.0046493.s001.mp4", os.urandom(2048))


@pytest.fixture(scope="module")
def images():
    return _real_images()


@pytest.fixture()
def package(tmp_path, images):
    path = tmp_path / "PMC3460867.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _article_members(tf, images)
    return path


def _outside_snapshot(root: Path, work: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if work not in p.parents and p != work}


# --------------------------------------------------------------------------- the real package


def test_real_package(tmp_path, package, images):
    work = tmp_path / "work"
    out = ingest_oa_package(package, work)
    panels = [r for r in out if isinstance(r, Panel)]
    rejected = [r for r in out if isinstance(r, Rejected)]
    # 4 figures: g001 (A, B), g002 (A, B), g003 (A-D) have images; g004 has none
    assert [(p.figure_id, p.panel) for p in panels] == [
        ("pone-0046493-g001", "A"), ("pone-0046493-g001", "B"),
        ("pone-0046493-g002", "A"), ("pone-0046493-g002", "B"),
        ("pone-0046493-g003", "A"), ("pone-0046493-g003", "B"), ("pone-0046493-g003", "C"), ("pone-0046493-g003", "D"),
    ]
    assert [(r.reason, r.record.figure_id) for r in rejected] == [(IMAGE_MISSING, "pone-0046493-g004")]
    folder = extracted_folder(work, package)
    assert folder == work.resolve() / "PMC3460867"
    by_fig = {p.figure_id: p for p in panels}
    # full-size files chosen by pixel count read from the header
    assert by_fig["pone-0046493-g001"].image_path == str(folder / "pone.0046493.g001.jpg")
    assert by_fig["pone-0046493-g002"].image_path == str(folder / "pone.0046493.g002.png")
    assert by_fig["pone-0046493-g003"].image_path == str(folder / "pone.0046493.g003.tif")
    with Image.open(by_fig["pone-0046493-g002"].image_path) as im:
        assert im.size == images[1].size
    for p in panels:
        assert p.source == str(package) and p.source_kind == "oa_package"
        assert p.article_id == "PMC3460867" and p.license == "cc-by"
        assert p.full_image_path == p.image_path
    assert rejected[0].record.source_kind == "oa_package"
    # only what the ingest needs was written
    assert sorted(os.listdir(folder)) == [
        "pone.0046493.g001.gif", "pone.0046493.g001.jpg", "pone.0046493.g002.jpg", "pone.0046493.g002.png",
        "pone.0046493.g003.tif", "pone.0046493.nxml",
    ]
    # a second run gives the same records (the folder is rebuilt)
    again = ingest_oa_package(package, work)
    assert [r.model_dump() if isinstance(r, Panel) else r.record.model_dump() for r in again] == [
        r.model_dump() if isinstance(r, Panel) else r.record.model_dump() for r in out
    ]


def test_names_are_sanitised(tmp_path, images):
    path = tmp_path / "weird name!.tgz"
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "deep/folder/pone.0046493.nxml", NXML.read_bytes())
        _add(tf, "deep/other/.hidden x$.jpg", _jpeg(images[0]))
    out = ingest_oa_package(path, tmp_path / "w")
    folder = tmp_path / "w" / "weird_name_"
    assert package_stem(path) == "weird_name_" and folder.is_dir()
    assert sorted(os.listdir(folder)) == ["hidden_x_.jpg", "pone.0046493.nxml"]
    assert out and all((r.record if isinstance(r, Rejected) else r).article_id == "PMC3460867" for r in out)
    assert sanitize_name("..") == "_" and sanitize_name("a b/c") == "a_b_c"
    for hostile in ("../../x", "/etc/passwd", ".", "", "a\x00b", "C:\\x"):
        name = sanitize_name(hostile)
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")


# --------------------------------------------------------------------------- planted attacks


def _attack(tmp_path: Path, images, plant) -> tuple[Path, Path]:
    path = tmp_path / "pkg" / "PMC3460867.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tf:
        _article_members(tf, images)
        plant(tf)
    return path, tmp_path / "work"


ATTACKS = {
    "dotdot": lambda tf, t: _add(tf, "../evil.jpg", b"pwned"),
    "nested-dotdot": lambda tf, t: _add(tf, "PMC3460867/../../evil2.nxml", b"<article/>"),
    "absolute": lambda tf, t: _add(tf, str(t / "abs_target" / "x.jpg"), b"pwned"),
    "symlink": lambda tf, t: (
        _add_special(tf, "PMC3460867/link.jpg", tarfile.SYMTYPE, "/etc/passwd"),
        _add(tf, "PMC3460867/link.jpg", b"write through the link"),
    ),
    "symlink-dir": lambda tf, t: (
        _add_special(tf, "PMC3460867/out", tarfile.SYMTYPE, str(t / "outside")),
        _add(tf, "PMC3460867/out/evil.jpg", b"pwned"),
    ),
    "hardlink": lambda tf, t: _add_special(tf, "PMC3460867/hard.jpg", tarfile.LNKTYPE, "/etc/passwd"),
    "device": lambda tf, t: _add_special(tf, "PMC3460867/dev.jpg", tarfile.CHRTYPE),
    "fifo": lambda tf, t: _add_special(tf, "PMC3460867/pipe.jpg", tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_unsafe_members_are_refused(tmp_path, images, attack):
    (tmp_path / "outside").mkdir()
    path, work = _attack(tmp_path, images, lambda tf: ATTACKS[attack](tf, tmp_path))
    before = _outside_snapshot(tmp_path, work)
    out = ingest_oa_package(path, work)
    assert len(out) == 1 and isinstance(out[0], Rejected)
    rej = out[0]
    assert rej.reason == UNSAFE_MEMBER and rej.value >= 1
    assert rej.record.id == "PMC3460867|-|-" and rej.record.source_kind == "oa_package"
    assert "refused" in rej.detail
    # nothing written outside work/, nothing left inside it, no link anywhere
    assert _outside_snapshot(tmp_path, work) == before
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "abs_target").exists()
    assert not list((tmp_path / "outside").iterdir())
    assert not (work / "PMC3460867").exists()
    assert not [p for p in work.rglob("*") if p.is_symlink()]


def test_the_reason_names_each_refused_member(tmp_path, images):
    def plant(tf):
        _add(tf, "../a.jpg", b"x")
        _add_special(tf, "PMC3460867/s.jpg", tarfile.SYMTYPE, "/etc/passwd")
        _add(tf, "/tmp/omr-abs-test.jpg", b"x")

    path, work = _attack(tmp_path, images, plant)
    rej = ingest_oa_package(path, work)[0]
    assert rej.value == 3
    assert "'../a.jpg' ('..' in the path)" in rej.detail
    assert "symbolic link to '/etc/passwd'" in rej.detail
    assert "absolute path" in rej.detail


def test_oversize_member_and_decompression_bomb(tmp_path, images):
    path, work = _attack(tmp_path, images, lambda tf: None)
    rej = ingest_oa_package(path, work, max_member_bytes=50_000)[0]
    assert rej.reason == UNSAFE_MEMBER and "member cap" in rej.detail
    # 64 MB of zeros compress to ~64 KB: the declared sizes stop it before anything is inflated
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        _add(tf, "PMC1/pone.0046493.nxml", NXML.read_bytes())
        ti = tarfile.TarInfo("PMC1/zeros.mp4")
        ti.size = 64 << 20
        tf.addfile(ti, io.BytesIO(bytes(ti.size)))
    assert bomb.stat().st_size < 1 << 20
    t0 = time.perf_counter()
    rej = ingest_oa_package(bomb, tmp_path / "w2", max_total_bytes=8 << 20)[0]
    assert time.perf_counter() - t0 < 5
    assert rej.reason == ARCHIVE_TOO_LARGE and rej.value > 8 << 20
    assert not (tmp_path / "w2" / "bomb").exists()
    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as tf:
        for i in range(50):
            _add(tf, f"PMC1/f{i}.txt", b"x")
    assert ingest_oa_package(many, tmp_path / "w3", max_members=20)[0].reason == ARCHIVE_TOO_LARGE


# --------------------------------------------------------------------------- broken packages


def test_corrupt_and_truncated_archives(tmp_path, package):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(os.urandom(4096))
    out = ingest_oa_package(junk, tmp_path / "w")
    assert len(out) == 1 and out[0].reason == ARCHIVE_ERROR and out[0].record.article_id == "file:junk"
    data = package.read_bytes()
    cut = tmp_path / "PMC3460867.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    out = ingest_oa_package(cut, tmp_path / "w")
    assert len(out) == 1 and out[0].reason == ARCHIVE_ERROR
    assert not (tmp_path / "w" / "PMC3460867").exists()
    # a valid gzip around something that is not a tar archive
    notar = tmp_path / "notar.tar.gz"
    notar.write_bytes(gzip.compress(b"hello " * 1000))
    assert ingest_oa_package(notar, tmp_path / "w")[0].reason == ARCHIVE_ERROR
    assert ingest_oa_package(tmp_path / "missing.tar.gz", tmp_path / "w")[0].reason == ARCHIVE_ERROR


def test_package_without_article(tmp_path, images):
    path = tmp_path / "PMC99.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "PMC99/fig1.jpg", _jpeg(images[0]))
        _add(tf, "PMC99/manifest.xml", b"<manifest/>")
        _add(tf, "PMC99/other.xml", b"<?xml version='1.0'?><dataset/>")
    out = ingest_oa_package(path, tmp_path / "w")
    assert len(out) == 1 and out[0].reason == NO_ARTICLE and out[0].record.id == "PMC99|-|-"


def test_broken_xml_inside_a_package(tmp_path):
    path = tmp_path / "PMC7.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "PMC7/a.nxml", b"<article><body>")
    out = ingest_oa_package(path, tmp_path / "w")
    assert len(out) == 1 and out[0].reason == "ingest.xml_error"
    assert out[0].record.source == str(path) and out[0].record.source_kind == "oa_package"
