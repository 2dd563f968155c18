"""Caption splitting and mention parsing (openmedreason.ingest.panels).

Real captions below are excerpts copied from the corpus XML (the file and figure are named on
each case); the expected letters were read off the captions by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from openmedreason.ingest.jats import make_parser, text_of
from openmedreason.ingest.panels import expand_letters, figure_number, mention_panels, split_caption, tail_letters

ROOT = Path(__file__).resolve().parents[1]
ARTICLES = ROOT / "examples" / "corpus" / "articles"
FIXTURES = ROOT / "tests" / "fixtures" / "jats"


def letters(caption: str) -> list[str]:
    return [x for x, _ in split_caption(caption)]


def sub(caption: str) -> dict[str, str]:
    return dict(split_caption(caption))


# --------------------------------------------------------------------------- caption styles


def test_parenthesised_labels():
    parts = sub("Chest imaging. (A) Axial CT shows a mass in the right lobe. (B) Coronal view of the same mass.")
    assert list(parts) == ["A", "B"]
    assert parts["A"] == "Axial CT shows a mass in the right lobe."
    assert parts["B"] == "Coronal view of the same mass."


def test_elife_spaced_labels():
    # INDEX.md renders eLife bold labels as "( A )"
    parts = sub("Strategy. ( A ) Representative Western blot. ( B ) Quantification of total RNA levels.")
    assert list(parts) == ["A", "B"]
    assert parts["B"] == "Quantification of total RNA levels."


def test_bare_comma_and_colon_labels():
    assert letters("Inhibition. A, SDS-PAGE profile of the proteins. B, Residual activities of LipC.") == ["A", "B"]
    assert letters("MRI of the knee. A: sagittal view. B: axial view. C: coronal view.") == ["A", "B", "C"]


def test_bare_period_labels_need_a_sentence_start_and_a_capital():
    assert letters("A. Axial CT image of the abdomen. B. Coronal reconstruction.") == ["A", "B"]
    # species abbreviations are not labels
    assert split_caption("Growth of E. coli and of B. subtilis. C. elegans were fed E. coli.") == []


def test_ranges_and_groups_share_text():
    parts = sub("(a–c) Histology of the lesion at three magnifications. (d) Endoscopic view.")
    assert list(parts) == ["A", "B", "C", "D"]
    assert parts["A"] == parts["B"] == parts["C"] == "Histology of the lesion at three magnifications."
    parts = sub("(A and B) Chest radiographs before and after treatment. (C) CT of the chest.")
    assert list(parts) == ["A", "B", "C"]
    assert parts["A"] == parts["B"]
    assert letters("(A–B, E–F) Scatter plots. (C–D, G–H) Box plots.") == list("ABCDEFGH")


def test_not_compound():
    assert split_caption("") == []
    assert split_caption(None) == []
    assert split_caption("A 45-year-old man with a mass in the liver.") == []
    assert split_caption("A large tumour (arrow) in the left kidney.") == []
    # one label only
    assert split_caption("Overview (A) of the study area.") == []
    # abbreviations in parentheses that do not start at A or skip letters
    assert split_caption("Cells treated with non-targeting (NT) or targeting (T) siRNAs; untransfected lysate (U).") == []
    assert split_caption("Adenine (A), cytosine (C), guanine (G) and thymine (T) content.") == []
    # a list of letters is not a set of labels
    assert split_caption("Groups A, B and C received the drug.") == []
    assert split_caption("Vitamin A, vitamin D and calcium levels.") == []


def test_abbreviation_after_a_label_chain_is_ignored():
    # elife-46793 fig8: "(T)" / "(U)" abbreviations after "(A)", "(B)" are not panels
    cap = ("(A) HT1080 cells were treated with non-targeting (NT) or targeting (T) siRNAs and a "
           "non-transfected cell lysate (U). (B) Protein levels were normalised.")
    assert letters(cap) == ["A", "B"]


def test_trailing_labels():
    # ehp-116-1694.nxml, figure 3 (labels follow the text they name)
    cap = ("Dietary PBDE-47 exposure elevated mRNA levels for TRα in females (A), and reduced mRNA levels for "
           "TRβ in both sexes (B). PBDE-47 exposure also reduced gene transcripts for BTEB in the brain of male, "
           "but not female, minnows (C). Transcript levels are normalized to 18S. *p < 0.05 compared to control.")
    parts = sub(cap)
    assert list(parts) == ["A", "B", "C"]
    assert parts["A"] == "Dietary PBDE-47 exposure elevated mRNA levels for TRα in females"
    assert parts["B"] == "and reduced mRNA levels for TRβ in both sexes"
    assert parts["C"].startswith("PBDE-47 exposure also reduced gene transcripts for BTEB")


def test_back_references_inside_a_leading_caption_do_not_split():
    # elife-46793 fig5: "(A, B) … for PDS (A) and PhenDC3 (B). … (C) …"
    cap = ("Identification of cancer-associated genes. (A, B) Median log2FC and number of significantly depleted "
           "hairpins for G4 sensitisers overlapping the COSMIC database for PDS (A) and PhenDC3 (B). Genes common "
           "to both are indicated in blue. (C) Functional interaction network analysis using STRING.")
    parts = sub(cap)
    assert list(parts) == ["A", "B", "C"]
    assert parts["A"] == parts["B"]
    assert parts["A"].startswith("Median log2FC") and parts["A"].endswith("indicated in blue.")


def test_group_label_then_item_labels():
    # elife-46793 fig6—figure supplement 1: "(C–E) Venn diagrams showing (C) …, (D) … and (E) …"
    cap = ("(A) Cumulative population doublings. (B) Number of shRNAs targeting each gene. (C–E) Venn diagrams "
           "showing (C) significantly depleted shRNAs, (D) significantly depleted genes and (E) overlap of screens.")
    parts = sub(cap)
    assert list(parts) == ["A", "B", "C", "D", "E"]
    assert parts["C"] == "Venn diagrams showing significantly depleted shRNAs"
    assert parts["D"] == "Venn diagrams showing significantly depleted genes and"
    assert parts["E"] == "Venn diagrams showing overlap of screens."


def test_bare_labels_mid_sentence_plos_style():
    # pone.0046493.nxml figure 3
    cap = ("Protein-inhibitor adducts studies using mass spectrometry. Global mass modifications of A, LipH; B, LipN "
           "and C, LipY after 30 min incubation with MmPPOX at a molar excess of 20. D, PMF spectra of LipN before "
           "(top) and after (bottom) 30 min incubation.")
    parts = sub(cap)
    assert list(parts) == ["A", "B", "C", "D"]
    assert parts["A"] == "LipH"
    assert parts["D"].startswith("PMF spectra of LipN")
    # pone.0046493.nxml figure 1
    assert letters("Chemical structure of inhibitors. Chemical structures of A, THL and B, MmPPOX. The proposed "
                   "mechanism of action involves the opening of the cycle.") == ["A", "B"]


def test_lower_case_labels_are_upper_cased():
    # elife-46472 figure 1
    parts = sub("(a) MA consumption and (b) total volume consumed, when MA was offered vs. water.")
    assert list(parts) == ["A", "B"]
    assert parts["A"] == "MA consumption and"


# --------------------------------------------------------------------------- real captions, whole corpus


def _captions(path: Path) -> dict[str, str]:
    """Captions read straight from the XML (title + paragraphs), independent of the ingest."""
    tree = etree.parse(str(path), make_parser())
    out = {}
    for fig in tree.iter("fig"):
        cap = fig.find("caption")
        bits = [text_of(c) for c in cap if c.tag in ("title", "p")] if cap is not None else []
        out[fig.get("id")] = " ".join(b for b in bits if b)
    return out


# Panel letters per figure, read by hand from the captions (figures not listed: not compound).
REAL_SPLITS = {
    ARTICLES / "elife-30274" / "main.jats.xml": {
        "fig1": "AB", "fig2s1": "ABCDEFGH", "fig2s2": "ABCDEFGH", "fig3": "AB",
    },
    ARTICLES / "elife-19405" / "elife-19405-v1.xml": {"fig1": "AB"},
    ARTICLES / "bjmbr-2004-37-04-459" / "1414-431X-bjmbr-37-04-459-477.xml": {"fig2": "AB"},
    ARTICLES / "pone.0178565" / "main.jats.xml": {
        "pone.0178565.g003": "AB", "pone.0178565.g005": "ABC", "pone.0178565.g006": "AB",
    },
    ARTICLES / "pone.0056489" / "pone.0056489.xml": {"pone-0056489-g001": "AB", "pone-0056489-g002": "ABCD"},
    FIXTURES / "pone.0046493.nxml": {"pone-0046493-g001": "AB", "pone-0046493-g002": "AB", "pone-0046493-g003": "ABCD"},
    FIXTURES / "ehp-116-1694.nxml": {"f1-ehp-116-1694": "AB", "f2-ehp-116-1694": "AB", "f3-ehp-116-1694": "ABC"},
    FIXTURES / "1471-2180-11-174.nxml": {"F2": "AB", "F3": "ABCD", "F4": "AB"},
    FIXTURES / "pone.0000217.nxml": {},
    FIXTURES / "pntd.0002065.nxml": {},
    ARTICLES / "medrxiv-2024.01.24.24301711" / "24301711.xml": {},
}


@pytest.mark.parametrize("path", sorted(REAL_SPLITS), ids=lambda p: p.parent.name if p.parent != FIXTURES else p.name)
def test_real_captions(path):
    expected = REAL_SPLITS[path]
    for fid, cap in _captions(path).items():
        got = "".join(letters(cap))
        assert got == expected.get(fid, ""), fid


def test_real_elife_46793_letters():
    caps = _captions(ARTICLES / "elife-46793" / "main.jats.xml")
    got = {fid: "".join(letters(c)) for fid, c in caps.items()}
    # by hand from the captions; fig8s1 labels run (A) (B–D) … (B) (C) (D) (E), fig8s2 has no labels
    assert got["fig1"] == ""
    assert got["fig2"] == "ABCD"
    assert got["fig6"] == "ABCDEFGH"
    assert got["fig8s1"] == "ABCDE"
    assert got["fig8s2"] == ""
    assert got["fig8s3"] == "ABCDEFGHIJ"
    assert got["fig9s2"] == "ABCDEFGHIJKL"
    assert got["fig10"] == "ABCDEFG"


# --------------------------------------------------------------------------- mentions


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Fig. 2", []),
        ("Figure 2B", ["B"]),
        ("Fig. 2B–D", ["B", "C", "D"]),
        ("Fig. 2B-D", ["B", "C", "D"]),
        ("Figs. 2B and 3C", ["B", "C"]),
        ("Figure 1A,C", ["A", "C"]),
        ("Figure 1A, C", ["A", "C"]),
        ("Figure 3—figure supplement 1B", ["B"]),
        ("Figure 8—figure supplements 1", []),
        ("Figure 6—figure supplement 1F & G", ["F", "G"]),
        ("Figure 5a,b", ["A", "B"]),
        ("Figure 8b and c", ["B", "C"]),
        ("Fig. 2a, b, c and d", ["A", "B", "C", "D"]),
        ("Figure 10B–E", ["B", "C", "D", "E"]),
        ("2A", ["A"]),
        ("1", []),
        ("B–D", ["B", "C", "D"]),
        ("Author response image 1", []),
        ("", []),
    ],
)
def test_mention_panels(text, expected):
    assert mention_panels(text) == expected


def test_mention_panels_for_one_figure():
    assert mention_panels("Figs. 2B and 3C", figure="Figure 3") == ["C"]
    assert mention_panels("Figs. 2B and 3C", figure="Figure 2.") == ["B"]
    assert mention_panels("Figs. 2B and 3C", figure="3") == ["C"]
    # no number matches: every letter
    assert mention_panels("Figs. 2B and 3C", figure="Figure 7") == ["B", "C"]
    # eLife supplements: the number is the supplement's own
    assert mention_panels("Figure 6—figure supplement 1E", figure="Figure 6—figure supplement 1.") == ["E"]


def test_tail_letters_and_helpers():
    assert tail_letters("B). Considering a constant") == "B"
    assert tail_letters("B–D) and") == "B–D"
    assert tail_letters("a, b) were") == "a, b"
    assert tail_letters(" and ") == ""
    assert tail_letters("). Orthologues") == ""
    assert tail_letters(None) == ""
    assert expand_letters("A–C, E") == ["A", "B", "C", "E"]
    assert expand_letters("a and b") == ["A", "B"]
    assert figure_number("Figure 6—figure supplement 1.") == "1"
    assert figure_number("Fig 2") == "2"
    assert figure_number(None) is None
