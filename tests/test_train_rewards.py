"""GRPO rewards: known completions, reward-hacking attempts, and the TRL / EasyR1 / verl adapters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from openmedreason.bench.answers import extract_answer
from openmedreason.train import rewards
from openmedreason.train.rewards import (
    accuracy_reward,
    accuracy_score,
    easyr1_compute_score,
    format_reward,
    format_score,
    length_score,
    make_length_penalty,
    parse_ground_truth,
    verl_compute_score,
)

FIXTURES = Path(__file__).parent / "fixtures"
OPTIONS = ["Pleural effusion", "Pneumothorax", "Lobar consolidation", "Cardiomegaly"]
GOOD = (
    "<think>Perception: a sharp visceral pleural line with no lung markings beyond it on the right.\n"
    "Answer justification: this is a pneumothorax, option B.</think>\n<answer>B</answer>"
)


def test_dataset_format_gets_both_rewards():
    assert format_score(GOOD, "ABCD") == 1.0
    assert accuracy_score(GOOD, "B", options=OPTIONS) == 1.0
    assert accuracy_score(GOOD, "C", options=OPTIONS) == 0.0  # wrong letter
    # whitespace and newlines between and around the blocks are allowed (the release wanted "\n" inside tags)
    spaced = "<think>\nreasoning\n</think>\n\n<answer> B </answer>\n"
    assert format_score(spaced) == 1.0 and accuracy_score(spaced, "B", "ABCD") == 1.0
    assert format_score("<think>reasoning</think><answer>B</answer>") == 1.0


def test_released_traces_score_full_marks():
    """Every trace of the released-format fixture earns format 1 and accuracy 1 against its own answer."""
    rows = pq.read_table(FIXTURES / "benchmarks" / "omr-release" / "test-00000-of-00001.parquet").to_pylist()
    assert rows
    for row in rows:
        assert format_score(row["reasoning"]) == 1.0, row["reasoning"][-60:]
        assert accuracy_score(row["reasoning"], row["answer"]) == 1.0


@pytest.mark.parametrize(
    "completion, why",
    [
        ("<think>x</think>\n<answer>A or B</answer>", "hedge inside the tag"),
        ("<think>x</think>\n<answer>A/B</answer>", "slash hedge"),
        ("<think>x</think>\n<answer>AB</answer>", "two letters"),
        ("<think>x</think>\n<answer></answer>", "empty tag"),
        ("<think>x</think>\n<answer>  </answer>", "blank tag"),
        ("<think>x</think>\n<answer>B</answer>\n<answer>B</answer>", "answer tag repeated"),
        ("<think>x</think>\n<answer>A</answer><answer>B</answer>", "two answer tags, last one right"),
        ("<think>I will say <answer>B</answer></think>\n<answer>B</answer>", "an extra tag hidden in the reasoning"),
        ("<think>x</think>\n<answer>E</answer>", "letter outside the four options"),
        ("<think>x</think>\nThe answer is B.", "answer outside any tag"),
        ("<think>x</think>\n\\boxed{B}", "boxed instead of the tag"),
        ("B", "bare letter: the release compared the whole completion with the letter"),
        ("b", "bare lower-case letter"),
        ("<think>x</think>\n<answer>B", "unclosed answer tag"),
        ("", "empty completion"),
        ("<answer>B</answer></think>", "answer inside an unopened think block"),
    ],
)
def test_reward_hacking_gets_no_accuracy(completion, why):
    assert accuracy_score(completion, "B", "ABCD", OPTIONS) == 0.0, why


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>B</answer>",  # no think block
        "<think></think><answer>B</answer>",  # empty think
        "<think>x</think><answer>B</answer> trailing text",
        "preamble <think>x</think><answer>B</answer>",
        "<think>x</think><answer>B</answer><answer>B</answer>",
        "<think>x<think>y</think><answer>B</answer>",
        "<think>x</think><answer>Pneumothorax</answer>",  # option text, not a letter
        "<think>x</think><answer>b</answer>",  # lower case
        "<think>\nx\n</think>\n<answer>\nB\n</answer>\nMore",
    ],
)
def test_format_reward_rejects_other_shapes(completion):
    assert format_score(completion) == 0.0


def test_format_respects_the_item_letters():
    text = "<think>x</think><answer>E</answer>"
    assert format_score(text) == 1.0
    assert format_score(text, "ABCD") == 0.0


def test_accuracy_reads_the_tag_like_the_evaluation():
    # "B. text" and the exact option text inside the tag are answers the evaluation accepts too
    assert accuracy_score("<think>x</think><answer>B. Pneumothorax</answer>", "B", options=OPTIONS) == 1.0
    assert accuracy_score("<think>x</think><answer>Pneumothorax</answer>", "B", options=OPTIONS) == 1.0
    # a gold letter outside the item's letters can never be earned
    assert accuracy_score("<think>x</think><answer>E</answer>", "E", options=OPTIONS) == 0.0


def test_reward_one_implies_evaluation_agrees():
    """On the labelled extractor corpus: whenever the reward pays 1 for a letter, the evaluation's
    extractor reads that same letter (one extractor for reward and metric)."""
    entries = [json.loads(l) for l in (FIXTURES / "answers_corpus.jsonl").read_text().splitlines() if l.strip()]
    paid = 0
    for e in entries:
        letters = e.get("letters") or "ABCDE"
        for gold in letters:
            if accuracy_score(e["text"], gold, letters, e.get("options")) == 1.0:
                paid += 1
                assert extract_answer(e["text"], letters, e.get("options")).letter == gold, e["text"][-80:]
        if e.get("expected") and format_score(e["text"], letters) == 1.0:
            assert accuracy_score(e["text"], e["expected"], letters, e.get("options")) == 1.0
    assert paid > 10


def test_trl_adapters_conversational_and_plain():
    conv = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": "B"}]]
    kw = {"answer": ["B", "B"], "options": [OPTIONS, OPTIONS], "letters": ["ABCD", "ABCD"], "trainer_state": None}
    assert accuracy_reward(conv, **kw) == [1.0, 0.0]
    assert format_reward(conv, **kw) == [1.0, 0.0]
    plain = [GOOD, "<think>x</think><answer>C</answer>"]
    assert accuracy_reward(plain, answer=["B", "B"]) == [1.0, 0.0]
    assert format_reward(plain) == [1.0, 1.0]
    blocks = [[{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}]]
    assert accuracy_reward(blocks, answer=["B"]) == [1.0]
    with pytest.raises(KeyError):
        accuracy_reward(plain)


def test_length_penalty():
    assert length_score(100, 512, 128) == 0.0
    assert length_score(384, 512, 128) == 0.0
    assert length_score(448, 512, 128) == pytest.approx(-0.5)
    assert length_score(512, 512, 128) == -1.0
    assert length_score(900, 512, 128) == -1.0
    pen = make_length_penalty(512, 128)
    assert pen.__name__ == "length_penalty"
    assert pen(["a", "b"], completion_ids=[[0] * 10, [0] * 512]) == [0.0, -1.0]


def test_ground_truth_forms():
    assert parse_ground_truth("B") == ("B", None, None)
    assert parse_ground_truth(json.dumps({"letter": "C", "options": ["a", "b", "c"]})) == ("C", ["a", "b", "c"], None)
    # the EasyR1 export packs options as a letter → text map
    packed = json.dumps({"letter": "A", "options": {"B": "y", "A": "x"}, "answer_text": "x"})
    assert parse_ground_truth(packed) == ("A", ["x", "y"], None)
    assert parse_ground_truth("{not json") == (None, None, None)
    assert parse_ground_truth(None) == (None, None, None)


def test_easyr1_batch_scores():
    from openmedreason.train import easyr1_reward

    assert easyr1_reward.REWARD_TYPE == "batch"
    gt3 = json.dumps({"letter": "C", "options": ["a", "b", "c"]})
    inputs = [
        {"response": GOOD, "response_length": 30, "ground_truth": "B"},
        {"response": "<think>x</think><answer>D</answer>", "response_length": 9, "ground_truth": gt3},  # D not an option
        {"response": "B", "response_length": 1, "ground_truth": "B"},
        {"response": "<think>x</think><answer>A</answer>", "response_length": 9, "ground_truth": "B"},
    ]
    out = easyr1_reward.compute_score(inputs)
    assert [o["accuracy"] for o in out] == [1.0, 0.0, 0.0, 0.0]
    assert [o["format"] for o in out] == [1.0, 0.0, 0.0, 1.0]
    assert [o["overall"] for o in out] == [1.0, 0.0, 0.0, 0.5]
    assert easyr1_compute_score(inputs[:1], format_weight=0.1)[0]["overall"] == pytest.approx(1.0)
    assert easyr1_compute_score(inputs[3:], format_weight=0.1)[0]["overall"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        easyr1_compute_score(inputs, format_weight=2)


def test_verl_compute_score():
    from openmedreason.train import verl_reward

    s = verl_reward.compute_score("openmedreason", GOOD, "B", {"options": OPTIONS})
    assert s == {"score": 2.0, "accuracy": 1.0, "format": 1.0}
    # options from extra_info bound the letters
    s = verl_compute_score("openmedreason", "<think>x</think><answer>E</answer>", "E", {"options": OPTIONS})
    assert s["accuracy"] == 0.0 and s["format"] == 0.0
    s = verl_compute_score(None, "<think>x</think><answer>A or B</answer>", "A", None)
    assert s["score"] == 0.0


def test_rewards_import_without_torch():
    code = (
        "import sys; import openmedreason.train.rewards, openmedreason.train.easyr1_reward, "
        "openmedreason.train.verl_reward, openmedreason.train.config; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_public_names():
    for name in rewards.__all__:
        assert callable(getattr(rewards, name))


def test_extra_reward_paths_are_checked():
    from openmedreason.train.config import ExtraReward, GRPORecipe
    from openmedreason.train.grpo import reward_functions

    with pytest.raises(ValueError, match="package.module:function"):
        ExtraReward(function="no_colon")
    recipe = GRPORecipe(output_dir="x", data=[], extra_rewards=[ExtraReward(function="openmedreason.train.rewards:format_reward", weight=0.5)])
    funcs, weights = reward_functions(recipe)
    assert [f.__name__ for f in funcs] == ["accuracy_reward", "format_reward", "format_reward"] and weights == [1.0, 1.0, 0.5]
    bad = GRPORecipe(output_dir="x", data=[], extra_rewards=[ExtraReward(function="openmedreason.train.rewards:nope")])
    with pytest.raises(ValueError, match="cannot be imported"):
        reward_functions(bad)
