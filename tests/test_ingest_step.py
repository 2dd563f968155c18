"""The ingest step: source planning, licence policy, and every record accounted for."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from openmedreason.ingest.sources import SourceError, is_jats_article, plan_sources
from openmedreason.ingest.step import Ingest
from openmedreason.run.steps import Rejected

ROOT = Path(__file__).resolve().parents[1]
ARTICLES = ROOT / "examples" / "corpus" / "articles"
JATS = ROOT / "tests" / "fixtures" / "jats"

ND_LICENSE = (
    '<license xlink:href="https://creativecommons.org/licenses/by-nc-nd/4.0/">'
    "<license-p>CC BY-NC-ND 4.0</license-p></license>"
)


def copy_article(tmp_path: Path, name: str, license_xml: str | None) -> Path:
    """A real article folder whose <license> is replaced (None: removed, so nothing is stated)."""
    src = ARTICLES / name
    dst = tmp_path / name
    shutil.copytree(src, dst)
    xml = next(p for p in dst.iterdir() if p.suffix == ".xml")
    text = xml.read_text(encoding="utf-8")
    text, n = re.subn(r"<license[ >].*?</license>", license_xml or "", text, count=1, flags=re.S)
    assert n == 1
    if license_xml is None:
        text = re.sub(r"<copyright-statement>.*?</copyright-statement>", "", text, flags=re.S)
    xml.write_text(text, encoding="utf-8")
    return dst


def test_plan_is_sorted_deduplicated_and_skips_non_articles(tmp_path):
    (tmp_path / "manifest.xml").write_text('<?xml version="1.0"?><manifest><item/></manifest>')
    shutil.copy(JATS / "pntd.0002065.nxml", tmp_path / "a.nxml")
    units = plan_sources([tmp_path, tmp_path / "a.nxml", ARTICLES / "elife-43154"])
    # the manifest is skipped, the file named twice appears once, and the order is by path
    assert sorted(Path(u.path).name for u in units) == ["a.nxml", "main.jats.xml"]
    assert [u.path for u in units] == sorted(u.path for u in units)
    assert not is_jats_article(tmp_path / "manifest.xml")


def test_plan_errors_are_clear(tmp_path):
    with pytest.raises(SourceError, match="source not found"):
        plan_sources([tmp_path / "missing.nxml"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="unsupported source file"):
        plan_sources([tmp_path / "notes.txt"])


def test_record_file_is_split_into_row_ranges():
    units = plan_sources([ROOT / "examples" / "corpus" / "medical" / "metadata.jsonl"], rows_per_unit=5)
    assert [(u.start, u.stop) for u in units] == [(0, 5), (5, 10), (10, 15), (15, 19)]


def test_default_policy_rejects_nd_and_unknown(tmp_path):
    nd = copy_article(tmp_path, "elife-43154", ND_LICENSE)
    unknown = copy_article(tmp_path, "pone.0178565", None)
    ok = ARTICLES / "elife-19405"
    res = Ingest().process(plan_sources([nd, unknown, ok]))
    reasons = {}
    for r in res.rejected:
        reasons.setdefault(r.reason, set()).add(r.record.article_id)
    assert reasons.keys() == {"ingest.license_nd", "ingest.license_unknown"}
    assert all(r.record.license in ("cc-by-nc-nd", "unknown") for r in res.rejected)
    assert {p.license for p in res.kept} == {"cc-by"}
    # rejected panels keep all their fields for review
    rej = next(r for r in res.rejected if r.reason == "ingest.license_nd")
    assert rej.record.caption and rej.record.image_path and rej.detail == "cc-by-nc-nd"

    admitted = Ingest({"allow_license": ("cc-by-nc-nd", "unknown")}).process(plan_sources([nd, unknown, ok]))
    assert not admitted.rejected
    assert len(admitted.kept) == len(res.kept) + len(res.rejected)


def test_deny_list_and_bad_codes():
    res = Ingest({"deny_license": ("cc0",)}).process(plan_sources([ARTICLES / "elife-46472"]))
    assert res.rejected and all(r.reason == "ingest.license_denied" for r in res.rejected)
    with pytest.raises(ValueError, match="unknown licence code"):
        Ingest({"allow_license": ("cc-by-zz",)})


def test_every_output_is_a_panel_or_a_reasoned_reject():
    res = Ingest({"allow_license": ("unknown",)}).process(plan_sources([JATS, ARTICLES]))
    for r in res.rejected:
        assert isinstance(r, Rejected) and r.reason.startswith("ingest.")
    ids = [p.id for p in res.kept] + [r.record.id for r in res.rejected]
    assert len(ids) == len(set(ids))
    # the six PMC files ship without images: their panels are image_missing, the figure-less one no_figures
    assert {r.reason for r in res.rejected} == {"ingest.image_missing", "ingest.no_figures"}
