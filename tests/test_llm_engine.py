"""The LLM engine against a loopback fake OpenAI-compatible server.

Every reply in these tests is scripted by the test through ``tests/llm_fake_server.py``: it is
not model output. The tests check what the engine does with such replies: results, retries,
Retry-After, timeouts, the repair call, reject reasons, model-family adaptation, images, and zero
calls on a rerun.
"""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image
from pydantic import BaseModel

from llm_fake_server import Disconnect, Fail, FakeOpenAIServer, Reply, fast_config
from openmedreason.llm import (
    BAD_REQUEST,
    EMPTY_REPLY,
    IMAGE_UNREADABLE,
    INVALID_OUTPUT,
    REFUSAL,
    REQUEST_FAILED,
    TRUNCATED,
    LLMCache,
    LLMEngine,
    LLMFatalError,
    LLMRequest,
    Message,
)
from openmedreason.reasons import REASONS

KEY_ENV = {"OMR_LLM_API_KEY": "sk-test-engine"}


class MCQ(BaseModel):
    question: str
    options: list[str]
    answer: str


GOOD = {"question": "Which modality is shown?", "options": ["CT", "MRI", "X-ray", "US"], "answer": "A"}


def req(text: str = "panel 1", model: type[BaseModel] | None = MCQ, **kw) -> LLMRequest:
    return LLMRequest(
        step="b2_mcq",
        template="b2_mcq",
        template_version="1",
        messages=[Message.system("You write one multiple-choice question."), Message.user(text)],
        response_model=model,
        **kw,
    )


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def engine_factory(server, tmp_path):
    made: list[LLMEngine] = []

    def make(srv: FakeOpenAIServer | None = None, cache: bool = True, **cfg) -> LLMEngine:
        srv = srv or server
        eng = LLMEngine(
            fast_config(srv, **cfg),
            cache=LLMCache(tmp_path / "cache.sqlite") if cache else None,
            env=KEY_ENV,
        )
        made.append(eng)
        return eng

    yield make
    for e in made:
        e.close()


def test_reason_codes_registered():
    for code in (INVALID_OUTPUT, REFUSAL, EMPTY_REPLY, TRUNCATED, REQUEST_FAILED, BAD_REQUEST, IMAGE_UNREADABLE):
        assert code in REASONS and code.startswith("llm.")


@pytest.mark.parametrize("transport", ["direct", "sdk"])
def test_structured_reply_parsed(server, engine_factory, transport):
    """A scripted valid JSON reply is parsed into the response model, with provenance."""
    server.script(Reply(json=GOOD))
    eng = engine_factory(transport=transport, price_input_per_mtok=1.0, price_output_per_mtok=2.0)
    [r] = eng.complete_many([req()])
    assert r.ok and r.reason is None
    assert r.parsed == MCQ(**GOOD)
    assert r.model == "qwen-vl-2026-01-01"  # as the server reports it, not as configured
    assert r.calls == 1 and not r.cached
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.cost_usd == pytest.approx((r.usage.prompt_tokens * 1.0 + r.usage.completion_tokens * 2.0) / 1e6)
    assert r.provenance() == {"model": "qwen-vl-2026-01-01", "template": "b2_mcq@1", "cache_key": r.cache_key}
    assert len(r.cache_key) == 64
    sent = server.requests[0]
    rf = sent["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"]["additionalProperties"] is False
    assert set(rf["json_schema"]["schema"]["required"]) == {"question", "options", "answer"}
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 2048
    assert server.auth_seen == {"Bearer sk-test-engine"}


def test_rerun_makes_zero_calls(server, engine_factory):
    """A second engine over the same cache (a rerun / resumed run) sends nothing, whatever the
    first outcomes were (ok, refusal, invalid after repair)."""
    server.script(Reply(json=GOOD), match="ok-panel")
    server.script(Reply(refusal="I can't help with that."), match="refused-panel")
    server.script(Reply(content="not json"), Reply(content="still not json"), match="bad-panel")
    reqs = [req("ok-panel"), req("refused-panel"), req("bad-panel")]
    first = engine_factory().complete_many(reqs)
    assert [r.reason for r in first] == [None, REFUSAL, INVALID_OUTPUT]
    calls = server.chat_calls
    assert calls == 4  # 1 + 1 + (1 + repair)

    second = engine_factory().complete_many(reqs)
    assert server.chat_calls == calls
    assert [r.reason for r in second] == [None, REFUSAL, INVALID_OUTPUT]
    assert all(r.cached and r.calls == 0 for r in second)
    assert [r.cache_key for r in second] == [r.cache_key for r in first]
    assert second[0].parsed == first[0].parsed
    assert second[2].text == "still not json"
    assert second[0].usage == first[0].usage  # cached entries carry their usage


@pytest.mark.parametrize("transport", ["direct", "sdk"])
def test_retry_after_is_honoured(server, engine_factory, transport):
    server.script(Fail(429, "rate limited", retry_after=0.4), Reply(json=GOOD))
    eng = engine_factory(transport=transport)
    t0 = time.monotonic()
    [r] = eng.complete_many([req()])
    assert r.ok and r.retries == 1 and r.calls == 2
    assert time.monotonic() - t0 >= 0.4


def test_server_errors_retried_then_rejected_and_rerunnable(server, engine_factory):
    server.script(*[Fail(500, "boom")] * 4)  # max_retries=3: 4 attempts
    [r] = engine_factory().complete_many([req()])
    assert r.reason == REQUEST_FAILED and not r.ok
    assert r.calls == 4 and r.retries == 3
    assert "HTTP 500" in r.detail
    # not cached: the next run asks again
    server.script(Fail(503), Reply(json=GOOD))
    [r2] = engine_factory().complete_many([req()])
    assert r2.ok and r2.calls == 2 and server.chat_calls == 6


def test_slow_reply_times_out_and_is_retried(server, engine_factory):
    server.script(Reply(json=GOOD, delay=2.0), Reply(json=GOOD))
    [r] = engine_factory(timeout_s=0.3).complete_many([req()])
    assert r.ok and r.retries == 1


def test_timeouts_exhaust_retries(server, engine_factory):
    server.script(*[Reply(json=GOOD, delay=1.0)] * 2)
    [r] = engine_factory(timeout_s=0.2, max_retries=1).complete_many([req()])
    assert r.reason == REQUEST_FAILED and "no reply" in r.detail


def test_dropped_connection_is_retried(server, engine_factory):
    server.script(Disconnect(), Reply(json=GOOD))
    [r] = engine_factory().complete_many([req()])
    assert r.ok and r.retries == 1


def test_invalid_json_gets_one_repair_call(server, engine_factory):
    server.script(Reply(content="Sure! The question is about CT."), Reply(json=GOOD))
    [r] = engine_factory().complete_many([req()])
    assert r.ok and r.repaired and r.calls == 2
    repair = server.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! The question is about CT."}
    assert "not valid JSON" in repair[-1]["content"]


def test_schema_mismatch_repaired(server, engine_factory):
    server.script(Reply(json={"question": "q", "options": ["a"]}), Reply(json=GOOD))
    [r] = engine_factory().complete_many([req()])
    assert r.ok and r.repaired
    assert "answer" in server.requests[1]["messages"][-1]["content"]


def test_invalid_after_repair_is_rejected_with_raw_text(server, engine_factory):
    server.script(Reply(content="{broken"), Reply(content='{"question": 1}'))
    [r] = engine_factory().complete_many([req()])
    assert r.reason == INVALID_OUTPUT and not r.ok and r.parsed is None
    assert r.text == '{"question": 1}' and r.calls == 2
    assert "first reply" in r.detail


def test_fenced_and_thinking_replies_are_accepted(server, engine_factory):
    server.script(Reply(content="<think>CT, axial.</think>\n```json\n" + json.dumps(GOOD) + "\n```"))
    [r] = engine_factory().complete_many([req()])
    assert r.ok and r.calls == 1


@pytest.mark.parametrize(
    "reply,reason",
    [
        (Reply(refusal="I can't help with that."), REFUSAL),
        (Reply(content="x", finish_reason="content_filter"), REFUSAL),
        (Reply(content=""), EMPTY_REPLY),
        (Reply(content=None), EMPTY_REPLY),
        (Reply(content='{"question": "Which', finish_reason="length"), TRUNCATED),
    ],
)
def test_refusal_empty_truncated_have_their_own_reasons(server, engine_factory, reply, reason):
    server.script(reply)
    [r] = engine_factory().complete_many([req()])
    assert r.reason == reason and not r.ok
    assert r.calls == 1 and not r.repaired  # no repair call for these


def test_bad_request_is_not_retried(server, engine_factory):
    server.script(Fail(400, "This model's maximum context length is 8192 tokens."))
    [r] = engine_factory().complete_many([req()])
    assert r.reason == BAD_REQUEST and r.calls == 1


def test_auth_error_stops_the_run(server, engine_factory):
    server.script(Fail(401, "Incorrect API key provided"))
    with pytest.raises(LLMFatalError):
        engine_factory().complete_many([req(), req("other")])


def test_reasoning_models_get_their_parameters(engine_factory):
    with FakeOpenAIServer() as srv:
        srv.script(Reply(json=GOOD))
        eng = engine_factory(srv, model="o4-mini", reasoning_effort="high", max_tokens=4000)
        [r] = eng.complete_many([req()])
        assert r.ok and r.calls == 1
        body = srv.requests[0]
        assert "temperature" not in body and "max_tokens" not in body
        assert body["max_completion_tokens"] == 4000 and body["reasoning_effort"] == "high"


def test_unknown_reasoning_family_adapts_from_errors(engine_factory):
    """A model the name rule does not know: the 400s name the parameters, the engine adapts once."""
    with FakeOpenAIServer(reasoning_prefixes=("house-reasoner",)) as srv:
        srv.responder = lambda body: Reply(json=GOOD)
        eng = engine_factory(srv, model="house-reasoner-1")
        [r1] = eng.complete_many([req("a")])
        assert r1.ok and r1.calls == 3  # temperature refused, max_tokens refused, ok
        [r2] = eng.complete_many([req("b")])
        assert r2.ok and r2.calls == 1
        assert "temperature" not in srv.requests[-1] and "max_completion_tokens" in srv.requests[-1]


def test_json_schema_falls_back_to_json_mode(engine_factory):
    with FakeOpenAIServer(supports_json_schema=False) as srv:
        srv.responder = lambda body: Reply(json=GOOD)
        eng = engine_factory(srv)
        [r1, r2] = eng.complete_many([req("a"), req("b")])
        assert r1.ok and r2.ok
        last = srv.requests[-1]
        assert last["response_format"] == {"type": "json_object"}
        assert "JSON schema" in last["messages"][0]["content"] and '"options"' in last["messages"][0]["content"]


def test_free_text_and_several_choices(server, engine_factory):
    server.script(Reply(content="The answer is B."), Reply(content="B", n=3))
    eng = engine_factory()
    [r1] = eng.complete_many([req(model=None)])
    assert r1.ok and r1.text == "The answer is B." and r1.parsed is None
    [r2] = eng.complete_many([req("sample", model=None, overrides={"n": 3, "temperature": 1.0})])
    assert r2.ok and r2.texts == ["B", "B", "B"]
    assert server.requests[-1]["n"] == 3 and server.requests[-1]["temperature"] == 1.0


def test_concurrency_limit(engine_factory):
    with FakeOpenAIServer(latency=0.1) as srv:
        srv.responder = lambda body: Reply(json=GOOD)
        eng = engine_factory(srv, concurrency=3, connection_pools=2)
        results = eng.complete_many([req(f"p{i}") for i in range(12)])
        assert all(r.ok for r in results)
        assert srv.max_inflight == 3


def test_requests_per_minute_limit(engine_factory):
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(content="ok")
        eng = engine_factory(srv, requests_per_minute=120, concurrency=16)  # burst of 120, then 2/s
        t0 = time.monotonic()
        eng.complete_many([req(f"p{i}", model=None) for i in range(123)])
        assert time.monotonic() - t0 >= 1.0


def _png(w: int, h: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def test_images_go_as_downscaled_data_urls(server, engine_factory, tmp_path):
    big = tmp_path / "panel.png"
    big.write_bytes(_png(2000, 1000))
    small_jpeg = _jpeg(300, 200)
    server.script(Reply(json=GOOD))
    eng = engine_factory(image_max_side=512, image_detail="high")
    msg = Message.user("Two panels.", images=[big, small_jpeg])
    [r] = eng.complete_many([LLMRequest("b2_mcq", "b2_mcq", "1", [msg], MCQ)])
    assert r.ok
    parts = server.requests[0]["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "Two panels."}
    urls = [p["image_url"]["url"] for p in parts[1:]]
    assert urls[0].startswith("data:image/png;base64,") and urls[1].startswith("data:image/jpeg;base64,")
    assert parts[1]["image_url"]["detail"] == "high"
    im = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert im.size == (512, 256)
    assert base64.b64decode(urls[1].split(",", 1)[1]) == small_jpeg  # fits: sent as is


def test_image_bytes_are_part_of_the_key(server, engine_factory):
    eng = engine_factory()
    a = LLMRequest("s", "t", "1", [Message.user("x", images=[_png(64, 64)])])
    b = LLMRequest("s", "t", "1", [Message.user("x", images=[_png(64, 64, color=(0, 0, 0))])])
    assert eng.cache_key(a) != eng.cache_key(b)
    assert eng.cache_key(a) == eng.cache_key(LLMRequest("s", "t", "1", [Message.user("x", images=[_png(64, 64)])]))


def test_async_complete(server, engine_factory):
    import asyncio

    server.script(Reply(json=GOOD))
    eng = engine_factory()

    async def go():
        try:
            return await eng.complete(req())
        finally:
            await eng.aclose()

    r = asyncio.run(go())
    assert r.ok and r.parsed.answer == "A"


def test_list_models(server, engine_factory):
    assert engine_factory().list_models()


def test_identical_requests_in_flight_are_sent_once(engine_factory):
    with FakeOpenAIServer(latency=0.1) as srv:
        srv.responder = lambda body: Reply(json=GOOD)
        eng = engine_factory(srv, concurrency=8)
        results = eng.complete_many([req("same")] * 5 + [req("other")])
        assert all(r.ok for r in results) and srv.chat_calls == 2
        assert sum(r.calls for r in results) == 2


def test_unreadable_images_are_rejected_not_fatal(server, engine_factory, tmp_path):
    server.responder = lambda body: Reply(json=GOOD)
    eng = engine_factory()
    missing = LLMRequest("s", "t", "1", [Message.user("x", images=[tmp_path / "nope.png"])], MCQ)
    garbage = LLMRequest("s", "t", "1", [Message.user("x", images=[b"\x89PNG but not really"])], MCQ)
    r_missing, r_garbage, r_ok = eng.complete_many([missing, garbage, req()])
    assert r_missing.reason == IMAGE_UNREADABLE and "nope.png" in r_missing.detail
    assert r_garbage.reason == IMAGE_UNREADABLE and r_ok.ok
    assert server.chat_calls == 1
