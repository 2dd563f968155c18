"""The whole pipeline in llm mode (A2 → C2 through the LLM engine) on real inputs, against the
loopback fake server.

Every "LLM" reply here is scripted by tests/llm_pipeline_responder.py (fixed templates, a few
scripted bad replies chosen by a hash of the request): none of it is model output, and nothing
here says how a model would curate these records. What is tested is the machinery around the
calls: the funnel, the records and their provenance, reject codes, usage accounting, the cache
(reruns cost nothing), the budget stop and resume, the API key never reaching the run directory,
and the same result with two worker processes.

Inputs: the 19 real image + caption records of ``examples/corpus/medical`` and the real eLife
article ``elife-43154`` (3 figures), one source unit each, so ``shard_size = 1`` gives 2 shards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llm_fake_server import FakeOpenAIServer, fast_config
from llm_pipeline_responder import PipelineResponder
from openmedreason.config import RunConfig
from openmedreason.llm import BudgetExceeded
from openmedreason.report import build_report
from openmedreason.run import pipeline
from openmedreason.run.steps import StopRun

ROOT = Path(__file__).resolve().parents[1]
MEDICAL = ROOT / "examples" / "corpus" / "medical" / "metadata.jsonl"
ARTICLE = ROOT / "examples" / "corpus" / "articles" / "elife-43154"
SOURCES = [MEDICAL, ARTICLE]

LLM_STEPS = ("a2_text", "b1_tasks", "b2_mcq", "c1_trace", "c2_verify")
#: a recognisable fake key: it must reach the server and never the run directory
FAKE_KEY = "sk-omr-FAKE-test-key-7f3a9c1e5b2d4680"
OTHER_KEY = "sk-omr-FAKE-other-key-0d9e8c7b6a5f4321"
TRACE = re.compile(r"\A<think>\n(?P<think>.+)\n</think>\n<answer>(?P<letter>[A-E])</answer>\Z", re.S)

#: scripted bad replies (about one request in N of each kind; which ones is a hash of the request)
KNOBS = dict(
    a2_unsupported_every=10,
    b2_decline_every=6,
    b2_leak_every=9,
    b2_bad_json_every=7,
    c1_wrong_letter_every=8,
    c2_unsupported_every=12,
)


def config(server: FakeOpenAIServer, **llm: object) -> RunConfig:
    """llm mode, 2 shards, prices set so that the run has a cost (and a budget can stop it)."""
    # a generous timeout: timeouts are not under test here, and a retry on a loaded box would add a call
    settings = {"timeout_s": 30.0, **llm}
    endpoint = fast_config(server, price_input_per_mtok=1.0, price_output_per_mtok=1.0, **settings).model_dump()
    return RunConfig(engine="llm", shard_size=1, steps={"ingest": {"field_map": "medcorpus"}}, llm={"default": endpoint})


def rows(run: Path, step: str, kind: str = "kept") -> list[dict]:
    out: list[dict] = []
    for p in sorted((run / step).glob(f"{kind}-*.parquet")):
        out += pq.read_table(p).to_pylist()
    return sorted(out, key=lambda r: r["id"])


def ids(run: Path, step: str, kind: str = "kept") -> list[str]:
    return [r["id"] for r in rows(run, step, kind)]


def funnel(run: Path) -> dict:
    return json.loads((run / "funnel.json").read_text())


def check_funnel(fun: dict) -> None:
    """in = kept + Σ rejected for every step; what a step reads is what the previous one kept."""
    prev = None
    for name, s in fun["steps"].items():
        assert s["in"] == s["kept"] + sum(s["rejected"].values()), name
        if prev is not None:
            assert s["inputs"] == prev, name
        prev = s["kept"]


def calls_during(server: FakeOpenAIServer, fn, *args, **kwargs):
    before = server.chat_calls
    out = fn(*args, **kwargs)
    return out, server.chat_calls - before


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def responder() -> PipelineResponder:
    return PipelineResponder(**KNOBS)


@pytest.fixture(scope="module")
def server(responder):
    with FakeOpenAIServer(responder=responder, keep_requests=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def key_env():
    """The fake key in OMR_LLM_API_KEY (read by the default config) and in a second variable
    (named by ``api_key_env`` in one test), for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMR_LLM_API_KEY", FAKE_KEY)
        mp.setenv("OMR_TEST_OTHER_KEY", OTHER_KEY)
        yield


@pytest.fixture(scope="module")
def base(server, key_env, tmp_path_factory):
    """One complete llm-mode run, workers=1: (run dir, funnel, paid HTTP calls)."""
    run = tmp_path_factory.mktemp("llm") / "run"
    result, calls = calls_during(server, pipeline.run, SOURCES, run, config(server))
    return run, result, calls


# ------------------------------------------------------------------------------------ tests
def test_funnel_records_and_provenance(base, server):
    run, result, calls = base
    fun = funnel(run)
    assert fun["complete"] is True and list(fun["steps"]) == list(pipeline.PIPELINE)
    check_funnel(fun)
    steps = fun["steps"]
    assert steps["ingest"]["kept"] == 22  # 19 records + 3 single-panel figures
    assert steps["c2_verify"]["kept"] > 10
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "complete" and man["engine"] == "llm"
    assert calls > 0
    instances = rows(run, "c2_verify")
    assert len(instances) == steps["c2_verify"]["kept"]
    letters = set()
    for inst in instances:
        m = TRACE.match(inst["reasoning"])
        assert m, inst["reasoning"]
        assert m.group("letter") == inst["answer"] and inst["answer"] in "ABCDE"[: len(inst["options"])]
        letters.add(inst["answer"])
        assert inst["engine"] == "llm" and inst["draft"]
        assert all(c["passed"] for c in inst["checks"])
        # A2's two calls are on the panel; B1 → C2 on the instance; every one names model, template, cache key
        prov = inst["panel"]["provenance"] + inst["provenance"]
        assert [(p["step"], p["template"]) for p in prov] == [
            ("a2_text", "a2_text@1"), ("a2_text", "a2_context@1"), ("b1_tasks", "b1_tasks@1"), ("b2_mcq", "b2_mcq@1"),
            ("c1_trace", "c1_draft@1"), ("c1_trace", "c1_final@1"), ("c2_verify", "c2_verify@1"),
        ]
        for p in prov:
            assert p["engine"] == "llm" and p["model"] == "qwen-vl-2026-01-01", p
            assert re.fullmatch(r"[0-9a-f]{64}", p["cache_key"]), p
        assert len({p["cache_key"] for p in prov}) == len(prov)
        # A2's context was copied from the article text
        assert inst["panel"]["context"] and inst["panel"]["modality_group"]
    assert len(letters) >= 3  # scripted answer indexes vary and B2 balances the letters
    # A2 pre-filter: the short texts never reached the server
    assert steps["a2_text"]["rejected"]["a2.too_short"] == 7


def test_scripted_rejects_land_with_their_codes(base, responder):
    run, _, _ = base
    steps = funnel(run)["steps"]
    alt = {k: len(v) for k, v in responder.altered.items()}
    for kind in ("a2_context:unsupported", "b2_mcq:decline", "b2_mcq:leak", "b2_mcq:bad_json", "c1_final:wrong_letter", "c2_verify:unsupported"):
        assert alt.get(kind, 0) >= 1, (kind, alt)  # every scripted bad reply was exercised
    assert steps["a2_text"]["rejected"]["a2.context_unsupported"] == alt["a2_context:unsupported"]
    assert steps["b2_mcq"]["rejected"]["b2.invalid"] == alt["b2_mcq:decline"]
    assert steps["b2_mcq"]["rejected"]["b2.leak_answer"] == alt["b2_mcq:leak"]
    assert steps["c2_verify"]["rejected"] == {
        "c2.wrong_answer": alt["c1_final:wrong_letter"],
        "c2.unsupported": alt["c2_verify:unsupported"],
    }
    # only scripted rejects (and A2's length pre-filter): generic replies pass every check
    assert set(steps["a2_text"]["rejected"]) == {"a2.too_short", "a2.context_unsupported"}
    assert set(steps["b2_mcq"]["rejected"]) == {"b2.invalid", "b2.leak_answer"}
    assert steps["b1_tasks"]["rejected"] == {} and steps["c1_trace"]["rejected"] == {}
    # rejected records carry the reason and what was produced
    wrong = [r for r in rows(run, "c2_verify", "rejected") if r["reject_reason"] == "c2.wrong_answer"]
    for r in wrong:
        assert TRACE.match(r["reasoning"]).group("letter") != r["answer"]
        assert any(c["name"] == "answer_matches_gold" and not c["passed"] for c in r["checks"])
    leaks = [r for r in rows(run, "b2_mcq", "rejected") if r["reject_reason"] == "b2.leak_answer"]
    assert leaks and all(r["stem"] and r["options"] for r in leaks)


def test_usage_json_counts_every_call(base, responder):
    run, _, calls = base
    usage = json.loads((run / "usage.json").read_text())
    per_step = {s: d["total"] for s, d in usage["steps"].items()}
    # C1 is accounted under its two sub-steps
    assert set(per_step) == {"a2_text", "b1_tasks", "b2_mcq", "c1_draft", "c1_final", "c2_verify"}
    assert sum(d["calls"] for d in per_step.values()) == usage["total"]["calls"] == calls
    fun = funnel(run)["steps"]
    # A2: one verdict per panel past the pre-filter, one context call per panel that passed the verdict
    past_prefilter = fun["a2_text"]["inputs"] - fun["a2_text"]["rejected"]["a2.too_short"]
    assert per_step["a2_text"]["requests"] == 2 * past_prefilter
    assert per_step["b1_tasks"]["requests"] == fun["b1_tasks"]["inputs"]
    assert per_step["b2_mcq"]["requests"] == fun["b2_mcq"]["in"]  # one call per planned question
    # a non-JSON first reply costs one repair call (paid, not a new request)
    assert per_step["b2_mcq"]["calls"] == per_step["b2_mcq"]["requests"] + len(responder.altered["b2_mcq:bad_json"])
    assert per_step["c1_draft"]["requests"] == per_step["c1_final"]["requests"] == fun["c1_trace"]["inputs"]
    # C2's deterministic checks reject wrong letters before any call
    assert per_step["c2_verify"]["requests"] == fun["c2_verify"]["inputs"] - fun["c2_verify"]["rejected"]["c2.wrong_answer"]
    for d in per_step.values():
        assert d["prompt_tokens"] > 0 and d["completion_tokens"] > 0 and d["cost_usd"] > 0 and d["cache_hits"] == 0
    # the report reads the same numbers
    per = build_report(run)["per_instance"]
    assert per["instances"] == fun["c2_verify"]["kept"] and per["paid_calls"] == calls


def test_report_baseline_counts_every_llm_step(base):
    run, _, _ = base
    fun = funnel(run)["steps"]
    assert build_report(run)["per_instance"]["one_call_per_record"] == sum(fun[s]["inputs"] for s in LLM_STEPS)


def test_rerun_costs_nothing(base, server, tmp_path):
    run, result, calls = base
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    again, n = calls_during(server, pipeline.run, SOURCES, copy, config(server))
    assert n == 0 and again == result
    assert json.loads((copy / "manifest.json").read_text())["status"] == "complete"
    # C1 and C2 outputs lost: recomputed from the cache
    shutil.rmtree(copy / "c1_trace")
    shutil.rmtree(copy / "c2_verify")
    again, n = calls_during(server, pipeline.run, SOURCES, copy, config(server))
    assert n == 0 and again == result
    assert ids(copy, "c2_verify") == ids(run, "c2_verify")
    # every step output lost, only RUN/_llm left: the whole run again, still no paid call
    for d in copy.iterdir():
        if d.is_dir() and d.name != "_llm":
            shutil.rmtree(d)
    again, n = calls_during(server, pipeline.run, SOURCES, copy, config(server))
    assert n == 0 and again == result
    assert rows(copy, "c2_verify") == rows(run, "c2_verify")
    usage = json.loads((copy / "usage.json").read_text())
    assert usage["total"]["calls"] == calls and usage["total"]["cache_hits"] > 0  # earlier parts + cache hits


def test_budget_stops_then_resumes_without_paying_twice(base, server, tmp_path):
    run, result, calls = base
    out = tmp_path / "budget"
    before = server.chat_calls
    with pytest.raises(BudgetExceeded) as exc:
        pipeline.run(SOURCES, out, config(server), max_cost_usd=0.05)
    assert isinstance(exc.value, StopRun)
    stopped_calls = server.chat_calls - before
    assert 0 < stopped_calls < calls
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "stopped" and "budget" in man["stop_reason"]
    assert funnel(out)["complete"] is False
    assert json.loads((out / "usage.json").read_text())["total"]["cost_usd"] <= 0.05
    resumed, more = calls_during(server, pipeline.run, SOURCES, out, config(server), max_cost_usd=10.0)
    assert resumed == result  # the same funnel as the unbudgeted run
    assert stopped_calls + more == calls  # no request paid twice
    assert rows(out, "c2_verify") == rows(run, "c2_verify")
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_api_key_reaches_the_server_but_no_file(base, server):
    run, _, _ = base
    assert f"Bearer {FAKE_KEY}" in server.auth_seen
    for f in run.rglob("*"):
        if f.is_file():
            assert FAKE_KEY.encode() not in f.read_bytes(), f


def test_two_workers_give_the_same_result(base, server, tmp_path):
    """Two worker processes (spawned, each with its own engines), and the key named by
    api_key_env: the same kept records at every step as the one-process run."""
    run, result, calls = base
    out = tmp_path / "w2"
    res, n = calls_during(server, pipeline.run, SOURCES, out, config(server, api_key_env="OMR_TEST_OTHER_KEY"), workers=2)
    assert res == result and n == calls
    for step in pipeline.PIPELINE:
        assert ids(out, step) == ids(run, step), step
        assert ids(out, step, "rejected") == ids(run, step, "rejected"), step
    assert rows(out, "c2_verify") == rows(run, "c2_verify")
    assert f"Bearer {OTHER_KEY}" in server.auth_seen
    usage = json.loads((out / "usage.json").read_text())
    assert usage["total"]["calls"] == calls and usage["processes"] >= 2
    for f in out.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert OTHER_KEY.encode() not in data and FAKE_KEY.encode() not in data, f
    assert os.environ["OMR_TEST_OTHER_KEY"] == OTHER_KEY
