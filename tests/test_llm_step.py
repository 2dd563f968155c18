"""LLMStep inside the executor: the engine comes from the run context, the cache makes a
recomputed step free, and worker processes each build their own engine. Replies are scripted
by the loopback fake server (tests/llm_fake_server.py); they are not model output."""

from __future__ import annotations

from typing import Sequence

import pytest
from pydantic import BaseModel

from llm_fake_server import FakeOpenAIServer, Reply, fast_config
from openmedreason.llm import LLMRequest, Message
from openmedreason.llm.step import LLMStep
from openmedreason.records import Record
from openmedreason.run.executor import Shard, execute
from openmedreason.run.steps import Rejected, RunContext, StepConfig, StepResult


class Verdict(BaseModel):
    usable: bool


class Item(Record):
    text: str
    usable: bool | None = None
    llm: dict[str, str] = {}


class ToyConfig(StepConfig):
    template_version: str = "1"


class ToyJudge(LLMStep):
    name = "toy_judge"
    version = "1"
    Config = ToyConfig
    output = Item
    one_to_one = False  # first step: shard items are plain strings

    def process(self, batch: Sequence[str]) -> StepResult:
        items = [Item(id=t, text=f"caption {t}") for t in batch]
        results = self.complete(
            LLMRequest(self.name, "toy_judge", self.config.template_version, [Message.user(i.text)], Verdict, record_id=i.id)
            for i in items
        )
        out = StepResult()
        for item, r in zip(items, results):
            if r.ok and r.parsed.usable:
                out.kept.append(item.model_copy(update={"usable": True, "llm": r.provenance()}))
            else:
                out.rejected.append(Rejected(item, r.reason or "llm.invalid_output", detail=r.text))
        return out


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(json={"usable": True})
        yield srv


def shards() -> list[Shard]:
    return [Shard(index=s, items=tuple(f"p{s}-{i}" for i in range(3)), fingerprint=f"s{s}") for s in range(4)]


@pytest.mark.parametrize("workers", [1, 2])
def test_llm_step_in_executor_is_cached_and_provenanced(server, tmp_path, workers):
    # timeouts are not under test here: a loaded CI box must not add a retry (and a call)
    llm = {"default": fast_config(server, timeout_s=30.0).model_dump()}
    ctx = RunContext(run_dir=tmp_path, llm=llm, workers=workers)
    res = execute(tmp_path, [ToyJudge().bind(ctx)], shards(), workers=workers)
    assert res["steps"]["toy_judge"]["kept"] == 12
    assert server.chat_calls == 12
    # a new step version recomputes the step, but every request is answered by the cache
    class ToyJudge2(ToyJudge):
        version = "2"

    res = execute(tmp_path, [ToyJudge2().bind(ctx)], shards(), workers=1)
    assert res["steps"]["toy_judge"]["kept"] == 12 and server.chat_calls == 12
    # a new prompt-template version is a new request: paid again
    res = execute(tmp_path, [ToyJudge2({"template_version": "2"}).bind(ctx)], shards(), workers=1)
    assert server.chat_calls == 24


def test_llm_step_without_context_is_a_clear_error():
    with pytest.raises(RuntimeError, match="run context"):
        ToyJudge().process(["a"])
