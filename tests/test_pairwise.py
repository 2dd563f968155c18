"""Pairwise preference against the loopback fake server (tests/llm_fake_server.py).

The verdicts are produced by a scripted responder in this file (it reads which response is shown
first and answers by a fixed rule per item): they are not model output. The tests check the
order-swap logic (a win needs both orders), the counts and rates, the bootstrap interval, errors,
caching and the refusal to run without an engine.
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from llm_fake_server import FakeOpenAIServer, Reply, fast_config
from openmedreason.bench.items import BenchItem
from openmedreason.evaluate.pairwise import compare_pairs, outcome
from openmedreason.llm import LLMCache, LLMEngine


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


# per item: which response the scripted judge prefers ("A", "B", "first" = always the first shown, "tie", "bad")
RULES = ["A", "A", "A", "B", "first", "tie", "bad", "A"]


def items() -> list[BenchItem]:
    return [BenchItem(id=f"q{i}", benchmark="omr-bench", question=f"Which finding is shown? [rule {i}]", options=["Mass", "Cyst", "Normal"],
                      answer="B", image=_png(), cluster=f"PMC{i // 2}") for i in range(len(RULES))]


def responder(body):
    text = json.dumps(body["messages"])
    rule = RULES[int(text.split("[rule ")[1].split("]")[0])]
    a_first = text.index("MODEL-A-TRACE") < text.index("MODEL-B-TRACE")
    if rule == "bad":
        return Reply(content="no verdict")
    if rule == "tie":
        v = "tie"
    elif rule == "first":
        v = "first"
    else:
        v = "first" if (rule == "A") == a_first else "second"
    return Reply(json={"verdict": v, "reason": "scripted"})


@pytest.fixture
def server():
    with FakeOpenAIServer(responder=responder) as srv:
        yield srv


def test_outcome_rules():
    assert outcome("first", "second") == "win"     # A preferred in both orders
    assert outcome("second", "first") == "loss"
    assert outcome("first", "first") == "tie"      # position bias: disagreement → tie
    assert outcome("tie", "second") == "tie"
    assert outcome(None, "first") == "error"


def test_compare_pairs_counts_rates_and_interval(server, tmp_path):
    its = items()
    a = [f"<think>MODEL-A-TRACE {i}</think>\n<answer>B</answer>" for i in range(len(its))]
    b = [f"<think>MODEL-B-TRACE {i}</think>\n<answer>A</answer>" for i in range(len(its))]
    eng = LLMEngine(fast_config(server), cache=LLMCache(tmp_path / "c.sqlite"), env={})
    try:
        res = compare_pairs(its, a, b, eng, seed=3, n_boot=500)
        calls = server.chat_calls
        again = compare_pairs(its, a, b, eng, seed=3, n_boot=500)
    finally:
        eng.close()
    # 2 calls per item (the "bad" item's replies are retried once each with the repair call)
    assert calls == 2 * len(its) + 2 and server.chat_calls == calls  # rerun: all cached
    assert again["items"] == res["items"]
    assert all(sum(1 for m in b_["messages"] for p in (m["content"] if isinstance(m["content"], list) else []) if p.get("type") == "image_url") == 1
               for b_ in server.requests[:4])
    assert (res["wins"], res["losses"], res["ties"], res["errors"]) == (4, 1, 2, 1)
    assert res["decided"] == 5 and res["judged"] == 7
    assert res["win_rate"] == pytest.approx(0.8)
    assert res["tie_rate"] == pytest.approx(2 / 7)
    assert res["position_consistency"] == pytest.approx(6 / 7)  # only the position-biased item disagrees
    lo, hi = res["win_rate_ci"]
    assert 0.0 <= lo <= 0.8 <= hi <= 1.0 and lo < hi
    rec = {r["id"]: r for r in res["items"]}
    assert rec["q4"]["outcome"] == "tie" and rec["q4"]["consistent"] is False
    assert rec["q3"]["outcome"] == "loss" and rec["q3"]["a_first"] == "second" and rec["q3"]["b_first"] == "first"
    assert rec["q6"]["outcome"] == "error" and rec["q6"]["errors"] == ["llm.invalid_output", "llm.invalid_output"]
    assert res["judge"]["prompt"] == "pairwise@1"


def test_needs_an_engine():
    with pytest.raises(ValueError, match="no offline pairwise judge"):
        compare_pairs(items()[:1], ["a"], ["b"], None)
