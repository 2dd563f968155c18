"""Answer extraction (``openmedreason.bench.answers``) against a labelled corpus and unit cases.

``tests/fixtures/answers_corpus.jsonl`` holds replies written for this test in the styles models
produce (dataset format, R1/Qwen reasoning, markdown, boxed, answer phrases, option text only,
hedges, refusals, truncations, reward-hacking attempts). ``expected`` is what a careful reader
takes as the chosen letter, or null when the reply does not commit to exactly one valid option.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from openmedreason.bench.answers import (
    ANSWER_FORMAT,
    INVALID_REASONS,
    METHODS,
    Extraction,
    extract_answer,
    format_ok,
    strip_reasoning,
)

CORPUS = Path(__file__).parent / "fixtures" / "answers_corpus.jsonl"
CXR = ["Pleural effusion", "Pneumothorax", "Lobar consolidation", "Cardiomegaly"]


def corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_corpus_agreement_and_no_false_letters():
    rows = corpus()
    assert len(rows) >= 160
    assert sum(r["expected"] is None for r in rows) >= 50, "the corpus must exercise the invalid paths"
    wrong, false_letters = [], []
    for i, r in enumerate(rows):
        got = extract_answer(r["text"], r["letters"], r.get("options"))
        if got.letter != r["expected"]:
            wrong.append((i, r["note"], r["expected"], got.letter, got.method))
            if r["expected"] is None:
                false_letters.append(i)
    agreement = 1 - len(wrong) / len(rows)
    assert not false_letters, f"expected-null replies extracted as a letter: {wrong}"
    assert agreement >= 0.99, f"agreement {agreement:.3f}; disagreements: {wrong}"


def test_corpus_methods_and_reasons_are_declared():
    seen = Counter()
    for r in corpus():
        got = extract_answer(r["text"], r["letters"], r.get("options"))
        seen[got.method] += 1
        if got.letter is None:
            assert got.invalid_reason in INVALID_REASONS
            assert got.method in ("none", f"invalid:{got.invalid_reason}")
        else:
            assert got.method in METHODS and got.invalid_reason is None and got.letter in r["letters"]
    # every structured stage is exercised by the corpus
    for m in ("answer_tag", "answer_tag_open", "boxed", "answer_is", "regex:whole", "regex:start", "regex:bold",
              "regex:end", "regex:paren", "regex:dot", "option_text", "invalid:hedged", "invalid:multi_letter",
              "invalid:empty_tag", "invalid:out_of_range", "invalid:refusal", "invalid:truncated"):
        assert seen[m] > 0, m


@pytest.mark.parametrize(
    ("text", "letter", "method"),
    [
        ("<think>A is wrong, C maybe, D no.</think>\n<answer>B</answer>", "B", "answer_tag"),
        ("<think>x</think>\n<answer>A</answer> wait <answer>C</answer>", "C", "answer_tag"),
        ("<think>x</think>\n<answer>C", "C", "answer_tag_open"),
        ("reasoning with a pre-filled tag</think>\n<answer>D</answer>", "D", "answer_tag"),
        ("First \\boxed{A}, then \\boxed{D}", "D", "boxed"),
        ("Initially the answer is A. However, the answer is B.", "B", "answer_is"),
        ("答案：B", "B", "answer_is"),
        ("**C. Lobar consolidation**\n\nOptions A and D do not fit.", "C", "regex:start"),
        ("Pneumothorax", "B", "option_text"),
    ],
)
def test_stage_that_fires(text, letter, method):
    got = extract_answer(text, "ABCD", CXR)
    assert (got.letter, got.method) == (letter, method)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("A or C", "hedged"),
        ("The answer is either B or D.", "hedged"),
        ("A/B", "hedged"),
        ("A and C", "multi_letter"),
        ("<think>x</think><answer>A, C</answer>", "multi_letter"),
        ("<think>x</think><answer></answer>", "empty_tag"),
        ("The answer is E.", "out_of_range"),
        ("I cannot determine the answer from this image.", "refusal"),
        ("<think>Let me compare option A and option", "truncated"),
        ("A chest CT shows a spiculated mass.", "no_answer"),
        ("", "empty"),
        (None, "empty"),
    ],
)
def test_invalid_never_takes_a_letter(text, reason):
    got = extract_answer(text, "ABCD", CXR)
    assert got.letter is None and got.invalid_reason == reason


def test_hedge_keeps_its_candidates_and_extraction_is_frozen():
    got = extract_answer("The answer is A or C.", "ABCD")
    assert got.candidates == ("A", "C") and not got.valid
    assert isinstance(got, Extraction)
    with pytest.raises(AttributeError):
        got.letter = "A"  # type: ignore[misc]


def test_letters_restrict_the_valid_range():
    assert extract_answer("<answer>E</answer>", "ABCDE").letter == "E"
    assert extract_answer("<answer>E</answer>", "ABCD").invalid_reason == "out_of_range"
    assert extract_answer("<answer>b</answer>", "ab").letter == "B"  # letters are case-insensitive
    # the pronoun "I" is not a letter, even with nine options
    assert extract_answer("I think so.", "ABCDEFGHI").letter is None


def test_strip_reasoning_keeps_text_around_blocks():
    assert strip_reasoning("<think>a</think>\nX") == ("X", False)
    assert strip_reasoning("<answer>D</answer><think>why</think>") == ("<answer>D</answer>", False)
    assert strip_reasoning("prefilled</think> Y") == ("Y", False)
    assert strip_reasoning("<think>cut off") == ("", True)
    assert strip_reasoning("<analysis>a</analysis>Z") == ("Z", False)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>reasoning</think>\n<answer>B</answer>", True),
        ("<think>\nreasoning\n</think>\n\n<answer> B </answer>\n", True),
        ("<think>r</think><answer>B</answer>", True),
        ("<think></think>\n<answer>B</answer>", False),  # empty reasoning
        ("<think>r</think>\n<answer>B</answer> extra", False),  # text after the answer
        ("<think>r</think>\n<answer>B</answer>\n<answer>C</answer>", False),  # two answers
        ("<think>r</think>\n<answer></answer>", False),
        ("<think>r</think>\n<answer>AB</answer>", False),
        ("<think>r</think>\n<answer>b</answer>", False),  # lower case is not the format
        ("<think>r <answer>B</answer></think>\n<answer>B</answer>", False),  # tag inside think
        ("preamble <think>r</think>\n<answer>B</answer>", False),
        ("<think>r</think>\nSo:\n<answer>B</answer>", False),
        ("<think>r</think>\n<answer>B", False),
        ("", False),
    ],
)
def test_format_ok(text, ok):
    assert format_ok(text) is ok
    assert bool(ANSWER_FORMAT.match(text)) is ok


def test_format_ok_with_letters():
    assert format_ok("<think>r</think>\n<answer>E</answer>", "ABCDE")
    assert not format_ok("<think>r</think>\n<answer>E</answer>", "ABCD")


def test_dataset_traces_pass_the_format_and_extract_their_letter():
    from openmedreason.curate.trace_checks import assemble_trace

    # the real assembler of C1 traces: its output is the reward's target format
    text = assemble_trace(
        check="The lung fields must be checked for opacities.",
        perception="Both lungs show hazy density in the mid and lower zones; option A would need a meniscus.",
        clinical_context="",
        interpretation="Bilateral hazy density that spares the vessels is an airspace process.",
        justification="The opacities fit option C rather than B or D.",
        letter="C",
    )
    assert format_ok(text, "ABCD")
    assert extract_answer(text, "ABCD").letter == "C"


def test_pathological_long_replies_stay_fast():
    import time

    nasty = [
        "\\boxed{" * 3000,
        "(A) " * 5000,
        "A or " * 4000,
        "answer is " * 3000,
        "Answer:" + " " * 20000,
        "<think>" + "x " * 10000 + "</think><answer>B</answer>",
        " ".join(["the answer is option", "A", "or", "**C**", "(B)", "<answer>", "so", "/"] * 1500),
        "<think>a</think>" * 5000 + "<answer>B</answer>",
        "</answer>" * 8000,
    ]
    for text in nasty:
        start = time.perf_counter()
        extract_answer(text, "ABCD", CXR)
        format_ok(text)
        assert time.perf_counter() - start < 1.0, text[:30]
