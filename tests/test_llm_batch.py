"""Batch mode against the loopback fake server's /v1/files and /v1/batches.

The fake server answers batch lines with the same scripted replies as live calls (not model
output). Checks: half price, results delivered through the cache (zero live calls), and resuming
after a crash without resubmitting.
"""

from __future__ import annotations

import json

import pytest
from openai.resources.batches import AsyncBatches
from pydantic import BaseModel

from llm_fake_server import Fail, FakeOpenAIServer, Reply, fast_config
from openmedreason.llm import (
    LLMRequest,
    Message,
    batch_collect,
    batch_poll,
    batch_submit,
    engine_for_step,
    run_batch,
    write_usage_summary,
)
from openmedreason.llm.batch import BatchPending, BatchState


class Trace(BaseModel):
    steps: list[str]
    answer: str


def req(i: int) -> LLMRequest:
    return LLMRequest("c1_trace", "c1_trace", "2", [Message.user(f"Explain panel {i}.")], Trace)


def engine(srv, run_dir, **kw):
    cfg = fast_config(srv, batch=True, price_input_per_mtok=10.0, price_output_per_mtok=10.0, **kw)
    return engine_for_step("c1_trace", None, run_dir, config=cfg, env={"OMR_LLM_API_KEY": "sk-batch-test"})


@pytest.fixture
def server():
    with FakeOpenAIServer(batch_polls=2) as srv:
        srv.responder = lambda body: Reply(json={"steps": ["look", "compare"], "answer": "B"})
        yield srv


def test_run_batch_end_to_end(server, tmp_path):
    state = tmp_path / "_llm" / "batches" / "c1_trace.json"
    eng = engine(server, tmp_path)
    results = run_batch(eng, [req(i) for i in range(5)], state, poll_s=0.01, timeout_s=10)
    eng.close()
    assert all(r.ok and r.cached for r in results)
    assert server.counts["batch_create"] == 1 and server.counts["batch_lines"] == 5 and server.chat_calls == 0
    lines = [json.loads(x) for x in next(iter(server._file_data.values())).decode().splitlines()]
    assert {x["custom_id"] for x in lines} == {r.cache_key for r in results}
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["body"]["response_format"]["type"] == "json_schema"
    full = 10.0 * (results[0].usage.prompt_tokens + results[0].usage.completion_tokens) / 1e6
    assert results[0].cost_usd == pytest.approx(full / 2)  # half price
    usage = write_usage_summary(tmp_path)
    assert usage["total"]["batch_requests"] == 5 and usage["total"]["calls"] == 0
    assert usage["total"]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in results))
    assert BatchState.load(state).summary()["done"]


def test_crash_between_submit_and_collect_does_not_resubmit(server, tmp_path):
    state = tmp_path / "state.json"
    reqs = [req(i) for i in range(4)]
    eng = engine(server, tmp_path)
    batch_submit(eng, reqs, state)
    eng.close()  # "crash": a new process picks up from the state file
    eng = engine(server, tmp_path)
    batch_submit(eng, reqs, state)
    assert server.counts["batch_create"] == 1
    assert not batch_poll(eng, state)["done"]
    batch_poll(eng, state)
    assert batch_collect(eng, state) == 4
    results = eng.complete_many(reqs)
    eng.close()
    assert all(r.ok for r in results) and server.chat_calls == 0
    # a third submit finds everything cached
    eng = engine(server, tmp_path)
    batch_submit(eng, reqs, state)
    eng.close()
    assert server.counts["batch_create"] == 1


@pytest.mark.parametrize("remote_created", [False, True], ids=["after-upload", "after-batch-create"])
def test_crash_around_batch_creation_does_not_resubmit(server, tmp_path, monkeypatch, remote_created):
    """Killed after the upload (the file is reused) or after the remote batch was created but
    before the state file learnt its id (the batch is found again by its token)."""
    state = tmp_path / "state.json"
    reqs = [req(i) for i in range(3)]
    real_create = AsyncBatches.create
    calls = {"n": 0}

    async def create_and_die_once(self, **kw):
        calls["n"] += 1
        b = await real_create(self, **kw) if remote_created or calls["n"] > 1 else None
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed around the batch creation")
        return b

    monkeypatch.setattr(AsyncBatches, "create", create_and_die_once)
    eng = engine(server, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        batch_submit(eng, reqs, state)
    eng.close()
    chunk = BatchState.load(state).chunks[0]
    assert chunk.input_file_id and chunk.batch_id is None
    eng = engine(server, tmp_path)
    batch_submit(eng, reqs, state)
    assert server.counts["files"] == 1  # the uploaded file was reused
    assert server.counts["batch_create"] == 1
    results = run_batch(eng, reqs, state, poll_s=0.01, timeout_s=10)
    eng.close()
    assert all(r.ok for r in results) and server.chat_calls == 0


def test_failed_lines_go_through_the_normal_path(server, tmp_path):
    server.script(Fail(500, "batch line failed"), match="panel 1.")
    eng = engine(server, tmp_path)
    results = run_batch(eng, [req(i) for i in range(3)], tmp_path / "s.json", poll_s=0.01, timeout_s=10)
    eng.close()
    assert all(r.ok for r in results)
    assert server.chat_calls == 1 and [r.cached for r in results] == [True, False, True]


def test_run_batch_times_out_and_resumes(tmp_path):
    with FakeOpenAIServer(batch_polls=10**6) as srv:
        srv.responder = lambda body: Reply(json={"steps": [], "answer": "A"})
        eng = engine(srv, tmp_path)
        with pytest.raises(BatchPending):
            run_batch(eng, [req(0)], tmp_path / "s.json", poll_s=0.01, timeout_s=0.05)
        srv.batch_polls = 0
        results = run_batch(eng, [req(0)], tmp_path / "s.json", poll_s=0.01, timeout_s=10)
        eng.close()
        assert results[0].ok and srv.counts["batch_create"] == 1 and srv.chat_calls == 0


def test_complete_many_in_batch_mode_submits_then_answers_from_the_cache(server, tmp_path):
    """What a step sees with batch = true: the first pass submits and raises BatchPending, a
    later pass (after the batches finished) gets every result with zero live calls."""
    reqs = [req(i) for i in range(4)]
    eng = engine(server, tmp_path)
    assert eng.batch_state_path == tmp_path / "_llm" / "batches" / "c1_trace.json"
    with pytest.raises(BatchPending) as info:
        eng.complete_many(reqs[:2])  # executor batch 1
    assert info.value.pending == 2
    with pytest.raises(BatchPending):
        eng.complete_many(reqs[2:])  # executor batch 2 (another shard)
    assert server.counts["batch_create"] == 2
    # the fake finishes a batch on its 2nd status poll; every call polls every pending batch
    results = eng.complete_many(reqs[:2])
    results += eng.complete_many(reqs[2:])
    eng.close()
    assert all(r.ok and r.cached for r in results)
    assert server.counts["batch_create"] == 2 and server.chat_calls == 0


def test_batch_mode_failed_lines_are_not_resubmitted(server, tmp_path):
    server.script(Fail(500, "line failed"), match="panel 0.")
    eng = engine(server, tmp_path)
    for _ in range(3):
        try:
            results = eng.complete_many([req(0), req(1)])
            break
        except BatchPending:
            continue
    eng.close()
    assert all(r.ok for r in results)
    assert server.counts["batch_create"] == 1 and server.chat_calls == 1
