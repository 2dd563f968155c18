"""Spend limit, usage ledger and dry-run estimate.

* :class:`Budget`: ``--max-cost USD`` caps the paid spend of a run directory over all its
  invocations and worker processes. Each process keeps its own spend as one row of
  ``RUN/_llm/spend.sqlite`` (so no process overwrites another's) and reads the sum at most every
  ``refresh_s``. Before each paid call the engine reserves the call's estimated worst-case cost
  (prompt estimate + max output tokens); if spent + in flight + this call would pass the limit,
  :class:`BudgetExceeded` is raised, in-flight calls finish and are cached, and the executor stops
  cleanly. A later run with a higher ``--max-cost`` resumes: cached replies cost nothing.
  Overshoot across processes is bounded by what other processes have in flight and unflushed.
* :class:`UsageLedger`: per step and per model counters (requests, ok, rejects by reason, HTTP
  calls, retries, cache hits, tokens, cost, cost saved by the cache). Each process writes its own
  part ``RUN/_llm/usage-<host>-<pid>-<id>.json`` (atomically replaced with its cumulative totals);
  :func:`write_usage_summary` sums every part into ``RUN/usage.json``.
* :func:`estimate`: calls, tokens and cost of a list of requests (or of counts and average sizes)
  from the config's prices, before anything is spent; requests already in the cache count zero.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from openmedreason.run.steps import StopRun

if TYPE_CHECKING:  # pragma: no cover
    from openmedreason.llm.cache import LLMCache
    from openmedreason.llm.config import LLMConfig
    from openmedreason.llm.types import LLMRequest

LLM_DIR = "_llm"


def llm_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / LLM_DIR


class BudgetExceeded(StopRun):
    """The next paid call would take the run past ``--max-cost``. ``results`` (when raised by
    ``complete_many``) holds the finished results, ``None`` where a request did not run."""

    def __init__(self, spent_usd: float, limit_usd: float, needed_usd: float = 0.0, results: list | None = None) -> None:
        super().__init__(
            f"LLM budget reached: spent ${spent_usd:.4f} (+${needed_usd:.4f} for the next call) of --max-cost ${limit_usd:.4f}; "
            "finished work is kept and cached, rerun with a higher --max-cost to resume"
        )
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd
        self.needed_usd = needed_usd
        self.results = results

    def __reduce__(self) -> tuple:  # picklable across process pools (results dropped)
        return (BudgetExceeded, (self.spent_usd, self.limit_usd, self.needed_usd))


class Budget:
    """Shared spend cap. ``max_cost_usd=None`` only records spend (no limit)."""

    def __init__(self, max_cost_usd: float | None = None, path: str | Path | None = None, *, refresh_s: float = 0.5) -> None:
        self.max_cost_usd = max_cost_usd
        self.path = Path(path) if path is not None else None
        self.refresh_s = refresh_s
        self._token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._mine = 0.0  # this process's spend (all of it, flushed or not)
        self._flushed_mine = 0.0
        self._others = 0.0  # other processes' spend at the last refresh
        self._reserved = 0.0
        self._refreshed = 0.0
        self._con: sqlite3.Connection | None = None
        if self.path is not None:
            from openmedreason.llm.cache import connect_sqlite

            self._con = connect_sqlite(self.path)
            self._con.execute("CREATE TABLE IF NOT EXISTS spend (process TEXT PRIMARY KEY, usd REAL NOT NULL, updated REAL NOT NULL)")
            self._refresh(force=True)

    @classmethod
    def for_run(cls, run_dir: str | Path, max_cost_usd: float | None = None) -> "Budget":
        return cls(max_cost_usd, llm_dir(run_dir) / "spend.sqlite")

    def _refresh(self, force: bool = False) -> None:
        if self._con is None:
            return
        now = time.monotonic()
        if not force and now - self._refreshed < self.refresh_s:
            return
        self._flush_locked()
        row = self._con.execute("SELECT COALESCE(SUM(usd), 0) FROM spend WHERE process != ?", (self._token,)).fetchone()
        self._others = float(row[0])
        self._refreshed = now

    def _flush_locked(self) -> None:
        if self._con is None or self._mine == self._flushed_mine:
            return
        self._con.execute(
            "INSERT INTO spend(process, usd, updated) VALUES (?, ?, ?) ON CONFLICT(process) DO UPDATE SET usd = excluded.usd, updated = excluded.updated",
            (self._token, self._mine, time.time()),
        )
        self._flushed_mine = self._mine

    @property
    def spent_usd(self) -> float:
        """Paid spend of the run so far (all processes, as of the last refresh, plus this one)."""
        with self._lock:
            self._refresh()
            return self._others + self._mine

    def reserve(self, estimate_usd: float) -> None:
        """Reserve a call's worst-case cost or raise :class:`BudgetExceeded`."""
        with self._lock:
            if self.max_cost_usd is not None:
                self._refresh()
                spent = self._others + self._mine
                if spent + self._reserved + estimate_usd > self.max_cost_usd:
                    raise BudgetExceeded(spent + self._reserved, self.max_cost_usd, estimate_usd)
            self._reserved += estimate_usd

    def settle(self, estimate_usd: float, actual_usd: float) -> None:
        """Release a reservation and record what the call actually cost."""
        with self._lock:
            self._reserved = max(0.0, self._reserved - estimate_usd)
            self._mine += actual_usd

    def add(self, actual_usd: float) -> None:
        """Record spend that had no reservation (batch results)."""
        self.settle(0.0, actual_usd)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        self.flush()
        if self._con is not None:
            self._con.close()
            self._con = None


# ---------------------------------------------------------------------------------- usage ledger
COUNTERS = (
    "requests",
    "ok",
    "calls",
    "retries",
    "cache_hits",
    "batch_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "saved_usd",
)


def _zero() -> dict[str, Any]:
    d: dict[str, Any] = {k: 0 for k in COUNTERS}
    d["cost_usd"] = 0.0
    d["saved_usd"] = 0.0
    d["rejected"] = {}
    return d


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for k in COUNTERS:
        into[k] = into.get(k, 0) + other.get(k, 0)
    rej = into.setdefault("rejected", {})
    for r, n in other.get("rejected", {}).items():
        rej[r] = rej.get(r, 0) + n


class UsageLedger:
    """Per-process usage counters keyed by (step, model); ``run_dir=None`` keeps them in memory."""

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._lock = threading.Lock()
        self._data: dict[tuple[str, str], dict[str, Any]] = defaultdict(_zero)
        self._dirty = False
        name = f"usage-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.part_path = llm_dir(self.run_dir) / name if self.run_dir is not None else None

    def add(self, step: str, model: str, **counts: Any) -> None:
        """Add counters (names from :data:`COUNTERS`; ``reason=`` counts one reject)."""
        with self._lock:
            d = self._data[(step, model or "?")]
            reason = counts.pop("reason", None)
            for k, v in counts.items():
                d[k] += v
            if reason:
                d["rejected"][reason] = d["rejected"].get(reason, 0) + 1
            self._dirty = True

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {}
            for (step, model), d in self._data.items():
                out.setdefault(step, {})[model] = json.loads(json.dumps(d))
            return out

    def flush(self) -> None:
        if self.part_path is None or not self._dirty:
            return
        snap = self.snapshot()
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.part_path.with_name(self.part_path.name + ".tmp")
        tmp.write_text(json.dumps({"steps": snap}, indent=1, sort_keys=True))
        os.replace(tmp, self.part_path)
        self._dirty = False


def usage_totals(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum ledger snapshots (``{"steps": {step: {model: counters}}}``) into the usage.json shape."""
    total = _zero()
    steps: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for part in parts:
        for step, per_model in part.get("steps", {}).items():
            s = steps.setdefault(step, {"total": _zero(), "models": {}})
            for model, d in per_model.items():
                _merge(total, d)
                _merge(s["total"], d)
                _merge(s["models"].setdefault(model, _zero()), d)
                _merge(models.setdefault(model, _zero()), d)
    for d in [total, *models.values(), *(s["total"] for s in steps.values()), *(m for s in steps.values() for m in s["models"].values())]:
        d["cost_usd"] = round(d["cost_usd"], 6)
        d["saved_usd"] = round(d["saved_usd"], 6)
    return {"total": total, "steps": steps, "models": models}


def write_usage_summary(run_dir: str | Path) -> dict[str, Any]:
    """Merge every process's ledger part into ``RUN/usage.json`` and return it."""
    run_dir = Path(run_dir)
    parts = []
    for p in sorted(llm_dir(run_dir).glob("usage-*.json")):
        try:
            parts.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    summary = usage_totals(parts)
    summary["processes"] = len(parts)
    summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "usage.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    os.replace(tmp, run_dir / "usage.json")
    return summary


# ---------------------------------------------------------------------------------- estimate
CHARS_PER_TOKEN = 4.0
DEFAULT_OUTPUT_TOKENS = 512


def image_tokens(max_side: int, detail: str | None = None) -> int:
    """Rough prompt tokens of one image fitted into ``max_side`` (OpenAI's tile rule: 85 + 170 per
    512-px tile of the image scaled to fit 2048 and then 768 on its short side; square assumed)."""
    if detail == "low":
        return 85
    side = min(max_side, 2048, 768)
    tiles = math.ceil(side / 512) ** 2
    return 85 + 170 * tiles


def text_tokens(chars: int) -> int:
    return int(math.ceil(chars / CHARS_PER_TOKEN))


@dataclass
class Estimate:
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    images: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost_usd"] = round(self.cost_usd, 6)
        return d


def estimate(
    config: "LLMConfig",
    requests: Iterable["LLMRequest"] | None = None,
    *,
    n_calls: int = 0,
    avg_prompt_chars: float = 0.0,
    images_per_call: float = 0.0,
    output_tokens: int | None = None,
    cache: "LLMCache | None" = None,
) -> Estimate:
    """Estimate calls, tokens and cost before spending anything.

    Either pass ``requests`` (their text is measured; with ``cache``, requests already cached
    count as zero calls), or ``n_calls`` with the average prompt size and images per call (e.g.
    from the panel count). Output tokens per call default to ``min(max_tokens, 512)``; costs use the
    config's prices (times ``batch_discount`` when ``batch`` is on). It is an estimate: tokens are
    characters / 4 and images use OpenAI's tile rule.
    """
    out_tok = output_tokens if output_tokens is not None else min(config.max_tokens or DEFAULT_OUTPUT_TOKENS, DEFAULT_OUTPUT_TOKENS)
    discount = config.batch_discount if config.batch else 1.0
    est = Estimate(notes=[f"{CHARS_PER_TOKEN:g} characters per token; {out_tok} output tokens per call; images by OpenAI's tile rule"])
    img_tok = image_tokens(config.image_max_side, config.image_detail)
    if requests is not None:
        key_of = None
        if cache is not None and cache.read:
            from openmedreason.llm.engine import ImageError, request_key

            def key_of(r: "LLMRequest") -> str | None:
                try:
                    return request_key(config, r)
                except ImageError:
                    return None

        for r in requests:
            key = key_of(r) if key_of is not None else None
            if key is not None and cache is not None and cache.contains(key):
                est.cached += 1
                continue
            chars = sum(len(m.text) for m in r.messages)
            if r.response_model is not None and config.structured in ("json_object", "prompt"):
                chars += len(json.dumps(r.response_model.model_json_schema()))
            n_img = sum(len(m.images) for m in r.messages)
            n = int(r.overrides.get("n") or 1)
            est.calls += 1
            est.images += n_img
            est.prompt_tokens += text_tokens(chars) + n_img * img_tok
            est.completion_tokens += out_tok * n
    if n_calls:
        est.calls += n_calls
        est.images += int(round(n_calls * images_per_call))
        est.prompt_tokens += int(n_calls * (text_tokens(int(avg_prompt_chars)) + images_per_call * img_tok))
        est.completion_tokens += n_calls * out_tok
    est.cost_usd = config.cost(est.prompt_tokens, est.completion_tokens, discount=discount)
    return est
