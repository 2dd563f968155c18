"""LLM configuration: [llm.default] + [llm.<step>] + environment, key handling, endpoint kinds."""

from __future__ import annotations

import json
import tomllib

import pytest

from llm_fake_server import FakeOpenAIServer
from openmedreason.llm import LLMConfig, LLMConfigError, LLMEngine, LLMFatalError, LLMRequest, Message, resolve_llm_config

TOML = """
[llm.default]
base_url = "http://localhost:8000/v1"
model = "Qwen/Qwen2.5-VL-7B-Instruct"
temperature = 0.2
concurrency = 8
price_input_per_mtok = 0.1

[llm.c1_trace]
model = "o4-mini"
base_url = "https://api.openai.com/v1"
api_key_env = "MY_OPENAI_KEY"
reasoning_effort = "medium"
"""


def sections() -> dict:
    return tomllib.loads(TOML)["llm"]


def test_default_then_step_then_env_then_overrides():
    cfg = resolve_llm_config("b2_mcq", sections(), env={})
    assert cfg.model == "Qwen/Qwen2.5-VL-7B-Instruct" and cfg.temperature == 0.2 and cfg.concurrency == 8
    step = resolve_llm_config("c1_trace", sections(), env={})
    assert step.model == "o4-mini" and step.temperature == 0.2 and step.reasoning_effort == "medium"
    env = {"OMR_LLM_BASE_URL": "http://gpu-box:8001/v1", "OMR_LLM_MODEL": "llava"}
    e = resolve_llm_config("c1_trace", sections(), env=env)
    assert e.base_url == "http://gpu-box:8001/v1" and e.model == "llava"
    o = resolve_llm_config("c1_trace", sections(), env=env, concurrency=2, model=None)
    assert o.concurrency == 2 and o.model == "llava"


def test_no_sections_uses_defaults():
    cfg = resolve_llm_config("x", None, env={"OMR_LLM_MODEL": "m"})
    assert cfg.model == "m" and cfg.base_url is None and cfg.endpoint_kind == "openai"


def test_unknown_key_and_inline_key_are_errors():
    with pytest.raises(LLMConfigError, match="temprature"):
        resolve_llm_config("x", {"default": {"temprature": 0.1}}, env={})
    with pytest.raises(LLMConfigError, match="api_key_env"):
        resolve_llm_config("x", {"default": {"api_key": "sk-abc"}}, env={})


def test_key_is_read_from_the_environment_never_stored():
    env = {"OMR_LLM_API_KEY": "sk-omr", "OPENAI_API_KEY": "sk-openai", "MY_OPENAI_KEY": "sk-mine"}
    assert resolve_llm_config("b2_mcq", sections(), env=env).api_key(env) == "sk-omr"
    assert resolve_llm_config("b2_mcq", sections(), env={}).api_key({"OPENAI_API_KEY": "sk-openai"}) == "sk-openai"
    step = resolve_llm_config("c1_trace", sections(), env=env)
    assert step.api_key(env) == "sk-mine"
    dump = json.dumps(step.public_dump())
    assert "sk-" not in dump and "MY_OPENAI_KEY" in dump


@pytest.mark.parametrize(
    "url,kind",
    [
        (None, "openai"),
        ("https://api.openai.com/v1", "openai"),
        ("https://res.openai.azure.com/openai/v1/", "azure"),
        ("http://localhost:11434/v1", "ollama"),
        ("http://localhost:8000/v1", "openai-compatible"),
    ],
)
def test_endpoint_kind(url, kind):
    assert LLMConfig(base_url=url, model="m").endpoint_kind == kind


@pytest.mark.parametrize("model,reasoning", [("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True), ("gpt-5", True),
                                             ("openai/gpt-5-mini", True), ("gpt-4o", False), ("qwen2.5-vl", False), ("ollama3", False)])
def test_reasoning_family_from_name(model, reasoning):
    assert LLMConfig(model=model).is_reasoning is reasoning
    assert LLMConfig(model=model, family="chat").is_reasoning is False


def test_per_process_split():
    cfg = LLMConfig(model="m", concurrency=32, requests_per_minute=600, tokens_per_minute=1e6)
    p = cfg.per_process(4)
    assert (p.concurrency, p.requests_per_minute, p.tokens_per_minute) == (8, 150, 250000)
    assert cfg.per_process(1) is cfg


def test_cost():
    cfg = LLMConfig(model="m", price_input_per_mtok=2.0, price_output_per_mtok=8.0, price_cached_input_per_mtok=0.5)
    assert cfg.cost(1_000_000, 500_000) == pytest.approx(6.0)
    assert cfg.cost(1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.5)
    assert cfg.cost(1_000_000, 500_000, discount=0.5) == pytest.approx(3.0)


def test_openai_without_key_is_fatal_local_server_is_not():
    req = LLMRequest("s", "t", "1", [Message.user("hi")])
    eng = LLMEngine(LLMConfig(model="gpt-4o-mini"), env={})
    with pytest.raises(LLMFatalError, match="OMR_LLM_API_KEY"):
        eng.complete_many([req])
    eng.close()
    with FakeOpenAIServer() as srv:  # replies are scripted, not model output
        eng = LLMEngine(LLMConfig(base_url=srv.base_url, model="local"), env={})
        assert eng.complete_many([req])[0].ok
        eng.close()
        assert srv.auth_seen == {"Bearer EMPTY"}


def test_engine_needs_a_model():
    with pytest.raises(LLMConfigError):
        LLMEngine(LLMConfig())
