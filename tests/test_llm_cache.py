"""The content-addressed response cache: what the key covers, stats/clear, --no-cache, durability.

Replies come from the scripted loopback fake server (tests/llm_fake_server.py), not from a model.
"""

from __future__ import annotations

import sqlite3

from pydantic import BaseModel

from llm_fake_server import FakeOpenAIServer, Reply, fast_config
from openmedreason.llm import LLMCache, LLMConfig, LLMEngine, LLMRequest, Message, cache_clear, cache_stats, engine_for_step, request_key


class Verdict(BaseModel):
    correct: bool
    reason: str


class Verdict2(BaseModel):
    correct: bool
    reason: str
    score: float


def req(text="q", version="1", model=Verdict, step="c2_verify", **kw) -> LLMRequest:
    return LLMRequest(step, "c2_verify", version, [Message.system("judge"), Message.user(text)], model, **kw)


BASE = LLMConfig(base_url="http://localhost:8000/v1", model="qwen")


def test_key_covers_everything_that_shapes_the_reply():
    k = request_key(BASE, req())
    assert request_key(BASE, req()) == k  # stable
    different = [
        request_key(BASE.model_copy(update={"model": "llava"}), req()),
        request_key(BASE.model_copy(update={"temperature": 0.7}), req()),
        request_key(BASE.model_copy(update={"max_tokens": 100}), req()),
        request_key(BASE.model_copy(update={"kind": "ollama"}), req()),
        request_key(BASE.model_copy(update={"structured": "json_object"}), req()),
        request_key(BASE.model_copy(update={"extra_body": {"top_k": 5}}), req()),
        request_key(BASE, req(version="2")),
        request_key(BASE, req(text="q2")),
        request_key(BASE, req(model=Verdict2)),
        request_key(BASE, req(model=None)),
        request_key(BASE, req(overrides={"seed": 3})),
    ]
    assert k not in different and len(set(different)) == len(different)


def test_key_ignores_host_key_and_bookkeeping():
    k = request_key(BASE, req())
    assert request_key(BASE.model_copy(update={"base_url": "http://other-host:9000/v1"}), req()) == k
    assert request_key(BASE.model_copy(update={"api_key_env": "X", "concurrency": 99}), req()) == k
    assert request_key(BASE, req(step="another_step", record_id="r1")) == k


def _run(srv, tmp_path, **kw):
    eng = engine_for_step("c2_verify", {"default": fast_config(srv).model_dump()}, tmp_path, env={"OMR_LLM_API_KEY": "k"}, **kw)
    try:
        return eng.complete_many([req(f"q{i}") for i in range(3)] + [req("free", model=None, step="c3_free")])
    finally:
        eng.close()


def test_stats_and_clear(tmp_path):
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(json={"correct": True, "reason": "matches the caption"}) if "response_format" in body else Reply(content="text")
        _run(srv, tmp_path)
        path = tmp_path / "_llm" / "cache.sqlite"
        st = cache_stats(path)
        assert st["entries"] == 4 and st["steps"]["c2_verify"]["entries"] == 3 and st["steps"]["c3_free"]["entries"] == 1
        assert st["models"]["qwen-vl-2026-01-01"]["entries"] == 4 and st["bytes"] > 0
        assert cache_clear(path, step="c3_free") == 1
        assert cache_stats(path)["entries"] == 3
        calls = srv.chat_calls
        _run(srv, tmp_path)
        assert srv.chat_calls == calls + 1  # only the cleared entry is asked again
        assert cache_clear(path) == 4 and cache_stats(path)["entries"] == 0
    assert cache_stats(tmp_path / "missing.sqlite")["exists"] is False


def test_no_cache_reads_and_writes_nothing(tmp_path):
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(json={"correct": True, "reason": "r"})
        _run(srv, tmp_path, no_cache=True)
        _run(srv, tmp_path, no_cache=True)
        assert srv.chat_calls == 8
        assert not (tmp_path / "_llm" / "cache.sqlite").exists()


def test_entries_are_durable_when_complete_many_returns(tmp_path):
    """Buffered writes are flushed at the end of every batch: another connection sees them."""
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(json={"correct": False, "reason": "r"})
        cache = LLMCache(tmp_path / "c.sqlite", flush_every=1000, flush_s=1000)
        eng = LLMEngine(fast_config(srv), cache=cache, env={})
        eng.complete_many([req("a"), req("b")])
        con = sqlite3.connect(tmp_path / "c.sqlite")
        assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 2
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = con.execute("SELECT step, template, model, prompt_tokens, completion_tokens FROM responses").fetchone()
        assert row[:3] == ("c2_verify", "c2_verify@1", "qwen-vl-2026-01-01") and row[3] > 0 and row[4] > 0
        con.close()
        eng.close()


def test_shared_cache_path_across_runs(tmp_path):
    shared = tmp_path / "shared.sqlite"
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(json={"correct": True, "reason": "r"})
        sections = {"default": fast_config(srv, cache_path=str(shared)).model_dump()}
        for run in ("run1", "run2"):
            eng = engine_for_step("c2_verify", sections, tmp_path / run, env={})
            eng.complete_many([req("same question")])
            eng.close()
        assert srv.chat_calls == 1
        assert not (tmp_path / "run1" / "_llm" / "cache.sqlite").exists()


def test_read_only_cache_is_respected(tmp_path):
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(json={"correct": True, "reason": "r"})
        eng = LLMEngine(fast_config(srv), cache=LLMCache(tmp_path / "c.sqlite", write=False), env={})
        eng.complete_many([req()])
        eng.complete_many([req()])
        eng.close()
        assert srv.chat_calls == 2


def test_cache_ignores_entries_without_choices(tmp_path):
    # an entry without choices (e.g. written by a future format) is not trusted
    cache = LLMCache(tmp_path / "c.sqlite")
    key = request_key(BASE, req())
    cache.put(key, {"model": "m", "choices": []}, step="s", template="t", model="m", prompt_tokens=0, completion_tokens=0, cost_usd=0)
    cache.flush()
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(json={"correct": True, "reason": "r"})
        eng = LLMEngine(BASE.model_copy(update={"base_url": srv.base_url}), cache=cache, env={})
        [r] = eng.complete_many([req()])
        eng.close()
        assert r.ok and r.calls == 1


def _open_at_once(folder: str, barrier, n: int, rounds: int) -> None:
    from openmedreason.llm.cache import LLMCache

    for r in range(rounds):
        barrier.wait(30)  # every process opens the same new file at the same moment
        cache = LLMCache(f"{folder}/cache-{r}.sqlite")
        cache.put(f"k{n}", {"text": "scripted"}, step="s", template="t", model="m", prompt_tokens=1, completion_tokens=1, cost_usd=0.0)
        cache.flush()


def test_processes_creating_the_same_cache_at_once(tmp_path):
    """Switching a new file to WAL races between processes; none may fail with 'database is locked'."""
    import multiprocessing

    from openmedreason.llm.cache import cache_stats

    ctx = multiprocessing.get_context("spawn")
    n, rounds = 4, 40
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_open_at_once, args=(str(tmp_path), barrier, k, rounds)) for k in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    assert all(cache_stats(tmp_path / f"cache-{r}.sqlite")["entries"] == n for r in range(rounds))
