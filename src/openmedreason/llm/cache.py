"""Content-addressed response cache in SQLite (WAL).

The key (:func:`cache_key`) is the SHA-256 of a canonical JSON document holding everything that
determines a reply: endpoint kind, model, every request parameter, the messages (images as the
SHA-256 of their source bytes plus encoding settings), the response schema, the structured-output
mode and the prompt-template id@version. The base URL and the API key are not part of it (the
same model behind another host hits the same entries; the key is never written anywhere).

What is stored per entry: the reply (choices' content, refusal and finish reason, the model id the
server reported), token usage and cost, plus step / template / model columns for
``omr cache stats|clear``. Failed requests (``llm.request_failed``, ``llm.bad_request``) are not
stored, so a rerun retries them; refusals, empty and invalid replies are stored, so a rerun
reproduces them with zero calls.

Writes are buffered (at most ``flush_every`` entries or ``flush_s`` seconds) and flushed in one
transaction; the engine flushes at the end of every batch and on close, so a crash loses at most
the last few replies. Several processes may share one file (WAL, busy timeout).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    step TEXT NOT NULL,
    template TEXT NOT NULL,
    model TEXT,
    created REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    batch INTEGER NOT NULL DEFAULT 0,
    response TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_step ON responses(step);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def cache_key(material: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of the key material."""
    return hashlib.sha256(canonical_json({"cache_format": CACHE_FORMAT, **material}).encode()).hexdigest()


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A WAL-mode connection that several processes can open at once (cache, spend ledger).

    Switching a new file to WAL needs an exclusive lock, and SQLite does not always wait on the
    busy handler for it: two processes creating the same file at the same moment can get
    "database is locked" at once. WAL is persistent, so retry until one of them has set it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout=60000")
    deadline = time.monotonic() + 60.0
    while True:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    con.execute("PRAGMA synchronous=NORMAL")
    return con


class LLMCache:
    """One SQLite file. ``read=False`` (``--no-cache``) skips lookups; ``write=False`` stores nothing."""

    def __init__(self, path: str | Path, *, read: bool = True, write: bool = True, flush_every: int = 64, flush_s: float = 1.0) -> None:
        self.path = Path(path)
        self.read = read
        self.write = write
        self.flush_every = flush_every
        self.flush_s = flush_s
        self._lock = threading.Lock()
        self._pending: dict[str, tuple] = {}
        self._last_flush = time.monotonic()
        self._con = connect_sqlite(self.path)
        with self._lock:
            self._con.executescript(_SCHEMA)
            self._con.execute("INSERT OR IGNORE INTO meta(k, v) VALUES ('format', ?)", (str(CACHE_FORMAT),))

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry (``response`` decoded, plus ``cost_usd`` and ``batch``), or None."""
        if not self.read:
            return None
        with self._lock:
            row = self._pending.get(key)
            if row is None:
                row = self._con.execute("SELECT * FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        entry = json.loads(row[9])
        entry["cost_usd"] = row[7]
        entry["batch"] = bool(row[8])
        return entry

    def put(
        self,
        key: str,
        response: dict[str, Any],
        *,
        step: str,
        template: str,
        model: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        batch: bool = False,
    ) -> None:
        if not self.write:
            return
        row = (key, step, template, model, time.time(), prompt_tokens, completion_tokens, cost_usd, int(batch), canonical_json(response))
        with self._lock:
            self._pending[key] = row
            due = len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows = list(self._pending.values())
            self._last_flush = time.monotonic()
            if not rows:
                return
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.executemany("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._pending.clear()

    def contains(self, key: str) -> bool:
        with self._lock:
            if key in self._pending:
                return True
            return self._con.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                self._con.close()

    def __enter__(self) -> "LLMCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cache_stats(path: str | Path) -> dict[str, Any]:
    """Entries, size, tokens and cost of a cache file, in total and per step and per model."""
    path = Path(path)
    if not path.exists():
        return {"path": str(path), "exists": False, "entries": 0, "bytes": 0, "steps": {}, "models": {}}
    con = connect_sqlite(path)
    try:
        con.executescript(_SCHEMA)
        q = "SELECT {col}, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd), SUM(batch) FROM responses GROUP BY {col}"

        def group(col: str) -> dict[str, Any]:
            return {
                str(r[0]): {"entries": r[1], "prompt_tokens": r[2] or 0, "completion_tokens": r[3] or 0, "cost_usd": round(r[4] or 0.0, 6), "batch_entries": r[5] or 0}
                for r in con.execute(q.format(col=col))
            }

        total = con.execute("SELECT COUNT(*), SUM(cost_usd) FROM responses").fetchone()
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
        return {
            "path": str(path),
            "exists": True,
            "entries": total[0],
            "cost_usd": round(total[1] or 0.0, 6),
            "bytes": size,
            "steps": group("step"),
            "models": group("model"),
        }
    finally:
        con.close()


def cache_clear(path: str | Path, step: str | None = None) -> int:
    """Delete every entry (or only ``step``'s); returns how many were deleted."""
    path = Path(path)
    if not path.exists():
        return 0
    con = connect_sqlite(path)
    try:
        con.executescript(_SCHEMA)
        if step is None:
            n = con.execute("DELETE FROM responses").rowcount
        else:
            n = con.execute("DELETE FROM responses WHERE step = ?", (step,)).rowcount
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("VACUUM")
        return n
    finally:
        con.close()
