"""The offline lexicon: matching rules, modality detection on the real example corpus (19 medical
images with their real captions/case texts, and real article captions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openmedreason.ingest.jats import ingest_jats_file
from openmedreason.ingest.records_source import ingest_records
from openmedreason.offline import vocab
from openmedreason.offline.vocab import MODALITIES, detect_modality, find_terms, modality_group, normal_abnormal, scan
from openmedreason.records import Panel
from openmedreason.taxonomy import MODALITY_GROUPS

ROOT = Path(__file__).resolve().parents[1]
MEDICAL = ROOT / "examples/corpus/medical/metadata.jsonl"
ARTICLES = ROOT / "examples/corpus/articles"

# what the curators' modality label of each record means in our lexicon
EXPECTED = {
    "X-ray": ("Radiology", "X-ray"),
    "CT": ("Radiology", "CT"),
    "Fundus": ("Visible light photography", "Fundus photograph"),
    "Histopathology": ("Microscopy", "Histology"),
    "Peripheral blood smear": ("Microscopy", "Light microscopy"),
}


def _expected(label: str) -> tuple[str, str]:
    return next(v for k, v in EXPECTED.items() if label.startswith(k))


@pytest.fixture(scope="module")
def medical() -> list[tuple[Panel, dict]]:
    panels = ingest_records(MEDICAL, field_map="medcorpus")
    meta = [json.loads(line) for line in MEDICAL.read_text().splitlines() if line.strip()]
    assert len(panels) == len(meta) == 19 and all(isinstance(p, Panel) for p in panels)
    return list(zip(panels, meta))


def test_every_modality_has_a_known_group():
    assert {g for g, _ in MODALITIES.values()} <= set(MODALITY_GROUPS)
    assert set(vocab.VOCAB_CLASSES) >= {"modality", "anatomy", "plane", "stain", "normal", "abnormal", *vocab.DESCRIPTOR_CLASSES}


def test_synonyms_map_to_canonical_terms_whole_word_longest_first():
    assert find_terms("CTPA showing saddle embolus", "modality") == ["CT"]
    assert find_terms("MR angiography and CT angiography", "modality") == ["MRI", "CT"]  # not Angiography
    assert find_terms("Digital subtraction angiography", "modality") == ["Angiography"]
    assert find_terms("H&E-stained sections; HE staining; hematoxylin and eosin", "stain") == ["H&E"]
    assert find_terms("Masson's trichrome and Masson’s trichrome", "stain") == ["Masson trichrome"]
    assert find_terms("Kaplan–Meier survival curves", "modality") == ["Survival curve"]  # en dash
    assert find_terms("posteroanterior chest radiographs", "plane") == ["Posteroanterior (PA)"]
    assert find_terms("hepatic and renal lesions", "anatomy") == ["Liver", "Kidney"]
    # whole words only
    assert find_terms("photomicrograph of the cortex", "modality") == ["Histology"]
    assert find_terms("scattered", "modality") == []
    # short capital abbreviations only in capitals: English "us", "if", "he", "pet" are not modalities
    assert find_terms("let us see if he has a pet", "modality") == []
    assert find_terms("US of the liver; IF staining; PET", "modality") == ["Ultrasound", "Immunofluorescence", "PET"]
    # "SEM" is usually the standard error of the mean, not a microscope
    assert find_terms("mean ± SEM", "modality") == []
    # "lateral" alone is a location, not the lateral projection
    assert find_terms("lateral aspect", "plane") == [] and find_terms("lateral chest radiograph", "plane") == ["Lateral"]
    with pytest.raises(KeyError):
        find_terms("x", "no-such-class")


def test_scan_reports_positions_and_classes():
    m = scan("no abnormality in the left lung", ("normal", "abnormal"))
    assert [(x.vocab_class, x.canonical, x.surface) for x in m] == [("normal", "normal", "no abnormality")]
    assert normal_abnormal("no abnormality detected") == "normal"
    assert normal_abnormal("Fundus photograph of normal left eye") == "normal"
    assert normal_abnormal("large ground-glass opacity") == "abnormal"
    assert normal_abnormal("normal white cells; consolidation in the left lower lobe") is None  # conflicting
    assert normal_abnormal("an axial image") is None


def test_modality_labels_of_the_corpus_map_to_the_expected_group(medical):
    for _, meta in medical:
        assert detect_modality(meta["modality"]) == _expected(meta["modality"]), meta["id"]
        assert modality_group(meta["modality"]) == _expected(meta["modality"])[0]


def test_detect_modality_on_the_real_captions(medical):
    """The captions/case texts themselves: whatever is detected is right; most name a modality."""
    detected = 0
    for panel, meta in medical:
        text = "\n".join(t for t in (panel.caption, panel.all_context()) if t)
        group, modality = detect_modality(text)
        exp_group, exp_modality = _expected(meta["modality"])
        if group is not None:
            assert group == exp_group, (meta["id"], text[:80])
        if modality is not None:
            assert modality == exp_modality, (meta["id"], text[:80])
            detected += 1
    assert detected >= 13  # R02 (case text only: group), R07, R15-R17 (captions name no modality)
    by_id = {m["id"]: p for p, m in medical}
    assert detect_modality(by_id["R10"].caption) == ("Radiology", "CT")  # CTPA
    assert detect_modality(by_id["R13"].caption) == ("Microscopy", "Histology")  # H&E
    assert detect_modality(by_id["R18"].caption) == ("Microscopy", "Light microscopy")  # blood smear
    assert detect_modality(by_id["R08"].caption) == ("Visible light photography", "Fundus photograph")
    assert detect_modality(by_id["R01"].caption) == ("Radiology", "X-ray")


def test_detect_modality_on_article_captions():
    def caption(folder: str, label_start: str) -> str:
        xml = next(p for p in (ARTICLES / folder).glob("*.xml"))
        for p in ingest_jats_file(xml):
            if isinstance(p, Panel) and (p.figure_label or "").startswith(label_start):
                return p.caption
        raise AssertionError(f"{folder} {label_start} not found")

    assert detect_modality(caption("medrxiv-2024.01.24.24301711", "Figure 1")) == ("Plots and Charts", "Flow chart")
    assert detect_modality(caption("elife-19405", "Figure 1")) == ("Diagram", "Schematic")
    assert detect_modality(caption("pone.0178565", "Fig 4")) == ("Plots and Charts", "Bar chart")  # histogram
    assert detect_modality(caption("elife-43154", "Figure 1")) == ("Diagram", "Schematic")  # causal diagram
    assert detect_modality("Bar graphs show mean ± SEM of three experiments") == ("Plots and Charts", "Bar chart")
    assert detect_modality("Scatter plot of DBH against seed weight") == ("Plots and Charts", "Scatter plot")


def test_descriptor_classes_cover_the_leak_words():
    assert find_terms("left lower lobe", "laterality") == ["left"]
    assert set(find_terms("left lower lobe", "location")) == {"lower", "lobe"}
    assert find_terms("two small hyperintense nodules", "count") == ["two"]
    assert find_terms("two small hyperintense nodules", "size") == ["small"]
    assert find_terms("two small hyperintense nodules", "colour") == ["hyperintense"]
    assert find_terms("spiculated, ill-defined mass", "morphology") == ["spiculated", "ill-defined"]
