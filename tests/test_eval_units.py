"""Pieces of the evaluation: open-answer scoring, the protocol's prompt and decoding settings, the
built-in baselines, the stop-string repair, open items through ``evaluate`` (a SLAKE-layout
sample) and the optional LLM extractor and open-answer judge (scripted replies from the loopback
fake server, not model output)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llm_fake_server import FakeOpenAIServer, Reply, request_text
from openmedreason.bench.items import BenchItem
from openmedreason.evaluate.open_answers import exact_match, extract_open, normalise
from openmedreason.evaluate.runners import (
    BlindRunner,
    Generation,
    Job,
    Protocol,
    ReferenceRunner,
    build_prompt,
    close_answer_tag,
    make_runner,
    prompt_hash,
)

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "corpus" / "medical" / "images"


def mcq(**kw) -> BenchItem:
    base = dict(id="x1", benchmark="omr-bench", question="Which imaging modality is shown?",
                options=["Plain radiography", "CT", "MRI", "Ultrasound"], answer="A", image=(IMAGES / "retina.jpg").read_bytes())
    base.update(kw)
    return BenchItem(**base)


@pytest.mark.parametrize("reply,answer,method", [
    ("<think>the lesion</think>\n<answer>Left lung</answer>", "Left lung", "answer_tag"),
    ("<think>x</think><answer> </answer>", None, "invalid:empty_tag"),
    ("\\boxed{liver}", "liver", "boxed"),
    ("Reasoning here.\nThe answer is: the spleen.", "the spleen", "answer_is"),
    ("MRI", "MRI", "short_reply"),
    ("", None, "none"),
    (" ".join(["word"] * 30), None, "none"),
])
def test_extract_open(reply, answer, method):
    ex = extract_open(reply)
    assert (ex.text, ex.method) == (answer, method)


def test_normalised_exact_match():
    assert normalise("The Left Lung.") == "left lung"
    assert exact_match("the left lung", "Left lung!") and exact_match("Yes.", "yes") and exact_match("True", "yes")
    assert exact_match("absent", "No") and not exact_match("yes", "no")
    assert not exact_match("", "") and not exact_match(None, "liver")
    assert not exact_match("left lung lesion", "left lung")  # exact, not containment


def test_prompt_protocol():
    it = mcq()
    system, user = build_prompt(it)
    assert "<think>" in system and "<answer>" in system
    assert "A. Plain radiography\nB. CT" in user and "letter" in user
    op = BenchItem(id="o1", benchmark="slake", kind="open", question="Which organ is abnormal?", answer="liver")
    _, user_open = build_prompt(op)
    assert user_open.startswith("Which organ is abnormal?") and "briefly" in user_open and "A." not in user_open
    assert prompt_hash(it) != prompt_hash(mcq(image=(IMAGES / "schistocytes.jpg").read_bytes()))
    assert prompt_hash(it) == prompt_hash(mcq())
    greedy, sampled = Protocol(), Protocol(samples=4, seed=3)
    assert greedy.overrides(0) == {"seed": 0, "temperature": 0.0}
    assert sampled.overrides(2) == {"seed": 5, "temperature": 1.2, "top_p": 0.95, "stop": ["</answer>"]}


def test_close_answer_tag():
    assert close_answer_tag("<think>x</think>\n<answer>B", "stop") == ("<think>x</think>\n<answer>B</answer>", True)
    assert close_answer_tag("<answer>B</answer>", "stop") == ("<answer>B</answer>", False)
    assert close_answer_tag("<think>cut <answer>B", "length") == ("<think>cut <answer>B", False)  # truncated, not a stop
    assert close_answer_tag(None, "stop") == (None, False)


def test_builtins():
    it = mcq(reference_reasoning="<think>\nPerception: x.\n</think>\n<answer>A</answer>")
    ref = ReferenceRunner().generate([Job(it), Job(mcq(id="x2", answer="C"))], Protocol())
    assert ref[0].text == it.reference_reasoning and ref[1].text.endswith("<answer>C</answer>")
    # the blind baseline: word overlap with the stem, never the image
    it2 = mcq(question="Which imaging modality shows the lung?", options=["Bone scan", "Lung imaging modality", "Skin", "Eye"], answer="B")
    g = BlindRunner().generate([Job(it2), Job(it2, 1)], Protocol(samples=2))
    assert all(x.text.endswith("<answer>B</answer>") for x in g) and "image was not used" in g[0].text
    with pytest.raises(ValueError, match="unknown built-in"):
        make_runner("builtin:oracle", ".")


def test_scoring_never_credits_invalid_answers():
    from openmedreason.evaluate.run import score_response

    it = mcq(answer="B")
    for reply in ("<answer>B or C</answer>", "<answer>A, B</answer>", "<answer></answer>", "I cannot determine this.",
                  "<think>B looks likely, maybe", "<answer>F</answer>"):
        rec = score_response(it, Generation(text=reply, finish_reason="stop"))
        assert rec["extracted"] is None and rec["correct"] is False, reply
    assert score_response(it, Generation(text="<answer>B</answer>"))["correct"] is True
    failed = score_response(it, Generation(text=None, error="llm.request_failed"))
    assert failed["correct"] is False and failed["method"] == "no_response"


def make_slake(tmp_path: Path) -> Path:
    """A SLAKE-layout sample: test.json + imgs/, two open and two closed (yes/no) questions."""
    root = tmp_path / "slake"
    for k, name in enumerate(("bronchiolitis_chest_xray.jpg", "pulmonary_embolism_ctpa.jpg")):
        d = root / "imgs" / f"xmlab{k}"
        d.mkdir(parents=True)
        shutil.copyfile(IMAGES / name, d / "source.jpg")
    rows = [
        {"qid": 1, "img_id": 0, "img_name": "xmlab0/source.jpg", "question": "Which organ is shown?", "answer": "Lung",
         "answer_type": "OPEN", "q_lang": "en", "modality": "X-Ray"},
        {"qid": 2, "img_id": 0, "img_name": "xmlab0/source.jpg", "question": "Is the lung healthy?", "answer": "No",
         "answer_type": "CLOSED", "q_lang": "en", "modality": "X-Ray"},
        {"qid": 3, "img_id": 1, "img_name": "xmlab1/source.jpg", "question": "What modality is used?", "answer": "CT",
         "answer_type": "OPEN", "q_lang": "en", "modality": "CT"},
        {"qid": 4, "img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Does the picture contain the heart?",
         "answer": "Yes", "answer_type": "CLOSED", "q_lang": "en", "modality": "CT"},
    ]
    (root / "test.json").write_text(json.dumps(rows))
    return root


def test_open_items_exact_match_and_llm_judge_reported_separately(tmp_path):
    from openmedreason.evaluate.run import evaluate

    slake = make_slake(tmp_path)
    replies = {
        "Which organ is shown?": "<think>lungs fields</think>\n<answer>the lungs</answer>",  # judge: yes; exact match: no
        "Is the lung healthy?": "<think>opacities</think>\n<answer>B</answer>",
        "What modality is used?": "<think>axial slices</think>\n<answer>CT.</answer>",
        "Does the picture contain the heart?": "<think>mediastinum</think>\n<answer>A or B</answer>",
    }

    def respond(body):
        text = request_text(body)
        if "Candidate answer:" in text:  # the open-answer judge (scripted verdicts, keyed on the candidate)
            return Reply(json={"correct": "Candidate answer: the lungs" in text or "Candidate answer: CT." in text, "reason": "scripted"})
        for q, r in replies.items():
            if q in text:
                return Reply(content=r)
        return Reply(content="?")

    with FakeOpenAIServer(responder=respond) as server:
        cfg = {"eval": {"timeout_s": 5.0, "max_retries": 0}, "judge": {"base_url": server.base_url, "model": "judge-model", "max_retries": 0}}
        res = evaluate(slake, "medvlm", tmp_path / "ev", base_url=server.base_url, config=cfg, judge="auto", env={})
    lines = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "ev" / "items.jsonl").read_text().splitlines()}
    assert lines["slake:1"]["kind"] == "open" and lines["slake:1"]["correct"] is False
    assert lines["slake:1"]["open_llm_judge"]["correct"] is True
    assert lines["slake:3"]["correct"] is True  # "CT." normalises to "ct"
    assert lines["slake:2"]["correct"] is True and lines["slake:4"]["extracted"] is None
    assert res["open"]["exact_match"]["mean"] == pytest.approx(0.5)
    assert res["open"]["llm_judge"]["mean"] == pytest.approx(1.0)
    assert res["closed"]["acc_strict"]["mean"] == pytest.approx(0.5)
    assert res["accuracy"]["overall"]["mean"] == pytest.approx(0.5)  # the headline never uses the judge
    assert res["pkr"] is None  # no rubric in SLAKE
    assert set(res["accuracy"]["by_kind"]) == {"mcq", "open"}
    assert "LLM judge (separate figure)" in (tmp_path / "ev" / "report.md").read_text()


def test_llm_extractor_only_on_leftovers(tmp_path):
    from eval_bench_fixture import make_bench
    from openmedreason.bench.loaders import load_items
    from openmedreason.evaluate.run import evaluate

    bench = make_bench(tmp_path, 4, rubric=False)
    items = load_items(bench)
    stems = [it.question for it in items]
    replies = [
        f"<answer>{items[0].answer}</answer>",
        "I would go with the second one listed, I think.",  # no rule fires: the LLM extractor may read it
        "<answer>A or B</answer>",  # hedged: stays invalid, never sent to the extractor
        "Hmm.",
    ]

    def respond(body):
        text = request_text(body)
        if "commits to" in text:  # the extractor prompt
            return Reply(json={"letter": "B" if "second one" in text else "Z"})
        for s, r in zip(stems, replies):
            if s in text:
                return Reply(content=r)
        return Reply(content="?")

    with FakeOpenAIServer(responder=respond) as server:
        cfg = {"eval": {"max_retries": 0}, "extract": {"base_url": server.base_url, "model": "extractor", "max_retries": 0}}
        res = evaluate(bench, "medvlm", tmp_path / "ev", base_url=server.base_url, config=cfg, judge="none", env={},
                       llm_extractor=True)
        extractor_calls = [b for b in server.requests if b["model"] == "extractor"]
    assert len(extractor_calls) == 2
    ext = res["llm_extractor"]
    assert ext["n_attempted"] == 2 and ext["n_recovered"] == 1
    assert res["closed"]["acc_strict"]["mean"] == pytest.approx(1 / 4)  # strict figure untouched
    expected = (1 + (items[1].answer == "B")) / 4
    assert ext["accuracy_with_llm_extractor"]["mean"] == pytest.approx(expected)
