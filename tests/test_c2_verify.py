"""C2 verification: deterministic checks first, then (LLM mode) one structured verdict.

Questions are the hand-written ones about the real panels of ``examples/corpus/medical`` (see
test_c1_trace.py). LLM verdicts come from the loopback fake server (tests/llm_fake_server.py):
they are scripted replies written in this file, not model output.
"""

from __future__ import annotations

import json
import pickle

import pytest

from llm_fake_server import FakeOpenAIServer, Reply, fast_config
from openmedreason.curate.c1 import C1Trace, instance_of
from openmedreason.curate.c2 import C2Verify
from openmedreason.records import Instance
from openmedreason.reasons import REASONS
from openmedreason.run.steps import RunContext
from test_c1_trace import medcorpus_questions

GOOD_THINK = (
    "The lung fields must be checked for the pattern and distribution of any opacity.\n\n"
    "Perception: Both lungs show hazy, ill-defined increased density through the mid and lower zones, with the vessels still "
    "visible through it; the heart size is normal and there is no pleural fluid.\n\n"
    "Interpretation and medical knowledge: Hazy density that does not hide the vessels reflects material in the airspaces and "
    "interstitium, and a bilateral distribution in an acutely ill patient fits an infectious pneumonia.\n\n"
    "Answer justification: The bilateral hazy opacities are best described as hazy infiltrates in both lung fields, option D."
)


def r04_instance(think: str = GOOD_THINK, letter: str = "D") -> Instance:
    q = next(q for q in medcorpus_questions() if q.id.endswith("R04|findings|short"))
    return instance_of(q, engine="llm", reasoning=f"<think>\n{think}\n</think>\n<answer>{letter}</answer>")


VERDICT_OK = {"source_consistent": True, "answer_justified": True, "useful": True, "issues": []}


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def llm_step(server, tmp_path, **config) -> C2Verify:
    return C2Verify({"engine": "llm", **config}).bind(RunContext(run_dir=tmp_path, llm={"default": fast_config(server).model_dump()}))


def test_codes_registered():
    for code in ("c2.unsupported", "c2.unjustified", "c2.not_useful"):
        assert code in REASONS


def test_offline_runs_deterministic_checks_only_and_says_so():
    res = C2Verify().process([r04_instance()])
    inst = res.kept[0]
    names = [c.name for c in inst.checks]
    assert names[:8] == ["format", "answer_matches_gold", "length", "absent_image_reference", "cites_source", "copies_caption",
                         "hedged", "elimination"]
    assert names[-1] == "llm_verification_skipped" and "deterministic checks only" in inst.checks[-1].detail
    assert all(c.passed for c in inst.checks)
    assert inst.provenance[-1].step == "c2_verify" and inst.provenance[-1].engine == "offline"


def test_rejected_records_carry_every_check():
    bad = r04_instance(GOOD_THINK + "\n\nThe caption confirms pneumonia, as seen in panel B.")
    res = C2Verify().process([bad])
    rej = res.rejected[0]
    assert rej.reason == "c2.absent_image_reference"  # the first failing check in the documented order
    failed = {c.name for c in rej.record.checks if not c.passed}
    assert failed == {"absent_image_reference", "cites_source"}


def test_offline_pipeline_c1_then_c2_on_real_panels():
    qs = medcorpus_questions()
    traces = C1Trace().process(qs)
    res = C2Verify().process(traces.kept)
    assert len(res.kept) + len(res.rejected) == len(traces.kept)
    total_rate = len(res.kept) / len(qs)
    print(f"offline C1 + C2 on medcorpus: {len(res.kept)}/{len(qs)} kept ({total_rate:.0%}); "
          f"C1 rejects {dict((r.reason, 1) for r in traces.rejected)}; C2 rejects {[r.reason for r in res.rejected]}")
    assert total_rate >= 0.8


def test_deterministic_rejects_cost_no_llm_call(server, tmp_path):
    step = llm_step(server, tmp_path)
    res = step.process([r04_instance(letter="A"), r04_instance("Too short.")])
    step.close()
    assert [r.reason for r in res.rejected] == ["c2.wrong_answer", "c2.too_short"]
    assert server.chat_calls == 0


@pytest.mark.parametrize(
    "verdict, code",
    [
        ({"source_consistent": False, "answer_justified": True, "useful": True, "issues": ["says heart size is normal; not stated"]}, "c2.unsupported"),
        ({"source_consistent": True, "answer_justified": False, "useful": True, "issues": ["conclusion not linked to findings"]}, "c2.unjustified"),
        ({"source_consistent": True, "answer_justified": True, "useful": False, "issues": ["repeats itself"]}, "c2.not_useful"),
        ({"source_consistent": False, "answer_justified": False, "useful": False, "issues": []}, "c2.unsupported"),
    ],
)
def test_llm_verdict_booleans_decide(server, tmp_path, verdict, code):
    """Scripted verdicts: the first false boolean (in schema order) names the reject code."""
    server.script(Reply(json=verdict))
    step = llm_step(server, tmp_path)
    res = step.process([r04_instance()])
    step.close()
    assert not res.kept
    rej = res.rejected[0]
    assert rej.reason == code
    if verdict["issues"]:
        assert rej.detail == verdict["issues"][0]
    llm_checks = {c.name: c.passed for c in rej.record.checks[-3:]}
    assert llm_checks == {"source_consistency": verdict["source_consistent"], "answer_justification": verdict["answer_justified"],
                          "utility": verdict["useful"]}
    assert rej.record.provenance[-1].template == "c2_verify@1"


def test_llm_verdict_keeps_and_records_provenance(server, tmp_path):
    """Scripted verdict: all true."""
    server.script(Reply(json=VERDICT_OK))
    step = llm_step(server, tmp_path)
    res = step.process([r04_instance()])
    step.close()
    inst = res.kept[0]
    assert [c.name for c in inst.checks][-3:] == ["source_consistency", "answer_justification", "utility"]
    assert all(c.passed for c in inst.checks) and "llm_verification_skipped" not in [c.name for c in inst.checks]
    prov = inst.provenance[-1]
    assert (prov.step, prov.engine, prov.template) == ("c2_verify", "llm", "c2_verify@1") and prov.model and prov.cache_key
    body = server.requests[0]
    assert body["response_format"]["type"] == "json_schema"
    assert set(body["response_format"]["json_schema"]["schema"]["properties"]) == {"source_consistent", "answer_justified", "useful", "issues"}
    user = body["messages"][1]["content"]
    user = user if isinstance(user, str) else "\n".join(p.get("text", "") for p in user)
    assert "image_url" not in json.dumps(body)  # no image by default
    assert "<<<BEGIN GROUND TRUTH, DO NOT CITE" in user and "<<<BEGIN REASONING TRACE" in user
    assert user.index("<<<BEGIN REASONING TRACE") < user.index("hazy infiltrates in both lung fields, option D") < user.index("<<<END REASONING TRACE>>>")
    assert "Correct option: D" in user


def test_llm_failure_rejects_with_llm_reason(server, tmp_path):
    """Scripted: not JSON, twice (reply and repair)."""
    server.script(Reply(content="looks fine to me"), Reply(content="still fine"))
    step = llm_step(server, tmp_path)
    res = step.process([r04_instance()])
    step.close()
    assert res.rejected[0].reason == "llm.invalid_output"
    assert len(res.rejected[0].record.checks) == 8  # the deterministic checks that did run


def test_verify_image_sends_the_image(server, tmp_path):
    server.script(Reply(json=VERDICT_OK))
    step = llm_step(server, tmp_path, verify_image=True)
    step.process([r04_instance()])
    step.close()
    assert "image_url" in json.dumps(server.requests[0])


def test_config_thresholds_and_pickling():
    step = C2Verify({"min_chars": 10, "max_chars": 400})
    assert step.process([r04_instance()]).rejected[0].reason == "c2.too_long"
    assert pickle.loads(pickle.dumps(step)).config == step.config
    assert C2Verify().fingerprint() != C2Verify({"engine": "llm"}).fingerprint()


def test_estimate(server, tmp_path):
    step = llm_step(server, tmp_path)
    est = step.estimate([r04_instance()] * 2, total=10)
    assert est["calls"] == 10 and est["images"] == 0 and server.chat_calls == 0
    assert C2Verify().estimate([r04_instance()], 10)["calls"] == 0
