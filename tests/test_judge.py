"""PKR judges against the loopback fake server (tests/llm_fake_server.py).

Every judge verdict here is a scripted reply written in this file (or produced by the scripted
responder below from the request's own unit ids): it is not model output. The tests check what
the judge sends (calls per mode, where the image goes, temperature, seed) and what it does with
the replies (valid verdicts, malformed ones, failures, caching, the judge check).
"""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from llm_fake_server import FakeOpenAIServer, Reply, fast_config
from openmedreason.bench.items import BenchItem, RubricUnit
from openmedreason.evaluate.judge import LLMJudge, OfflineJudge, judge_check, response_for_judge
from openmedreason.llm import LLMCache, LLMEngine
from openmedreason.reasons import REASONS


def _png(color=(90, 90, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def U(uid: str, topic: str, claim: str) -> RubricUnit:
    return RubricUnit(unit_id=uid, topic=topic, claim=claim, presence_question=f"Does the response discuss {topic}?",
                      correctness_question=f"Does the response correctly state that {claim}?", source_quote="x y z", importance="core")


def item(i: int = 0, image: bool = True) -> BenchItem:
    return BenchItem(
        id=f"it{i}", benchmark="omr-bench", question=f"What is the most likely diagnosis (case {i})?",
        options=["Pneumonia", "Pulmonary oedema", "Pneumothorax", "Normal chest"], answer="A",
        image=_png((10 * i % 255, 80, 80)) if image else None, cluster=f"PMC{i // 2}",
        perception=[U("P1", "airspace opacities in both lower zones", "There are patchy airspace opacities in both lower lung zones."),
                    U("P2", "pleural spaces", "There is no pleural effusion or pneumothorax on this radiograph.")],
        knowledge=[U("K1", "lobar pneumonia appearance", "Bacterial pneumonia typically causes airspace consolidation with air bronchograms.")],
        rationale=[U("R1", "pneumonia as the diagnosis", "Bilateral patchy consolidation in a febrile patient points to pneumonia.")],
    )


RESPONSE = ("<think>The radiograph shows patchy airspace opacities in both lower zones with air bronchograms. "
            "Pneumonia typically causes airspace consolidation. In a febrile patient this points to pneumonia.</think>\n<answer>A</answer>")


def reply_all(body, p=2, c=1):
    """Scripted responder: one verdict per unit id listed in the request."""
    text = "\n".join(m["content"] if isinstance(m["content"], str) else "".join(x.get("text", "") for x in m["content"])
                     for m in body["messages"])
    ids = re.findall(r'"id": "([PKR]\d+)"', text)
    return Reply(json={"units": [{"unit_id": i, "p": p, "c": c, "note": "scripted"} for i in ids]})


def n_images(body) -> int:
    return sum(1 for m in body["messages"] if isinstance(m["content"], list) for part in m["content"] if part.get("type") == "image_url")


@pytest.fixture
def server():
    with FakeOpenAIServer(responder=reply_all) as srv:
        yield srv


@pytest.fixture
def engines(server, tmp_path):
    made = []

    def make(**cfg):
        e = LLMEngine(fast_config(server, **cfg), cache=LLMCache(tmp_path / "cache.sqlite"), env={})
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def test_reason_codes_registered():
    for code in ("judge.missing_unit", "judge.invalid_value", "judge.duplicate_unit", "judge.no_image"):
        assert code in REASONS


def test_per_axis_three_calls_image_only_in_perception(server, engines):
    judge = LLMJudge(engines(), mode="per_axis", seed=7)
    [verdicts] = judge.judge([(item(), RESPONSE)])
    assert server.chat_calls == 3
    by_prompt = {}
    for body in server.requests:
        system = body["messages"][0]["content"]
        by_prompt[system.split(".")[0]] = body
        assert body["temperature"] == 0.0 and body["seed"] == 7
        user = json.dumps(body["messages"][1])
        assert "Correct option: A" in user and "D. Normal chest" in user and "Final answer: A" in user and "<think>" not in user
    assert n_images(by_prompt["You grade the perception part of an answer to a medical image question"]) == 1
    assert n_images(by_prompt["You grade the medical knowledge in an answer to a medical image question"]) == 0
    assert n_images(by_prompt["You grade the reasoning of an answer to a medical image question"]) == 0
    assert [(v.axis, v.unit_id, v.p, v.c, v.error) for v in verdicts] == [
        ("perception", "P1", 2, 1, None), ("perception", "P2", 2, 1, None), ("knowledge", "K1", 2, 1, None), ("rationale", "R1", 2, 1, None)]
    d = judge.describe()
    assert d["mode"] == "per_axis" and d["prompts"] == {"judge_perception": "judge_perception@1", "judge_knowledge": "judge_knowledge@1",
                                                        "judge_rationale": "judge_rationale@1"}
    assert d["models_reported"] == ["qwen-vl-2026-01-01"]


def test_batched_one_call_with_image(server, engines):
    judge = LLMJudge(engines(), mode="batched")
    [verdicts] = judge.judge([(item(), RESPONSE)])
    assert server.chat_calls == 1 and n_images(server.requests[0]) == 1
    assert '"axis": "knowledge"' in json.dumps(server.requests[0]["messages"][1]).replace('\\"', '"')
    assert len(verdicts) == 4 and all(v.p == 2 and v.c == 1 for v in verdicts)
    assert judge.describe()["prompts"] == {"judge_batched": "judge_batched@1"}


def test_separate_image_engine_gets_only_perception(tmp_path):
    with FakeOpenAIServer(responder=reply_all) as text_srv, FakeOpenAIServer(responder=reply_all) as vlm_srv:
        text = LLMEngine(fast_config(text_srv), env={})
        vlm = LLMEngine(fast_config(vlm_srv, model="vlm"), env={})
        try:
            LLMJudge(text, image_engine=vlm).judge([(item(0), RESPONSE), (item(1), RESPONSE)])
        finally:
            text.close()
            vlm.close()
        assert text_srv.chat_calls == 4 and vlm_srv.chat_calls == 2
        assert all(n_images(b) == 1 for b in vlm_srv.requests) and all(n_images(b) == 0 for b in text_srv.requests)


def test_malformed_replies_become_unit_errors(server, engines):
    # perception: P2 missing, an unknown id, P1 fine; knowledge: out-of-range p; rationale: two different verdicts for R1
    server.script(Reply(json={"units": [{"unit_id": "P1", "p": 1, "c": -1, "note": "n"}, {"unit_id": "P9", "p": 2, "c": 1, "note": "?"}]}),
                  match="You grade the perception part")
    server.script(Reply(json={"units": [{"unit_id": "K1", "p": 3, "c": 1, "note": "n"}]}), match="You grade the medical knowledge")
    server.script(Reply(json={"units": [{"unit_id": "R1", "p": 2, "c": 1, "note": "a"}, {"unit_id": "R1", "p": 0, "c": 0, "note": "b"}]}),
                  match="You grade the reasoning")
    judge = LLMJudge(engines())
    [v] = judge.judge([(item(), RESPONSE)])
    assert [(x.unit_id, x.p, x.c, x.error) for x in v] == [
        ("P1", 1, -1, None), ("P2", None, None, "judge.missing_unit"), ("K1", None, None, "judge.invalid_value"),
        ("R1", None, None, "judge.duplicate_unit")]
    assert judge.stats["unknown_ids"] == 1 and judge.stats["error:judge.missing_unit"] == 1


def test_failed_call_marks_every_unit_of_that_call(server, engines):
    server.script(Reply(content="I think it is fine"), Reply(content="still prose"), match="You grade the medical knowledge")
    [v] = LLMJudge(engines()).judge([(item(), RESPONSE)])
    assert [x.error for x in v] == [None, None, "llm.invalid_output", None]


def test_no_image_and_empty_response_and_no_units(server, engines):
    bare = item(3).model_copy(update={"perception": [], "knowledge": [], "rationale": []})
    judge = LLMJudge(engines())
    v_noimg, v_empty, v_bare = judge.judge([(item(1, image=False), RESPONSE), (item(2), "  "), (bare, RESPONSE)])
    assert [x.error for x in v_noimg] == ["judge.no_image", "judge.no_image", None, None]
    assert all(x.p == 0 and x.c == 0 and x.error is None for x in v_empty)
    assert v_bare == []
    assert server.chat_calls == 2  # knowledge + rationale of the item without an image; nothing else


def test_p_zero_forces_c_zero_and_rerun_is_free(server, engines, tmp_path):
    server.responder = lambda body: reply_all(body, p=0, c=1)
    pairs = [(item(i), RESPONSE) for i in range(3)]
    first = LLMJudge(engines()).judge(pairs)
    assert all(x.p == 0 and x.c == 0 for v in first for x in v)
    calls = server.chat_calls
    assert calls == 9
    again = LLMJudge(engines()).judge(pairs)  # a new engine on the same cache file: a rerun
    assert server.chat_calls == calls and again == first


def test_offline_judge_presence_levels_and_labels():
    j = OfflineJudge()
    it = item()
    full = "Patchy airspace opacities fill both lower lung zones. Bacterial pneumonia typically causes airspace consolidation with air bronchograms."
    [v_full] = j.judge([(it, full)])
    [v_none] = j.judge([(it, "The heart is of normal size.")])
    [v_some] = j.judge([(it, "There are opacities in the lower zones.")])
    assert j.name == "offline-lexical" and j.describe()["correctness"] == "unavailable" and j.describe()["model"] is None
    assert [x.p for x in v_full][:1] == [2] and v_full[2].p == 2
    assert all(x.p == 0 for x in v_none)
    assert v_some[0].p == 1
    assert all(x.c is None and x.error is None for x in v_full + v_none + v_some)


def test_response_for_judge_strips_markup():
    assert response_for_judge("<think>a b</think>\n<answer> C </answer>") == "a b\n\nFinal answer: C"


def test_judge_check_retest_bypasses_cache_and_compares_modes(server, engines):
    pairs = [(item(i), RESPONSE) for i in range(6)]
    judge = LLMJudge(engines())
    judge.judge(pairs)
    assert server.chat_calls == 18
    # the fresh (uncached) retest disagrees on presence for every knowledge unit
    server.responder = lambda body: reply_all(body, p=1, c=1) if "You grade the medical knowledge" in json.dumps(body) else reply_all(body)
    rep = judge_check(judge, pairs, sample=4, seed=1)
    assert rep["sample"] == 4
    # retest: 3 fresh calls per sampled item; modes: 1 batched call per item
    assert server.chat_calls == 18 + 12 + 4
    rt = rep["retest"]
    assert rt["all"]["units"] == 16 and rt["by_axis"]["knowledge"]["p_agreement"] == 0.0
    assert rt["by_axis"]["perception"]["p_agreement"] == 1.0 and rt["all"]["c_agreement"] == 1.0
    assert rep["modes"]["all"]["p_agreement"] == 1.0  # batched replies come from the default responder: p=2 everywhere
    assert rep["judge"]["mode"] == "per_axis"


def test_judge_check_offline_is_labelled_deterministic():
    rep = judge_check(OfflineJudge(), [(item(i), RESPONSE) for i in range(3)], sample=5)
    assert rep["sample"] == 3 and rep["retest"]["all"]["p_agreement"] == 1.0 and rep["retest"]["all"]["c_agreement"] is None
    assert rep["modes"] is None
