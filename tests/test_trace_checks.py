"""Deterministic trace filters (C2): each code accepts a clean trace and rejects its own defect.

The traces below were written for these tests (not model output) about a real panel of
``examples/corpus/medical`` (R04: "Hazy infiltrates in both lung fields consistent with pneumonia").
"""

from __future__ import annotations

import pytest

from openmedreason.curate import trace_checks as tc
from openmedreason.curate.trace_checks import (
    TraceLimits,
    assemble_trace,
    check_absent_image_reference,
    check_answer,
    check_cites_source,
    check_copies_caption,
    check_elimination,
    check_format,
    check_hedged,
    check_length,
    first_failure,
    normalise_letter,
    run_trace_checks,
)
from openmedreason.reasons import REASONS
from openmedreason.records import Panel, Question

CAPTION = (
    "Posteroanterior chest radiograph of patient 2, 27 January 2020 (illness day 10). "
    "Hazy infiltrates in both lung fields consistent with pneumonia"
)

GOOD_THINK = (
    "The lung fields must be checked for any opacity and its distribution, then the pattern must be matched to a description.\n\n"
    "Perception: Both lungs show ill-defined, hazy increased density spread through the mid and lower zones, with the vessels "
    "still visible through it. The heart size is normal and there is no pleural fluid.\n\n"
    "Interpretation and medical knowledge: Hazy density that does not hide the vessels is an infiltrate of the airspaces and "
    "interstitium rather than a collapse or free gas, and when it affects both sides it fits an infectious pneumonia.\n\n"
    "Answer justification: The bilateral hazy opacities are best described as hazy infiltrates in both lung fields, option D."
)


def question(**over) -> Question:
    panel = Panel(id="doi:10.1186/s41182-020-00203-0|-|R04", source="metadata.jsonl", source_kind="records",
                  article_id="doi:10.1186/s41182-020-00203-0", caption=CAPTION)
    data = dict(id="R04|findings|short", panel=panel, category="findings", family="Perception", style="short", image_scope="panel",
                answer_format="standard", stem="Which description best fits the lung fields on this radiograph?",
                options=["Clear lung fields", "Unilateral lobar collapse", "Pneumoperitoneum", "Hazy infiltrates in both lung fields"],
                answer="D", engine="offline")
    data.update(over)
    return Question(**data)


def trace(think: str = GOOD_THINK, letter: str = "D") -> str:
    return f"<think>\n{think}\n</think>\n<answer>{letter}</answer>"


def reasons_of(text: str, q: Question | None = None) -> list[str]:
    return [c.failure[0] for c in run_trace_checks(text, q or question()) if c.failure]


def test_codes_are_registered():
    for code in ("c2.format", "c2.wrong_answer", "c2.too_short", "c2.too_long", "c2.absent_image_reference", "c2.cites_source",
                 "c2.copies_caption", "c2.hedged", "c2.elimination"):
        assert code in REASONS


def test_clean_trace_passes_every_check():
    checks = run_trace_checks(trace(), question())
    assert [c.name for c in checks] == ["format", "answer_matches_gold", "length", "absent_image_reference", "cites_source",
                                         "copies_caption", "hedged", "elimination"]
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert first_failure(checks) is None
    assert checks[2].as_check().detail.endswith("characters")


# --------------------------------------------------------------------------- format
@pytest.mark.parametrize(
    "text, why",
    [
        (trace() + "\n<answer>D</answer>", "two answer tags"),
        (trace().replace("<answer>D</answer>", "<answer></answer>"), "empty answer tag"),
        (trace().replace("<answer>D</answer>", "<answer> </answer>"), "blank answer tag"),
        (trace() + "\nThe answer is D.", "text after the answer"),
        (trace() + "\n", "trailing newline"),
        ("Sure! " + trace(), "text before the think block"),
        (trace().replace("</think>\n<answer>", "</think><answer>"), "no newline between the blocks"),
        (trace().replace("</think>\n<answer>", "</think>\n\n<answer>"), "two newlines between the blocks"),
        (trace(letter="E"), "letter not among the four options"),
        (trace(letter="DD"), "two letters"),
        (trace(letter="d"), "lower-case letter"),
        ("<think>\n \n</think>\n<answer>D</answer>", "empty think"),
        ("<think>a</think><think>b</think>\n<answer>D</answer>", "two think blocks"),
        (trace().replace("<think>", ""), "no think tag"),
        ("", "empty"),
    ],
)
def test_format_rejects(text, why):
    fail = check_format(text, "ABCD")
    assert fail is not None and fail[0] == "c2.format", why
    assert reasons_of(text)[0] == "c2.format"


def test_format_accepts_the_exact_shape():
    assert check_format(trace(), "ABCD") is None
    assert check_format("<think>x</think>\n<answer>B</answer>", "AB") is None


# --------------------------------------------------------------------------- answer
def test_answer_other_than_gold_is_rejected():
    assert check_answer(trace(letter="A"), "D")[0] == "c2.wrong_answer"
    assert reasons_of(trace(letter="A")) == ["c2.wrong_answer"]
    assert check_answer(trace(), "D") is None


# --------------------------------------------------------------------------- length
def test_length_bounds():
    assert check_length("x" * 299)[0] == "c2.too_short" and check_length("x" * 299)[1] == 299
    assert check_length("x" * 6001)[0] == "c2.too_long"
    assert check_length("x" * 300) is None and check_length("x" * 6000) is None
    long_think = GOOD_THINK + "\n\n" + " ".join(["The hazy density is spread evenly through both lower zones."] * 110)
    assert "c2.too_long" in reasons_of(trace(long_think))
    assert reasons_of(trace("Perception: hazy density in both lungs. Answer: D.")) == ["c2.too_short"]
    assert check_length("x" * 50, min_chars=10, max_chars=40)[0] == "c2.too_long"


# --------------------------------------------------------------------------- absent images
@pytest.mark.parametrize(
    "phrase",
    ["As seen in panel B, the opacity is bilateral.", "Compared with Figure 3, the density increased.", "Fig. 2A shows the same zone.",
     "The previous image showed clear lungs.", "On the next image the tube is gone.", "The left panel shows the lateral view.",
     "The right image shows the same area.", "The inset magnifies the right base.", "The other panel shows a CT slice.",
     "In panels A–C the opacity spreads.", "The prior scan showed no opacity.", "See Table 2 for the counts.",
     "b shows a large ground-glass opacity."],
)
def test_absent_image_references_are_rejected(phrase):
    fail = check_absent_image_reference(phrase)
    assert fail is not None and fail[0] == "c2.absent_image_reference"
    assert "c2.absent_image_reference" in reasons_of(trace(GOOD_THINK + "\n\n" + phrase))


@pytest.mark.parametrize(
    "phrase",
    ["Consolidation is present in the left lower lobe.", "The right upper lobe is clear.", "The upper zone and lower zone differ.",
     "A lipid panel a week later was normal.", "The metabolic panel B12 level was low.", "The image shows hazy opacities.",
     "Another view is not needed to answer."],
)
def test_anatomy_and_ordinary_words_are_not_image_references(phrase):
    assert check_absent_image_reference(phrase) is None


# --------------------------------------------------------------------------- citing the source
@pytest.mark.parametrize(
    "phrase",
    ["The caption states that both lungs are hazy.", "The sub-caption mentions pneumonia.", "Given the context, this is pneumonia.",
     "The provided text describes infiltrates.", "According to the article, the patient was febrile.", "The authors report a fever.",
     "As described, the lungs are hazy.", "The study reported bilateral infiltrates.", "In this study the patients were febrile.",
     "The given answer is D.", "The ground truth says pneumonia.", "According to the case report, he was ventilated.",
     "Smith et al. described this pattern."],
)
def test_citing_the_source_is_rejected(phrase):
    fail = check_cites_source(phrase)
    assert fail is not None and fail[0] == "c2.cites_source"
    assert "c2.cites_source" in reasons_of(trace(GOOD_THINK + "\n\n" + phrase))


@pytest.mark.parametrize(
    "phrase",
    ["In the context of immunosuppression, opportunistic infection is likely.", "According to the WHO classification, this is grade 2.",
     "According to the Fleischner Society guidelines, follow-up CT is advised.", "The imaging study shows bilateral density.",
     "CT is the study of choice.", "Clinical context: a febrile adult.", "The text in the image reads R."],
)
def test_ordinary_clinical_phrases_are_not_source_citations(phrase):
    assert check_cites_source(phrase) is None


# --------------------------------------------------------------------------- caption copying
def test_long_verbatim_caption_run_is_rejected():
    copied = GOOD_THINK + "\n\nPosteroanterior chest radiograph of patient 2 27 January 2020 illness day 10 hazy infiltrates."
    fail = check_copies_caption(copied, [CAPTION])
    assert fail[0] == "c2.copies_caption" and fail[1] >= 12
    assert "c2.copies_caption" in reasons_of(trace(copied))
    # a short shared phrase is fine (11 words)
    assert check_copies_caption("We see hazy infiltrates in both lung fields consistent with pneumonia today.", [CAPTION]) is None
    assert check_copies_caption("hazy infiltrates in both lung fields consistent with pneumonia", [CAPTION], n=8)[0] == "c2.copies_caption"
    # the sub-caption counts too
    q = question(panel=question().panel.model_copy(update={"sub_caption": "Large ground-glass opacity in the basal segment of the left lower lobe with air bronchograms"}))
    t = GOOD_THINK + " Large ground-glass opacity in the basal segment of the left lower lobe with air bronchograms."
    assert "c2.copies_caption" in reasons_of(trace(t), q)


# --------------------------------------------------------------------------- hedging
@pytest.mark.parametrize(
    "ending",
    ["Answer justification: The answer is D or C.", "Answer justification: It is either option B or option D.",
     "Answer justification: The best choice is (A) or (D).", "Answer justification: Options C/D both fit.",
     "Answer justification: This is either a pneumonia or pulmonary oedema.",
     "Answer justification: From the image alone this cannot be determined, but D is closest.",
     "Answer justification: Both options are plausible here; D is chosen."],
)
def test_hedged_conclusions_are_rejected(ending):
    think = GOOD_THINK.rsplit("\n\n", 1)[0] + "\n\n" + ending
    fail = check_hedged(think, "Hazy infiltrates in both lung fields")
    assert fail is not None and fail[0] == "c2.hedged"


def test_committed_conclusions_and_ordinary_or_pass():
    assert check_hedged(GOOD_THINK, "Hazy infiltrates in both lung fields") is None
    assert check_hedged("Perception: x.\n\nInterpretation: infection with hepatitis B or C is not relevant.\n\nAnswer justification: D.") is None
    # "either … or" earlier in the reasoning is not a hedge; only in the conclusion
    assert check_hedged("Perception: either lung may be affected or both.\n\nAnswer justification: bilateral infiltrates, D.") is None
    # an option whose own text reads "either … or" is not a hedge
    assert check_hedged("Answer justification: the answer is Either surgery or radiotherapy.", "Either surgery or radiotherapy") is None


# --------------------------------------------------------------------------- elimination
def test_elimination_dominated_reasoning_is_rejected():
    q = question()
    elim = (
        "Clear lung fields is not correct because density is present. Unilateral lobar collapse is unlikely as both sides are involved. "
        "Pneumoperitoneum is excluded since there is no free gas under the diaphragm. Option B is wrong because volume is preserved. "
        "So the answer is D."
    )
    fail = check_elimination(elim, q.options, "D")
    assert fail is not None and fail[0] == "c2.elimination" and fail[1] > 0.5
    assert "c2.elimination" in reasons_of(trace(elim + " " + "x" * 300), q)
    # one brief rule-out inside forward reasoning is fine
    assert check_elimination(GOOD_THINK + " Unilateral lobar collapse is unlikely as both sides are involved.", q.options, "D") is None
    limits = TraceLimits(elimination=False)
    assert "elimination" not in [c.name for c in run_trace_checks(trace(), q, limits)]


# --------------------------------------------------------------------------- assembly
def test_assemble_trace_is_exact_and_strips_repeated_labels():
    t = assemble_trace("Check the lungs.", "Perception: hazy lungs.", "none", "Interpretation: infection.", "**Answer justification:** D.", "(d).")
    assert t == ("<think>\nCheck the lungs.\n\nPerception: hazy lungs.\n\nInterpretation and medical knowledge: infection.\n\n"
                 "Answer justification: D.\n</think>\n<answer>D</answer>")
    assert check_format(t, "ABCD") is None
    assert normalise_letter("Option b") == "B" and normalise_letter("B and C") == "B and C"
    assert tc.SECTION_LABELS[1:] == ("Perception", "Clinical context", "Interpretation and medical knowledge", "Answer justification")
