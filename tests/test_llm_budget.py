"""Budgets, usage accounting and the dry-run estimate.

All replies come from the scripted loopback fake server (tests/llm_fake_server.py), not from a
model; prices are made up so that each scripted call costs about a cent.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any, Sequence

import pytest
from pydantic import BaseModel

from llm_fake_server import FakeOpenAIServer, Reply, fast_config
from openmedreason.llm import (
    Budget,
    BudgetExceeded,
    LLMCache,
    LLMConfig,
    LLMRequest,
    Message,
    engine_for_step,
    estimate,
    write_usage_summary,
)
from openmedreason.records import Record
from openmedreason.run.executor import Shard, execute
from openmedreason.run.steps import Rejected, Step, StepConfig, StepResult

PRICES = dict(price_input_per_mtok=100.0, price_output_per_mtok=100.0, max_tokens=50)


class Verdict(BaseModel):
    correct: bool


def req(i: int, step: str = "c2_verify") -> LLMRequest:
    return LLMRequest(step, "c2_verify", "1", [Message.user(f"Is statement {i} supported by the caption? " + "x" * 200)], Verdict)


def sections(srv: FakeOpenAIServer, **kw: Any) -> dict:
    return {"default": fast_config(srv, concurrency=1, **PRICES, **kw).model_dump()}


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: Reply(json={"correct": True})
        yield srv


def test_budget_stops_then_resumes_from_the_cache(server, tmp_path):
    reqs = [req(i) for i in range(10)]
    eng = engine_for_step("c2_verify", sections(server), tmp_path, max_cost_usd=0.05, env={})
    with pytest.raises(BudgetExceeded) as info:
        eng.complete_many(reqs)
    eng.close()
    done = [r for r in info.value.results if r is not None]
    assert 0 < len(done) < 10 and all(r.ok for r in done)
    assert server.chat_calls == len(done)
    spent = Budget.for_run(tmp_path).spent_usd
    assert 0 < spent <= 0.05
    assert spent == pytest.approx(sum(r.cost_usd for r in done))

    # same budget: nothing more can be spent, and nothing already paid is asked again
    eng = engine_for_step("c2_verify", sections(server), tmp_path, max_cost_usd=0.05, env={})
    with pytest.raises(BudgetExceeded):
        eng.complete_many(reqs)
    eng.close()
    assert server.chat_calls == len(done)

    # a higher budget resumes: only the missing requests are paid for
    eng = engine_for_step("c2_verify", sections(server), tmp_path, max_cost_usd=1.0, env={})
    results = eng.complete_many(reqs)
    eng.close()
    assert all(r.ok for r in results) and server.chat_calls == 10
    assert sum(r.cached for r in results) == len(done)

    usage = write_usage_summary(tmp_path)
    total = usage["total"]
    assert total["calls"] == 10 and total["cache_hits"] == 2 * len(done)
    assert total["cost_usd"] == pytest.approx(Budget.for_run(tmp_path).spent_usd, abs=1e-6)
    assert total["saved_usd"] > 0
    assert usage["steps"]["c2_verify"]["models"]["qwen-vl-2026-01-01"]["ok"] == 10 + 2 * len(done)  # 1st run, cached part of the 2nd, 3rd
    assert json.loads((tmp_path / "usage.json").read_text())["total"]["calls"] == 10


def test_budget_is_shared_between_processes(tmp_path):
    a = Budget.for_run(tmp_path, max_cost_usd=1.0)
    b = Budget.for_run(tmp_path, max_cost_usd=1.0)
    a.reserve(0.5)
    a.settle(0.5, 0.7)
    a.flush()
    b._refreshed = 0.0  # as if refresh_s had passed
    with pytest.raises(BudgetExceeded):
        b.reserve(0.4)
    b.reserve(0.2)
    assert Budget.for_run(tmp_path).spent_usd == pytest.approx(0.7)
    a.close()
    b.close()


def test_budget_exceeded_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(BudgetExceeded(1.5, 1.0, 0.1, results=[None])))
    assert isinstance(e, BudgetExceeded) and e.limit_usd == 1.0 and "--max-cost" in str(e)


def _worker(base_url: str, run_dir: str, offset: int) -> None:
    cfg = LLMConfig(base_url=base_url, model="qwen-vl", concurrency=2, **PRICES)
    eng = engine_for_step("c2_verify", None, run_dir, config=cfg, env={})
    eng.complete_many([req(offset + i) for i in range(5)])
    eng.close()


def test_usage_parts_from_several_processes_are_merged(server, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(server.base_url, str(tmp_path), k * 100)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    parts = list((tmp_path / "_llm").glob("usage-*.json"))
    assert len(parts) == 2
    usage = write_usage_summary(tmp_path)
    assert usage["processes"] == 2 and usage["total"]["requests"] == 10 and usage["total"]["calls"] == 10
    assert usage["total"]["cost_usd"] == pytest.approx(Budget.for_run(tmp_path).spent_usd, abs=1e-6)
    assert server.chat_calls == 10


# ------------------------------------------------------------------ with the step executor
class Claim(Record):
    text: str


class Judged(Record):
    text: str
    correct: bool
    llm: dict[str, str]


class JudgeConfig(StepConfig):
    base_url: str


class JudgeStep(Step):
    """A toy LLM step: how a real step uses the engine (one engine per process, reject reasons)."""

    name = "c2_verify"
    version = "1"
    Config = JudgeConfig
    output = Judged
    one_to_one = False  # first step: its inputs are shard items, not records
    run_dir: Path
    max_cost: float | None = None

    def process(self, batch: Sequence[Any]) -> StepResult:
        claims = [Claim(id=f"c{i}", text=f"claim {i}") for i in batch]
        eng = engine_for_step(self.name, sections_for(self.config.base_url), self.run_dir, max_cost_usd=self.max_cost, env={})
        try:
            results = eng.complete_many([req(int(c.id[1:])) for c in claims])
        finally:
            eng.close()
        out = StepResult()
        for c, r in zip(claims, results):
            if r.ok:
                out.kept.append(Judged(id=c.id, text=c.text, correct=r.parsed.correct, llm=r.provenance()))
            else:
                out.rejected.append(Rejected(Judged(id=c.id, text=c.text, correct=False, llm=r.provenance()), r.reason, detail=r.text))
        return out


def sections_for(base_url: str) -> dict:
    return {"default": {"base_url": base_url, "model": "qwen-vl", "concurrency": 1, **PRICES}}


def test_budget_stop_and_resume_through_the_executor(server, tmp_path):
    shards = [Shard(index=s, items=tuple(range(s * 4, s * 4 + 4)), fingerprint=f"s{s}") for s in range(3)]
    step = JudgeStep({"base_url": server.base_url})
    step.run_dir, step.max_cost = tmp_path, 0.07  # about 6 calls
    with pytest.raises(BudgetExceeded):
        execute(tmp_path, [step], shards, batch_size=4, first_batch=4)
    assert (tmp_path / "c2_verify" / "_markers" / "00000.done.json").exists()  # the finished shard is kept
    paid = server.chat_calls
    step.max_cost = 10.0
    funnel = execute(tmp_path, [step], shards, batch_size=4, first_batch=4)
    assert funnel["steps"]["c2_verify"]["kept"] == 12
    assert server.chat_calls == 12  # nothing paid twice
    assert paid < 12


# ------------------------------------------------------------------ estimate
def test_estimate_from_requests_and_counts(server, tmp_path):
    cfg = fast_config(server, price_input_per_mtok=1.0, price_output_per_mtok=4.0, max_tokens=300, image_max_side=1024)
    reqs = [LLMRequest("s", "t", "1", [Message.user("x" * 400, images=[b"\x89PNG fake"])]) for _ in range(3)]
    est = estimate(cfg, reqs)
    assert est.calls == 3 and est.images == 3
    assert est.prompt_tokens == 3 * (100 + 765)
    assert est.completion_tokens == 3 * 300
    assert est.cost_usd == pytest.approx((est.prompt_tokens * 1.0 + est.completion_tokens * 4.0) / 1e6)

    by_count = estimate(cfg, n_calls=1000, avg_prompt_chars=2000, images_per_call=1, output_tokens=200)
    assert by_count.calls == 1000 and by_count.prompt_tokens == 1000 * (500 + 765) and by_count.completion_tokens == 200_000
    assert estimate(cfg.model_copy(update={"batch": True}), n_calls=10, avg_prompt_chars=40).cost_usd == pytest.approx(
        estimate(cfg, n_calls=10, avg_prompt_chars=40).cost_usd / 2
    )


def test_estimate_counts_cached_requests_as_free(server, tmp_path):
    cache = LLMCache(tmp_path / "c.sqlite")
    cfg = fast_config(server, **PRICES)
    eng = engine_for_step("c2_verify", None, tmp_path, config=cfg.model_copy(update={"cache_path": str(tmp_path / "c.sqlite")}), env={})
    eng.complete_many([req(0), req(1)])
    eng.close()
    est = estimate(cfg, [req(i) for i in range(5)], cache=cache)
    assert est.cached == 2 and est.calls == 3
    cache.close()
