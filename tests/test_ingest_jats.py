"""JATS ingest (openmedreason.ingest.jats) on the real corpus, on hostile XML and on edge cases.

Expected numbers are literals counted from the XML independently of the ingest:

* figures: ``grep -o '<fig[ >]' FILE | wc -l`` (no ``<fig>`` sits inside ``<table-wrap>`` in these
  files); they agree with the figure counts of ``examples/corpus/articles/INDEX.md`` and
  ``tests/fixtures/jats/ATTRIBUTION.md``;
* citing paragraphs per figure: with XPath, the distinct nearest ``<p>`` ancestors of
  ``//xref[@ref-type='fig']`` whose space-separated ``@rid`` names the figure, leaving out
  paragraphs under ``caption``, ``table-wrap``, ``supplementary-material`` or ``fig``; checked
  against the ``<xref ref-type="fig">`` totals of INDEX.md (several xrefs share a paragraph, and
  eLife repeats "Figure 2" in table footnotes and source-data captions, which are not citing
  paragraphs: e.g. elife-30274 has 18 fig xrefs, 5 of them in captions or table footnotes);
* records: one per panel letter of a compound figure (letters read off the captions, see
  tests/test_panels.py), else one per figure.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from openmedreason.ingest.jats import (
    IMAGE_MISSING,
    NO_FIGURES,
    XML_ERROR,
    ImageIndex,
    ingest_jats_file,
    make_panel_id,
)
from openmedreason.records import Panel
from openmedreason.run.steps import Rejected

ROOT = Path(__file__).resolve().parents[1]
ARTICLES = ROOT / "examples" / "corpus" / "articles"
FIXTURES = ROOT / "tests" / "fixtures" / "jats"

# file -> (article_id, licence, {figure id: citing paragraphs}, number of records)
CORPUS = {
    ARTICLES / "bjmbr-2004-37-04-459" / "1414-431X-bjmbr-37-04-459-477.xml": (
        "doi:10.1590/S0100-879X2004000400003", "cc-by",
        {"fig1": 2, "fig2": 1, "fig3": 1, "fig4": 1, "fig5": 3, "fig6": 3, "fig7": 1}, 8),
    ARTICLES / "elife-19405" / "elife-19405-v1.xml": ("doi:10.7554/eLife.19405", "cc-by", {"fig1": 2}, 2),
    ARTICLES / "elife-30274" / "main.jats.xml": (
        "doi:10.7554/eLife.30274", "cc-by", {"fig1": 2, "fig2": 1, "fig2s1": 1, "fig2s2": 2, "fig3": 3}, 21),
    ARTICLES / "elife-43154" / "main.jats.xml": (
        "doi:10.7554/eLife.43154", "cc-by", {"fig1": 3, "fig2": 1, "respfig1": 1}, 3),
    ARTICLES / "elife-46472" / "main.jats.xml": (
        "doi:10.7554/eLife.46472", "cc0",
        {"fig1": 1, "fig2": 1, "fig3": 1, "fig4": 2, "fig5": 1, "fig6": 1, "fig7": 2, "fig8": 3}, 21),
    ARTICLES / "elife-46793" / "main.jats.xml": (
        "doi:10.7554/eLife.46793", "cc-by",
        {"fig1": 1, "fig2": 1, "fig2s1": 1, "fig3": 2, "fig4": 1, "fig5": 1, "fig6": 2, "fig6s1": 1, "fig7": 2,
         "fig7s1": 2, "fig8": 2, "fig8s1": 2, "fig8s2": 2, "fig8s3": 2, "fig9": 2, "fig9s1": 1, "fig9s2": 1,
         "fig10": 4, "fig10s1": 2}, 105),
    ARTICLES / "elife-52882" / "main.jats.xml": (
        "doi:10.7554/eLife.52882", "cc-by",
        {"fig1": 14, "fig2": 10, "fig2s1": 1, "fig2s2": 2, "fig3": 5, "fig3s1": 1, "fig3s2": 1, "fig4": 4,
         "fig4s1": 0, "fig5": 8, "fig5s1": 2, "fig5s2": 1}, 58),
    ARTICLES / "medrxiv-2024.01.24.24301711" / "24301711.xml": ("doi:10.1101/2024.01.24.24301711", "cc-by", {"fig1": 1}, 1),
    ARTICLES / "pone.0056489" / "pone.0056489.xml": (
        "doi:10.1371/journal.pone.0056489", "cc-by",
        {"pone-0056489-g001": 1, "pone-0056489-g002": 2, "pone-0056489-g003": 2}, 7),
    ARTICLES / "pone.0178565" / "main.jats.xml": (
        "doi:10.1371/journal.pone.0178565", "cc-by",
        {"pone.0178565.g001": 2, "pone.0178565.g002": 1, "pone.0178565.g003": 1, "pone.0178565.g004": 1,
         "pone.0178565.g005": 3, "pone.0178565.g006": 1}, 10),
    FIXTURES / "1471-2180-11-174.nxml": ("PMC3166277", "cc-by", {"F1": 3, "F2": 1, "F3": 4, "F4": 4}, 9),
    FIXTURES / "ehp-116-1694.nxml": (
        "PMC2599765", "public-domain", {"f1-ehp-116-1694": 2, "f2-ehp-116-1694": 1, "f3-ehp-116-1694": 2}, 7),
    FIXTURES / "pntd.0002065.nxml": ("PMC3585041", "cc-by", {"pntd-0002065-g001": 1}, 1),
    FIXTURES / "pone.0000217.nxml": (
        "PMC1790863", "cc-by", {"pone-0000217-g001": 2, "pone-0000217-g002": 1, "pone-0000217-g003": 2}, 3),
    FIXTURES / "pone.0046493.nxml": (
        "PMC3460867", "cc-by",
        {"pone-0046493-g001": 1, "pone-0046493-g002": 2, "pone-0046493-g003": 3, "pone-0046493-g004": 1}, 9),
}

# caption starts, copied from INDEX.md / the XML by hand
CAPTION_STARTS = {
    ("elife-30274", "fig1"): "Induction of c-Myc in P493-6 cells and impact on total RNA levels. P493-6 cells were grown",
    ("elife-46793", "fig2s1"): "Genome-wide shRNA screen parameter optimisation. (A) Representative growth curves",
    ("elife-43154", "respfig1"): "Role of sickle cell in case definitions of SMA and CM.",
    ("pone.0178565", "pone.0178565.g001"): "Data reduction and construction of Clusters of Co-evolving Genes (CCG).",
    ("pone.0056489", "pone-0056489-g001"): "Relationships between the mean diameter at breast height (DBH) and (A) seed length",
    ("elife-19405", "fig1"): "Membrane invaginations and cell division. Schematic diagram showing two neighboring cells",
    ("bjmbr-2004-37-04-459", "fig1"): "Circular maps of the two chromosomes in Leptospira interrogans. Circular representation",
    ("medrxiv-2024.01.24.24301711", "fig1"): "Flow chart of participant selection for this study",
    ("pone.0046493.nxml", "pone-0046493-g001"): "Chemical structure of inhibitors. Chemical structures of A, THL and B, MmPPOX.",
    ("1471-2180-11-174.nxml", "F1"): "Schematic presentation of two models of holin hole formation.",
}

# every figure of examples/corpus/articles and its image file (INDEX.md, "Per-figure list")
IMAGES = {
    "bjmbr-2004-37-04-459": {f"fig{i}": f"1414-431X-bjmbr-37-04-459-477-g5500i0{i}.jpg" for i in range(1, 8)},
    "elife-19405": {"fig1": "elife-19405-fig1-v1.tif"},
    "elife-43154": {"fig1": "fig1.jpg", "fig2": "fig2.jpg", "respfig1": "resp-fig1.jpg"},
    "medrxiv-2024.01.24.24301711": {"fig1": "24301711v1_fig1.tif"},
    "pone.0056489": {f"pone-0056489-g00{i}": f"pone.0056489.g00{i}.tif" for i in range(1, 4)},
    "pone.0178565": {f"pone.0178565.g00{i}": f"g00{i}.png" for i in range(1, 7)},
}


def _elife_file(fid: str) -> str:
    """Encoda's eLife fixtures name figN -> figN.jpg and figNsM -> figN-figsuppM.jpg (INDEX.md)."""
    if "s" in fid[3:]:
        n, m = fid[3:].split("s")
        return f"fig{n}-figsupp{m}.jpg"
    return f"{fid}.jpg"


def records(out):
    return [r.record if isinstance(r, Rejected) else r for r in out]


@pytest.fixture(scope="module")
def ingested():
    return {p: ingest_jats_file(p) for p in CORPUS}


def _name(p: Path) -> str:
    return p.parent.name if p.parent != FIXTURES else p.name


# --------------------------------------------------------------------------- real corpus


@pytest.mark.parametrize("path", sorted(CORPUS), ids=_name)
def test_counts(path, ingested):
    article_id, lic, per_fig, n_records = CORPUS[path]
    out = ingested[path]
    recs = records(out)
    assert len(out) == n_records
    assert all(r.article_id == article_id for r in recs)
    assert all(r.license == lic for r in recs)
    assert all(r.source == str(path) and r.source_kind == "jats" for r in recs)
    figs: dict[str, set[str]] = {}
    for r in recs:
        figs.setdefault(r.figure_id, set()).update(cp.text for cp in r.citing_paragraphs)
    assert list(figs) == list(per_fig)  # document order, all figures
    assert {f: len(t) for f, t in figs.items()} == per_fig
    # ids: deterministic and unique
    ids = [r.id for r in recs]
    assert len(set(ids)) == len(ids)
    assert all(r.id == make_panel_id(article_id, r.figure_id, r.panel) for r in recs)
    # panel bookkeeping
    for r in recs:
        assert r.panel_count >= 1
        assert (r.panel is None) == (r.panel_count == 1)
        if r.panel is not None:
            assert r.sub_caption
        assert r.caption and r.figure_label
        for cp in r.citing_paragraphs:
            assert cp.text and cp.mention
            assert all(len(x) == 1 and x.isupper() for x in cp.panels)
    # the records round-trip through validation unchanged
    for r in recs:
        assert Panel.model_validate(r.model_dump()) == r


def test_again_is_identical(ingested):
    path = ARTICLES / "elife-46793" / "main.jats.xml"
    assert [r.model_dump() for r in records(ingest_jats_file(path))] == [r.model_dump() for r in records(ingested[path])]


def test_captions(ingested):
    by_name = {_name(p): records(out) for p, out in ingested.items()}
    for (name, fid), start in CAPTION_STARTS.items():
        rec = next(r for r in by_name[name] if r.figure_id == fid)
        assert rec.caption.startswith(start), (name, fid, rec.caption[:120])
    # eLife source-data blocks inside a caption are not caption text
    elife = by_name["elife-46472"]
    assert all("source data 1." not in r.caption.split("The raw data")[0] for r in elife)
    fig1 = next(r for r in elife if r.figure_id == "fig1")
    assert fig1.caption_title.startswith("Knock-in of Taar1+ converts high MA intake")
    assert "Figure 1—source data 1" in fig1.caption  # the xref text in the caption paragraph stays
    assert "Body temperature" not in fig1.caption  # ...but not the source-data block's own title


def test_every_corpus_figure_resolves_to_its_image(ingested):
    for path, out in ingested.items():
        if path.parent.parent != ARTICLES:
            continue
        assert not [r for r in out if isinstance(r, Rejected)], path
        name = path.parent.name
        expected = IMAGES.get(name)
        for r in out:
            want = expected[r.figure_id] if expected else _elife_file(r.figure_id)
            assert r.image_path == str(path.parent / want)
            assert r.full_image_path == r.image_path
            assert os.path.isfile(r.image_path)


def test_xml_only_fixtures_reject_missing_images(ingested):
    out = ingested[FIXTURES / "pone.0046493.nxml"]
    assert all(isinstance(r, Rejected) and r.reason == IMAGE_MISSING for r in out)
    rec = out[0].record
    assert rec.image_path is None and rec.graphic_href == "pone.0046493.g001"
    assert rec.caption and rec.citing_paragraphs and rec.license == "cc-by" and rec.pmcid == "PMC3460867"
    assert "pone.0046493.g001" in out[0].detail


def test_metadata(ingested):
    r = records(ingested[FIXTURES / "1471-2180-11-174.nxml"])[0]
    assert (r.pmcid, r.doi, r.year, r.journal, r.article_type) == (
        "PMC3166277", "10.1186/1471-2180-11-174", 2011, "BMC Microbiology", "research-article")
    assert r.title.startswith("Factors influencing lysis time stochasticity in bacteriophage")
    r = records(ingested[ARTICLES / "elife-19405" / "elife-19405-v1.xml"])[0]
    assert (r.pmcid, r.doi, r.year, r.journal, r.article_type) == (
        None, "10.7554/eLife.19405", 2016, "eLife", "article-commentary")
    r = records(ingested[ARTICLES / "medrxiv-2024.01.24.24301711" / "24301711.xml"])[0]
    assert (r.year, r.journal) == (2024, "medRxiv")


def test_licences(ingested):
    def first(p):
        return records(ingested[p])[0]

    # URL in <license xlink:href> / <ali:license_ref>
    r = first(ARTICLES / "elife-46472" / "main.jats.xml")
    assert (r.license, r.license_url) == ("cc0", "http://creativecommons.org/publicdomain/zero/1.0/")
    r = first(FIXTURES / "ehp-116-1694.nxml")
    assert (r.license, r.license_url) == ("public-domain", "http://creativecommons.org/publicdomain/mark/1.0/")
    # CC BY stated only in <license-p> text
    for p in (FIXTURES / "pntd.0002065.nxml", FIXTURES / "pone.0046493.nxml", ARTICLES / "pone.0056489" / "pone.0056489.xml"):
        r = first(p)
        assert (r.license, r.license_url) == ("cc-by", None), p
        assert "Creative Commons Attribution License" in r.license_text
    # no <license> at all: only the copyright statement says CC BY
    r = first(FIXTURES / "pone.0000217.nxml")
    assert r.license == "cc-by" and r.license_text.startswith("Tenaillon et al. This is an open-access article")
    # old BMC: <license> with <p> instead of <license-p>
    out = ingest_jats_file(FIXTURES / "1472-6831-8-11.nxml")
    assert out[0].record.license == "cc-by"
    assert out[0].record.license_url == "http://creativecommons.org/licenses/by/2.0"


def test_no_figures_is_an_article_level_reject():
    out = ingest_jats_file(FIXTURES / "1472-6831-8-11.nxml")
    assert len(out) == 1 and isinstance(out[0], Rejected) and out[0].reason == NO_FIGURES
    rec = out[0].record
    assert rec.id == make_panel_id("PMC2329613", None, None) == "PMC2329613|-|-"
    assert rec.figure_id is None and rec.pmcid == "PMC2329613" and rec.title.startswith("The Dutch version")


# --------------------------------------------------------------------------- citing paragraphs and routing


def _fig(out, fid):
    return [r for r in records(out) if r.figure_id == fid]


def test_routing_by_panel_letter(ingested):
    # elife-30274 fig1: one paragraph names "Figure 1A", another "Figure 1B"
    a, b = _fig(ingested[ARTICLES / "elife-30274" / "main.jats.xml"], "fig1")
    assert [cp.mention for cp in a.citing_paragraphs] == ["Figure 1A"]
    assert [cp.mention for cp in b.citing_paragraphs] == ["Figure 1B"]
    assert a.citing_paragraphs[0].panels == ["A"]
    assert a.citing_paragraphs[0].section == "Conditional expression of c-Myc in the B-cell line P493-6"
    # 1471-2180-11-174 F3 (panels A-D): "3A"; "3B | 3C"; "3D"; "3B | 3D | 3C" (BMC puts "Figure" before the xref)
    f3 = {r.panel: r for r in _fig(ingested[FIXTURES / "1471-2180-11-174.nxml"], "F3")}
    assert [cp.mention for cp in f3["A"].citing_paragraphs] == ["Figure 3A | Figure 3A"]
    assert [cp.mention for cp in f3["B"].citing_paragraphs] == ["Figure 3B | Figure 3C", "Figure 3B | 3D | Figure 3C"]
    assert [cp.panels for cp in f3["D"].citing_paragraphs] == [["D"], ["B", "D", "C"]]  # document order
    assert len(f3["C"].citing_paragraphs) == 2


def test_letters_after_the_xref_and_whole_figure_mentions(ingested):
    # bjmbr: "(Figure 2, …)" and "(<xref>Figure 2</xref>B)" in one paragraph: the paragraph names the
    # whole figure once, so it goes to both panels, and the glued "B" is part of the mention
    a, b = _fig(ingested[ARTICLES / "bjmbr-2004-37-04-459" / "1414-431X-bjmbr-37-04-459-477.xml"], "fig2")
    assert a.citing_paragraphs == b.citing_paragraphs
    cp = a.citing_paragraphs[0]
    assert cp.mention == "Figure 2 | Figure 2B" and cp.panels == []


def test_elife_supplements_sub_articles_and_appendices(ingested):
    out = ingested[ARTICLES / "elife-43154" / "main.jats.xml"]
    resp = _fig(out, "respfig1")[0]
    assert resp.figure_label == "Author response image 1."
    assert resp.citing_paragraphs[0].mention == "Author response image 1"
    assert resp.citing_paragraphs[0].section == "Author response"
    s1 = _fig(ingested[ARTICLES / "elife-46793" / "main.jats.xml"], "fig6s1")
    assert s1[0].figure_label == "Figure 6—figure supplement 1."
    mentions = s1[0].citing_paragraphs[0].mention
    assert "Figure 6—figure supplement 1E" in mentions and "Figure 6—figure supplement 1F & G" in mentions
    # panels E, F and G of the supplement get that paragraph (it names E, F, G and also the whole figure)
    # eLife appendix boxes (<app><boxed-text>) cite figures too
    fig1 = _fig(ingested[ARTICLES / "elife-52882" / "main.jats.xml"], "fig1")
    sections = {cp.section for r in fig1 for cp in r.citing_paragraphs}
    assert any(s and "Appendix" not in s for s in sections)
    assert len({cp.text for r in fig1 for cp in r.citing_paragraphs}) == 14


def test_captions_and_table_footnotes_are_not_citing_paragraphs(ingested):
    # elife-30274: "Figure 2" appears in fig2s1/fig2s2 captions and in three table footnotes
    fig2 = _fig(ingested[ARTICLES / "elife-30274" / "main.jats.xml"], "fig2")[0]
    assert len(fig2.citing_paragraphs) == 1
    assert not any("Wilcoxon" in cp.text[:200] for cp in fig2.citing_paragraphs)
    # pntd: the figure's own caption cites it
    r = records(ingest_jats_file(FIXTURES / "pntd.0002065.nxml"))[0]
    assert [cp.mention for cp in r.citing_paragraphs] == ["Fig. 1"]


def test_paragraph_text_leaves_out_embedded_figures(ingested):
    # bjmbr puts <fig> inside <p>: the citing paragraph must not contain the caption
    fig1 = _fig(ingested[ARTICLES / "bjmbr-2004-37-04-459" / "1414-431X-bjmbr-37-04-459-477.xml"], "fig1")[0]
    for cp in fig1.citing_paragraphs:
        assert "Circular representation of the L. interrogans" not in cp.text


SYNTHETIC = """<?xml version="1.0"?>
<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD v1.1 20151215//EN" "JATS-archivearticle1.dtd">
<article xmlns:xlink="http://www.w3.org/1999/xlink" article-type="case-report">
<front><journal-meta><journal-title-group><journal-title>Case Rep</journal-title></journal-title-group></journal-meta>
<article-meta><article-id pub-id-type="pmcid">PMC000123</article-id><article-id pub-id-type="doi">10.1/x</article-id>
<title-group><article-title>A case</article-title></title-group>
<pub-date pub-type="ppub"><year>2019</year></pub-date><pub-date pub-type="epub"><year>2018</year></pub-date>
<permissions><license xlink:href="https://creativecommons.org/licenses/by-nc-nd/4.0/"><license-p>CC BY-NC-ND</license-p></license></permissions>
</article-meta></front>
<body>
<sec><title>Case</title>
<p>Imaging showed a mass (<xref ref-type="fig" rid="F1">Figure 1</xref>B&#8211;D) and
   (<xref ref-type="fig" rid="F1 F2">Figures 1A and 2</xref>) with a table graphic
   <inline-graphic xlink:href="inline1"/> and <xref ref-type="fig" rid="G1">Figure 3</xref>
   and &ndash; entity.</p>
<p>Second <xref ref-type="fig" rid="F1">Fig. 1C</xref>, then <xref ref-type="fig" rid="F1">Fig. 1D</xref>.</p>
<fig-group id="G1"><fig id="F3a"><label>Figure 3</label><caption><p>Main.</p></caption><graphic xlink:href="f3a"/></fig>
<fig id="F3b"><label>Figure 3&#8212;figure supplement 1</label><caption><p>Supp.</p></caption><graphic xlink:href="f3b"/></fig></fig-group>
<table-wrap id="T1"><caption><p>Table cites <xref ref-type="fig" rid="F1">Figure 1</xref>.</p></caption>
<graphic xlink:href="t001"/><fig id="TF"><graphic xlink:href="tf"/></fig></table-wrap>
<disp-formula><graphic xlink:href="e001"/></disp-formula>
</sec>
<boxed-text><sec><title>Box</title><p>See <xref ref-type="fig" rid="F2">Figure 2</xref>.</p>
<fig id="B1"><label>Box figure</label><caption><p>In a box.</p></caption><graphic xlink:href="box1.png"/></fig></sec></boxed-text>
</body>
<back><app-group><app><title>Appendix 1</title><p><xref ref-type="fig" rid="A1">Appendix figure 1</xref>.</p>
<fig id="A1"><label>Appendix figure 1</label><caption><p>Appendix.</p></caption><graphic xlink:href="app1"/></fig></app></app-group></back>
<floats-group>
<fig id="F1"><label>Figure 1</label><caption><title>CT of the chest.</title><p>(A) Axial. (B) Coronal. (C) Sagittal.
 (D) 3D rendering. Cited here: <xref ref-type="fig" rid="F2">Figure 2</xref>.</p></caption>
 <graphic xlink:href="info:doi/10.1371/journal.pone.0000001.g001"/></fig>
<fig id="F2"><label>Figure 2</label><caption><p>Histology.</p></caption><alternatives><graphic xlink:href="F2.TIF"/></alternatives></fig>
</floats-group>
</article>
"""


def _img(path: Path, size: tuple[int, int], fmt: str) -> None:
    Image.new("RGB", size, (120, 30, 60)).save(path, fmt)


def test_synthetic_article(tmp_path):
    xml = tmp_path / "case.nxml"
    xml.write_text(SYNTHETIC, encoding="utf-8")
    _img(tmp_path / "pone.0000001.g001.jpg", (64, 48), "JPEG")      # PLOS info:doi href, no 'journal.' on disk
    _img(tmp_path / "f2.tif", (40, 40), "TIFF")                      # href F2.TIF: case-insensitive
    _img(tmp_path / "f3a.png", (30, 30), "PNG")
    _img(tmp_path / "f3b.gif", (30, 30), "GIF")
    _img(tmp_path / "box1.png", (30, 30), "PNG")
    _img(tmp_path / "app1.jpeg", (30, 30), "JPEG")
    _img(tmp_path / "tf.png", (30, 30), "PNG")                      # fig inside table-wrap: ignored
    out = ingest_jats_file(xml)
    recs = records(out)
    assert not [r for r in out if isinstance(r, Rejected)]
    assert [(r.figure_id, r.panel) for r in recs] == [
        ("F3a", None), ("F3b", None), ("B1", None), ("A1", None),
        ("F1", "A"), ("F1", "B"), ("F1", "C"), ("F1", "D"), ("F2", None),
    ]
    r = recs[0]
    assert (r.article_id, r.pmcid, r.year, r.license, r.journal) == ("PMC123", "PMC123", 2018, "cc-by-nc-nd", "Case Rep")
    f1 = {x.panel: x for x in recs if x.figure_id == "F1"}
    assert f1["A"].image_path == str(tmp_path / "pone.0000001.g001.jpg")
    assert f1["A"].caption.startswith("CT of the chest. (A) Axial.")
    assert f1["A"].sub_caption == "Axial." and f1["A"].panel_count == 4
    # paragraph 1: "Figure 1B–D" (letters glued after the xref) and "Figures 1A and 2" -> panels A-D;
    # paragraph 2: "Fig. 1C | Fig. 1D" -> C, D. The caption of F1 and the table caption do not count.
    p1, p2 = f1["C"].citing_paragraphs
    assert p1.mention == "Figure 1B–D | Figures 1A and 2" and p1.panels == ["B", "C", "D", "A"]
    assert p2.mention == "Fig. 1C | Fig. 1D" and p2.panels == ["C", "D"]
    assert p1.section == "Case"
    assert "–" in p1.text and "inline1" not in p1.text  # &ndash; mapped, no graphic hrefs in text
    assert [cp.mention for cp in f1["A"].citing_paragraphs] == [p1.mention]
    assert [cp.mention for cp in f1["B"].citing_paragraphs] == [p1.mention]
    # rid "F1 F2" and the box paragraph cite F2; F1's caption cites F2 but is not a citing paragraph
    f2 = next(x for x in recs if x.figure_id == "F2")
    assert [cp.section for cp in f2.citing_paragraphs] == ["Case", "Box"]
    assert f2.image_path == str(tmp_path / "f2.tif")
    # rid naming the fig-group id cites every figure of the group
    for fid in ("F3a", "F3b"):
        x = next(x for x in recs if x.figure_id == fid)
        assert [cp.mention for cp in x.citing_paragraphs] == ["Figure 3"]
    app = next(x for x in recs if x.figure_id == "A1")
    assert app.citing_paragraphs[0].section == "Appendix 1" and app.image_path.endswith("app1.jpeg")


def test_image_lookup_prefers_the_full_size_file(tmp_path):
    # PMC ships a full-size JPEG and a GIF thumbnail with one stem; here the thumbnail is the JPEG
    _img(tmp_path / "pone.0046493.g001.jpg", (100, 80), "JPEG")
    _img(tmp_path / "pone.0046493.g001.PNG", (1200, 900), "PNG")
    _img(tmp_path / "pone.0046493.g002.gif", (150, 150), "GIF")
    _img(tmp_path / "pone.0046493.g002.jpg", (2000, 1500), "JPEG")
    idx = ImageIndex(tmp_path)
    assert idx.resolve("pone.0046493.g001") == str(tmp_path / "pone.0046493.g001.PNG")
    assert idx.resolve("pone.0046493.g002") == str(tmp_path / "pone.0046493.g002.jpg")
    assert idx.resolve("pone.0046493.g002.tif") == str(tmp_path / "pone.0046493.g002.jpg")  # other extension
    assert idx.resolve("info:doi/10.1371/journal.pone.0046493.g002") == str(tmp_path / "pone.0046493.g002.jpg")
    assert idx.resolve("missing") is None and idx.resolve("") is None and idx.resolve(None) is None
    # without header reads the extension order decides
    assert ImageIndex(tmp_path, read_headers=False).resolve("pone.0046493.g001") == str(tmp_path / "pone.0046493.g001.jpg")


def test_image_lookup_stays_inside_the_folder(tmp_path):
    art = tmp_path / "article"
    art.mkdir()
    _img(tmp_path / "secret.png", (10, 10), "PNG")
    _img(art / "ok.png", (10, 10), "PNG")
    os.symlink(tmp_path / "secret.png", art / "link.png")
    sub = art / "sub"
    sub.mkdir()
    _img(sub / "inner.png", (10, 10), "PNG")
    idx = ImageIndex(art)
    assert idx.resolve("../secret.png") is None
    assert idx.resolve("../secret") is None
    assert idx.resolve("/etc/passwd") is None
    assert idx.resolve(str(tmp_path / "secret.png")) is None
    assert idx.resolve("link.png") is None  # symlink leading out of the folder
    assert idx.resolve("sub/inner.png") == str(sub / "inner.png")
    assert idx.resolve("sub/../../secret.png") is None
    assert idx.resolve("ok") == str(art / "ok.png")


# --------------------------------------------------------------------------- hostile and broken input


SECRET = "TOP-SECRET-6d1f0c"


def _all_text(out) -> str:
    return " ".join(r.model_dump_json() for r in records(out))


def _article(doctype: str, body: str) -> str:
    return (
        f'<?xml version="1.0"?>\n{doctype}\n<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>'
        f'<article-id pub-id-type="pmc">42</article-id><title-group><article-title>T {body}</article-title>'
        f'</title-group></article-meta></front><body><p>See <xref ref-type="fig" rid="f1">Figure 1</xref> {body}.</p>'
        f'<fig id="f1"><label>Figure 1</label><caption><p>Cap {body}</p></caption><graphic xlink:href="f1"/></fig>'
        f"</body></article>"
    )


@pytest.fixture()
def secret_file(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text(SECRET)
    return p


def test_xxe_file_entity_is_not_expanded(tmp_path, secret_file):
    xml = tmp_path / "xxe.xml"
    xml.write_text(_article(f'<!DOCTYPE article [<!ENTITY xxe SYSTEM "file://{secret_file}">]>', "&xxe;"))
    out = ingest_jats_file(xml)
    assert SECRET not in _all_text(out)
    assert records(out)[0].article_id == "PMC42"
    assert records(out)[0].caption == "Cap"


def test_external_dtd_and_parameter_entities_are_not_loaded(tmp_path, secret_file):
    dtd = tmp_path / "evil.dtd"
    dtd.write_text(f'<!ENTITY leak "{SECRET}">')
    xml = tmp_path / "dtd.xml"
    xml.write_text(_article(f'<!DOCTYPE article SYSTEM "file://{dtd}">', "&leak;"))
    out = ingest_jats_file(xml)
    assert SECRET not in _all_text(out)
    xml2 = tmp_path / "param.xml"
    xml2.write_text(_article(f'<!DOCTYPE article [<!ENTITY % ext SYSTEM "file://{dtd}"> %ext;]>', "&leak;"))
    out2 = ingest_jats_file(xml2)
    assert SECRET not in _all_text(out2)
    assert all(isinstance(r, (Panel, Rejected)) for r in out2)


def test_network_entity_is_not_fetched(tmp_path):
    xml = tmp_path / "net.xml"
    xml.write_text(_article('<!DOCTYPE article [<!ENTITY n SYSTEM "http://127.0.0.1:9/x.txt">]>', "&n;"))
    t0 = time.perf_counter()
    out = ingest_jats_file(xml)
    assert time.perf_counter() - t0 < 5
    assert records(out)[0].caption == "Cap"


def test_billion_laughs_does_not_blow_up(tmp_path):
    ents = ['<!ENTITY a "aaaaaaaaaa">'] + [
        f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi")
    ]
    xml = tmp_path / "lol.xml"
    xml.write_text(_article("<!DOCTYPE article [" + "".join(ents) + "]>", "&i;"))
    t0 = time.perf_counter()
    out = ingest_jats_file(xml)
    assert time.perf_counter() - t0 < 5
    text = _all_text(out)
    assert "aaaaaaaaaaaaaaaaaaaa" not in text and len(text) < 100_000
    assert len(out) == 1
    if isinstance(out[0], Rejected):
        assert out[0].reason == XML_ERROR
    # a "quadratic blowup" (one big entity used many times) is not expanded either
    big = "x" * 50_000
    xml2 = tmp_path / "quad.xml"
    xml2.write_text(_article(f'<!DOCTYPE article [<!ENTITY b "{big}">]>', "&b;" * 2000))
    out2 = ingest_jats_file(xml2)
    assert len(_all_text(out2)) < 200_000


@pytest.mark.parametrize(
    "content,what",
    [
        (b"", "empty"),
        (b"<article><body><p>unclosed</body></article>", "malformed"),
        (b"\x00\xff\xfe garbage \x89PNG", "binary"),
        (b'<?xml version="1.0"?><manifest><item/></manifest>', "not an article"),
        (b"<article>" * 10, "truncated"),
    ],
)
def test_broken_files_give_xml_error(tmp_path, content, what):
    p = tmp_path / "bad.xml"
    p.write_bytes(content)
    out = ingest_jats_file(p)
    assert len(out) == 1 and isinstance(out[0], Rejected) and out[0].reason == XML_ERROR, what
    assert out[0].record.id == "file:bad|-|-" and out[0].record.source == str(p)
    assert out[0].detail


def test_missing_file_and_size_limit(tmp_path):
    out = ingest_jats_file(tmp_path / "nope.nxml")
    assert out[0].reason == XML_ERROR and out[0].record.article_id == "file:nope"
    big = FIXTURES / "pone.0046493.nxml"
    out = ingest_jats_file(big, max_bytes=10_000)
    assert out[0].reason == XML_ERROR and out[0].value == big.stat().st_size
    # file objects are counted while read
    with open(big, "rb") as fh:
        out = ingest_jats_file(fh, max_bytes=10_000)
    assert out[0].reason == XML_ERROR
    with open(big, "rb") as fh:
        out = ingest_jats_file(fh, image_root=tmp_path)
    assert len(out) == 9 and records(out)[0].article_id == "PMC3460867"
    out = ingest_jats_file(io.BytesIO(big.read_bytes()), image_root=tmp_path)
    assert len(out) == 9 and records(out)[0].source == "<stream>"


def test_very_deep_nesting_does_not_crash(tmp_path):
    # deeper than Python's recursion limit (1000), within libxml2's huge-tree limit (2048); the
    # unresolved &ndash; forces the Python text walk, which must not recurse
    depth = 1500
    inner = "<italic>" * depth + "deep" + "</italic>" * depth
    xml = tmp_path / "deep.xml"
    xml.write_text(_article('<!DOCTYPE article SYSTEM "JATS-archivearticle1.dtd">', "&ndash; " + inner))
    out = ingest_jats_file(xml)
    assert len(out) == 1 and isinstance(out[0], Rejected) and out[0].reason == IMAGE_MISSING
    assert out[0].record.citing_paragraphs[0].text == "See Figure 1 – deep."
    # deeper than libxml2 accepts: a reasoned reject, not a crash
    xml.write_text(_article("", "<italic>" * 5000 + "x" + "</italic>" * 5000))
    out = ingest_jats_file(xml)
    assert len(out) == 1 and out[0].reason == XML_ERROR
