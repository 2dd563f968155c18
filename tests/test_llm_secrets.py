"""The API key never reaches a file: cache, usage, budget, batch state, logs, manifests.

A recognisable fake key is put in the environment, the engine runs through successes, retries,
errors that echo the key, a refusal, a repair and a batch against the loopback fake server (whose
replies are scripted, not model output), with DEBUG logging of every library into a file in the
run directory; then every file written is searched for the key.
"""

from __future__ import annotations

import json
import logging

from pydantic import BaseModel

from llm_fake_server import Fail, FakeOpenAIServer, Reply, fast_config
from openmedreason.llm import (
    LLMRequest,
    Message,
    cache_stats,
    engine_for_step,
    resolve_llm_config,
    run_batch,
    write_usage_summary,
)

KEY = "sk-omr-FAKE-SECRET-7f3a9c0d5e1b"


class Answer(BaseModel):
    answer: str


def req(text: str) -> LLMRequest:
    return LLMRequest("b2_mcq", "b2_mcq", "1", [Message.user(text)], Answer)


def test_api_key_is_absent_from_every_file_written(tmp_path, monkeypatch):
    monkeypatch.setenv("OMR_LLM_API_KEY", KEY)
    run = tmp_path / "run"
    run.mkdir()
    handler = logging.FileHandler(run / "omr.log")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with FakeOpenAIServer() as srv:
            srv.responder = lambda body: Reply(json={"answer": "B"})
            srv.script(Fail(429, "slow down", retry_after=0.01), Reply(json={"answer": "A"}), match="retry")
            srv.script(Fail(400, f"Incorrect API key provided: {KEY}"), match="echo")
            srv.script(Fail(500, f"upstream said {KEY}"), Fail(500, f"upstream said {KEY}"), match="five")
            srv.script(Reply(refusal=f"no ({KEY})"), match="refuse")
            srv.script(Reply(content=f"bad {KEY}"), Reply(json={"answer": "C"}), match="repair")
            sections = {"default": fast_config(srv, max_retries=1).model_dump(), "b2_mcq": {"temperature": 0.1}}
            cfg = resolve_llm_config("b2_mcq", sections)
            (run / "manifest.json").write_text(json.dumps({"llm": {"b2_mcq": cfg.public_dump()}}))

            eng = engine_for_step("b2_mcq", sections, run, max_cost_usd=10.0)
            results = eng.complete_many([req(t) for t in ("ok", "retry", "echo", "five", "refuse", "repair")])
            eng.close()
            details = [r.detail or "" for r in results]
            assert all(KEY not in d for d in details)
            assert results[2].reason == "llm.bad_request" and "***" in results[2].detail
            (run / "results.jsonl").write_text(
                "".join(json.dumps({"detail": r.detail, "reason": r.reason, "prov": r.provenance()}) + "\n" for r in results)
            )

            beng = engine_for_step("b2_mcq", {"default": fast_config(srv, batch=True).model_dump()}, run)
            run_batch(beng, [req(f"batch {i}") for i in range(3)], run / "_llm" / "batches" / "b2_mcq.json", poll_s=0.01, timeout_s=10)
            beng.close()
            write_usage_summary(run)
            (run / "cache_stats.json").write_text(json.dumps(cache_stats(run / "_llm" / "cache.sqlite")))
            assert f"Bearer {KEY}" in srv.auth_seen  # the key was really used
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()

    written = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"cache.sqlite", "spend.sqlite", "usage.json", "omr.log", "b2_mcq.json", "manifest.json"} <= names
    assert (run / "omr.log").stat().st_size > 0
    for p in written:
        data = p.read_bytes()
        assert KEY.encode() not in data, f"API key found in {p}"
        assert KEY[8:].encode() not in data, f"part of the API key found in {p}"
