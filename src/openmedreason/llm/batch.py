"""Batch mode: a step's requests through an OpenAI-style Batch API (half price), resumable.

Flow (each function persists its progress in a JSON state file, e.g. ``RUN/_llm/batches/<step>.json``,
written atomically after every remote action)::

    batch_submit(engine, requests, state_path)   # requests not cached and not already submitted
    batch_poll(engine, state_path)                # status of every submitted batch
    batch_collect(engine, state_path)             # finished outputs -> the response cache
    results = engine.complete_many(requests)      # zero calls for what the batches answered

or :func:`run_batch`, which does all four and waits, or :func:`complete_or_submit` (what
``engine.complete_many`` does in batch mode), which never waits: it raises
:class:`BatchPending` while requests are in flight remotely. A crash anywhere resumes without
resubmitting: each chunk is recorded *before* its file is uploaded (a token sent as batch
metadata), then with its file id, then with its batch id; on resume a chunk without a batch id is
matched to an existing remote batch by that token before anything is created.

Batch lines use the request's cache key as ``custom_id`` and the body the engine would send
(current structured mode and model-family adaptations). Results land in the same cache, priced
with ``batch_discount``; the usage ledger counts them as ``batch_requests`` with their cost, and
the budget records them. Lines that failed, and requests whose reply needs a repair call, go
through the normal path in ``complete_many``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from openmedreason.run.steps import Pending

from openmedreason.llm.budget import DEFAULT_OUTPUT_TOKENS, BudgetExceeded

if TYPE_CHECKING:  # pragma: no cover
    from openmedreason.llm.engine import LLMEngine
    from openmedreason.llm.types import LLMRequest, LLMResult

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ENDPOINT = "/v1/chat/completions"


class BatchPending(Pending):
    """Requests are waiting in submitted batches; the batches keep running remotely and a later
    call (a rerun, or the executor's next pass) collects them. ``results`` holds what was
    already answerable (None for pending requests); ``pending`` counts the others."""

    def __init__(self, message: str, results: list | None = None, pending: int = 0) -> None:
        super().__init__(message)
        self.results = results
        self.pending = pending

    def __reduce__(self) -> tuple:
        return (BatchPending, (str(self), None, self.pending))


@dataclass
class Chunk:
    token: str
    keys: list[str]
    templates: dict[str, str]
    input_file_id: str | None = None
    batch_id: str | None = None
    status: str = "preparing"
    output_file_id: str | None = None
    error_file_id: str | None = None
    collected: bool = False
    stored: int = 0
    failed: int = 0
    failed_keys: list[str] = field(default_factory=list)
    estimate_usd: float = 0.0


@dataclass
class BatchState:
    step: str
    model: str
    chunks: list[Chunk] = field(default_factory=list)
    version: int = 1

    @classmethod
    def load(cls, path: Path) -> "BatchState | None":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return cls(raw["step"], raw["model"], [Chunk(**c) for c in raw.get("chunks", [])], raw.get("version", 1))

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        os.replace(tmp, path)

    def pending_keys(self) -> set[str]:
        return {k for c in self.chunks if not c.collected for k in c.keys}

    def failed_keys(self) -> set[str]:
        """Keys whose batch line failed: they take the live path, never a new batch."""
        return {k for c in self.chunks if c.collected for k in c.failed_keys}

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for c in self.chunks:
            counts[c.status] = counts.get(c.status, 0) + 1
        return {
            "chunks": len(self.chunks),
            "statuses": counts,
            "requests": sum(len(c.keys) for c in self.chunks),
            "pending_requests": len(self.pending_keys()),
            "stored": sum(c.stored for c in self.chunks),
            "failed": sum(c.failed for c in self.chunks),
            "done": all(c.collected for c in self.chunks),
        }


def _client(engine: "LLMEngine") -> Any:
    return engine._runtime().client.with_options(max_retries=5)


async def _abatch_submit(engine: "LLMEngine", requests: Sequence["LLMRequest"], state_path: Path) -> BatchState:
    from openmedreason.llm.engine import ImageError, _prepare

    if engine.cache is None or not engine.cache.write:
        raise ValueError("batch mode needs the response cache (results are delivered through it)")
    cfg = engine.config
    step = requests[0].step if requests else ""
    state = BatchState.load(state_path) or BatchState(step, cfg.model)
    client = _client(engine)
    preps = {}
    for r in requests:
        try:
            p = _prepare(cfg, r)
        except ImageError:
            continue  # rejected by the live path as llm.image_unreadable
        preps.setdefault(p.key, p)

    # 1. finish chunks a crash interrupted (recorded, but no batch id yet)
    for chunk in state.chunks:
        if chunk.batch_id is None and not chunk.collected:
            found = None
            seen = 0
            async for b in client.batches.list(limit=100):
                if (b.metadata or {}).get("omr_chunk") == chunk.token:
                    found = b
                    break
                seen += 1
                if seen >= 1000:  # a crash leaves at most a few minutes of new batches
                    break
            if found is not None:
                chunk.batch_id, chunk.status = found.id, found.status
                chunk.input_file_id = found.input_file_id
                state.save(state_path)
                continue
            missing = [k for k in chunk.keys if k not in preps]
            if chunk.input_file_id is None and missing:
                chunk.keys = [k for k in chunk.keys if k in preps]  # the rest will be submitted afresh later
            await _create(engine, client, state, chunk, preps, state_path)

    # 2. new chunks for requests neither cached nor pending
    skip = state.pending_keys() | state.failed_keys()
    todo = [p for k, p in preps.items() if k not in skip and not engine.cache.contains(k)]
    over_budget: BudgetExceeded | None = None
    fitting = []
    for p in todo:
        n = int(p.params.get("n", 1))
        est = cfg.cost(p.est_prompt_tokens, int(p.params.get("max_tokens") or DEFAULT_OUTPUT_TOKENS) * n, discount=cfg.batch_discount)
        try:
            engine.budget.reserve(est)
        except BudgetExceeded as exc:
            over_budget = exc
            break
        fitting.append((p, est))
    for i in range(0, len(fitting), cfg.batch_max_requests):
        part = fitting[i : i + cfg.batch_max_requests]
        chunk = Chunk(
            token=uuid.uuid4().hex,
            keys=[p.key for p, _ in part],
            templates={p.key: p.request.template_ref for p, _ in part},
            estimate_usd=sum(e for _, e in part),
        )
        state.chunks.append(chunk)
        state.save(state_path)  # recorded before anything remote happens
        await _create(engine, client, state, chunk, preps, state_path)
    for _, est in fitting:
        engine.budget.settle(est, 0.0)  # actual cost is recorded when collected
    if over_budget is not None:
        raise over_budget
    return state


async def _create(engine: "LLMEngine", client: Any, state: BatchState, chunk: Chunk, preps: dict, state_path: Path) -> None:
    from openmedreason.llm.engine import ImageError

    if chunk.input_file_id is None:
        lines = []
        for k in list(chunk.keys):
            try:
                body = engine._body(preps[k], engine._mode)
            except ImageError:
                chunk.keys.remove(k)
                continue
            lines.append(json.dumps({"custom_id": k, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False))
        data = ("\n".join(lines) + "\n").encode()
        f = await client.files.create(file=(f"omr-{state.step}-{chunk.token[:8]}.jsonl", data, "application/jsonl"), purpose="batch")
        chunk.input_file_id = f.id
        state.save(state_path)
    b = await client.batches.create(
        input_file_id=chunk.input_file_id,
        endpoint=ENDPOINT,
        completion_window=engine.config.batch_completion_window,
        metadata={"omr_chunk": chunk.token, "omr_step": state.step},
    )
    chunk.batch_id, chunk.status = b.id, b.status
    state.save(state_path)


async def _abatch_poll(engine: "LLMEngine", state_path: Path) -> dict[str, Any]:
    state = BatchState.load(state_path)
    if state is None:
        return BatchState("", "").summary()
    client = _client(engine)
    for chunk in state.chunks:
        if chunk.batch_id is None or chunk.collected or chunk.status in TERMINAL:
            continue
        b = await client.batches.retrieve(chunk.batch_id)
        chunk.status = b.status
        chunk.output_file_id = b.output_file_id
        chunk.error_file_id = b.error_file_id
    state.save(state_path)
    return state.summary()


async def _abatch_collect(engine: "LLMEngine", state_path: Path) -> int:
    state = BatchState.load(state_path)
    if state is None:
        return 0
    assert engine.cache is not None
    cfg = engine.config
    client = _client(engine)
    stored = 0
    for chunk in state.chunks:
        if chunk.collected or chunk.status not in TERMINAL:
            continue
        wanted = set(chunk.keys)
        stored_keys: set[str] = set()
        if chunk.output_file_id:
            content = await client.files.content(chunk.output_file_id)
            for line in content.content.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key = item.get("custom_id")
                resp = item.get("response") or {}
                if key not in wanted or resp.get("status_code") != 200:
                    continue
                try:
                    reply = engine._reply(resp.get("body"), 0, cfg.batch_discount)
                except Exception:
                    continue
                reply.batch = True
                engine.cache.put(
                    key,
                    reply.entry(),
                    step=state.step,
                    template=chunk.templates.get(key, ""),
                    model=reply.model,
                    prompt_tokens=reply.usage.prompt_tokens,
                    completion_tokens=reply.usage.completion_tokens,
                    cost_usd=reply.cost_usd,
                    batch=True,
                )
                engine.ledger.add(
                    state.step,
                    reply.model or cfg.model,
                    batch_requests=1,
                    prompt_tokens=reply.usage.prompt_tokens,
                    completion_tokens=reply.usage.completion_tokens,
                    cached_tokens=reply.usage.cached_tokens,
                    cost_usd=reply.cost_usd,
                )
                engine.budget.add(reply.cost_usd)
                stored_keys.add(key)
                chunk.stored += 1
                stored += 1
        chunk.failed_keys = sorted(wanted - stored_keys)
        chunk.failed = len(chunk.failed_keys)
        engine.cache.flush()  # results are durable before the chunk is marked collected
        chunk.collected = True
        state.save(state_path)
    engine.flush()
    return stored


def batch_submit(engine: "LLMEngine", requests: Sequence["LLMRequest"], state_path: str | Path) -> BatchState:
    """Submit the requests that are neither cached nor already in a pending batch."""
    return engine._run(_abatch_submit(engine, list(requests), Path(state_path)))


def batch_poll(engine: "LLMEngine", state_path: str | Path) -> dict[str, Any]:
    """Refresh every pending batch's status; returns a summary (``done`` when all are collected)."""
    return engine._run(_abatch_poll(engine, Path(state_path)))


def batch_collect(engine: "LLMEngine", state_path: str | Path) -> int:
    """Store finished batches' replies in the cache; returns how many were stored."""
    return engine._run(_abatch_collect(engine, Path(state_path)))


def _key_or_none(engine: "LLMEngine", request: "LLMRequest") -> str | None:
    from openmedreason.llm.engine import ImageError, request_key

    try:
        return request_key(engine.config, request)
    except ImageError:
        return None


def complete_or_submit(engine: "LLMEngine", requests: Sequence["LLMRequest"], state_path: str | Path) -> list["LLMResult"]:
    """Batch mode for a step's batch of requests, without waiting.

    Collects finished batches, submits the requests that are neither cached, nor pending, nor
    failed in an earlier batch, and raises :class:`BatchPending` while any request waits in a
    batch. When nothing waits, returns ``complete_many`` results: cache hits, plus live calls for
    failed batch lines and repair calls. An executor that meets ``BatchPending`` leaves the batch
    unfinished, goes on with the other shards (submitting theirs), then comes back after polling.
    """
    state_path = Path(state_path)
    if BatchState.load(state_path) is not None:
        batch_poll(engine, state_path)
        batch_collect(engine, state_path)
    assert engine.cache is not None
    keys = [_key_or_none(engine, r) for r in requests]
    missing = [r for r, k in zip(requests, keys) if k is not None and not engine.cache.contains(k)]
    if missing:
        state = batch_submit(engine, missing, state_path)
        waiting = state.pending_keys()
        n = sum(k in waiting for k in keys)
        if n:
            raise BatchPending(f"{n} of {len(requests)} requests wait in submitted batches ({state_path.name}); rerun when they finish", pending=n)
    return engine.complete_many_live(requests)


def run_batch(
    engine: "LLMEngine",
    requests: Sequence["LLMRequest"],
    state_path: str | Path,
    *,
    poll_s: float | None = None,
    timeout_s: float | None = None,
) -> list["LLMResult"]:
    """Submit, wait (polling every ``poll_s``, default ``batch_poll_s``), collect, then
    ``complete_many`` (cache hits, plus live calls for failed lines and repairs).
    Raises :class:`BatchPending` after ``timeout_s``; a rerun resumes without resubmitting."""
    state_path = Path(state_path)
    poll = engine.config.batch_poll_s if poll_s is None else poll_s
    batch_submit(engine, requests, state_path)
    start = time.monotonic()
    while True:
        batch_collect(engine, state_path)
        summary = batch_poll(engine, state_path)
        if all(c.collected or c.status in TERMINAL for c in (BatchState.load(state_path) or BatchState("", "")).chunks):
            batch_collect(engine, state_path)
            break
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise BatchPending(f"batches still running after {timeout_s:g}s: {summary}; rerun to resume", pending=summary["pending_requests"])
        time.sleep(poll)
    return engine.complete_many_live(requests)
