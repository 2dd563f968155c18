"""A loopback fake of an OpenAI-compatible server, for tests and the overhead bench.

Everything this server "says" is scripted by the test that starts it: it is not a model and its
replies are not model output. Standard library only (an asyncio HTTP/1.1 server on 127.0.0.1,
run in a background thread, or as a subprocess with ``python tests/llm_fake_server.py``).

Endpoints:

* ``POST /v1/chat/completions``: answers with the next scripted :class:`Reply`, :class:`Fail` or
  :class:`Disconnect` (see :meth:`FakeOpenAIServer.script`), else ``FakeOpenAIServer.responder``.
* ``GET /v1/models``.
* ``POST /v1/files`` (multipart), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``.
* ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``: a batch
  completes after ``batch_polls`` retrievals; its lines are answered by the same script/responder.

Switches that imitate real servers: ``supports_json_schema=False`` answers 400 to a
``response_format`` of type ``json_schema`` (older vLLM / Ollama); a model whose name starts with
one of ``reasoning_prefixes`` answers 400 to ``temperature`` and to ``max_tokens`` (like OpenAI's
reasoning models).

Every request is counted (``counts["chat"]``, ``counts["batch_lines"]``, …) so tests can assert
"zero calls on rerun"; chat request bodies are kept in ``requests`` and request headers'
``authorization`` values in ``auth_seen``.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 408: "Request Timeout",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class Reply:
    """A scripted 200 answer. ``json`` (any JSON value) is serialised into the message content."""

    content: str | None = None
    json: Any = None
    refusal: str | None = None
    finish_reason: str = "stop"
    model: str | None = None
    usage: dict[str, int] | None = None
    delay: float = 0.0
    n: int | None = None  # number of identical choices (default: the request's n)


@dataclass
class Fail:
    """A scripted HTTP error, optionally with a ``Retry-After`` header (seconds)."""

    status: int = 500
    message: str = "scripted failure"
    retry_after: float | None = None
    delay: float = 0.0
    param: str | None = None


@dataclass
class Disconnect:
    """Close the connection without answering (a dropped connection)."""

    delay: float = 0.0


Behaviour = Reply | Fail | Disconnect


def request_text(body: dict[str, Any]) -> str:
    """All text parts of a chat request's messages, joined (what ``script(match=…)`` searches)."""
    out: list[str] = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out.extend(p.get("text", "") for p in c if isinstance(p, dict))
    return "\n".join(out)


@dataclass
class _Batch:
    obj: dict[str, Any]
    polls: int = 0


@dataclass
class FakeOpenAIServer:
    latency: float = 0.0
    model_name: str | None = None  # reported model id; default: the requested model + "-2026-01-01"
    supports_json_schema: bool = True
    reasoning_prefixes: tuple[str, ...] = ("o1", "o3", "o4", "gpt-5")
    batch_polls: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    keep_requests: bool = True
    responder: Callable[[dict[str, Any]], Behaviour] | None = None

    counts: Counter = field(default_factory=Counter)
    max_inflight: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth_seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._queue: deque[Behaviour] = deque()
        self._matched: list[tuple[str, deque[Behaviour]]] = []
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, Any]] = {}
        self._file_data: dict[str, bytes] = {}
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self.inflight = 0

    # ----------------------------------------------------------------- scripting
    def script(self, *behaviours: Behaviour, match: str | None = None) -> "FakeOpenAIServer":
        """Queue behaviours. With ``match``, they answer (in order) only requests whose message
        text contains ``match``, which keeps concurrent tests deterministic."""
        with self._lock:
            if match is None:
                self._queue.extend(behaviours)
            else:
                for m, q in self._matched:
                    if m == match:
                        q.extend(behaviours)
                        break
                else:
                    self._matched.append((match, deque(behaviours)))
        return self

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._matched.clear()
            self.counts.clear()
            self.requests.clear()
            self.max_inflight = 0

    @property
    def chat_calls(self) -> int:
        return self.counts["chat"]

    def _next(self, body: dict[str, Any]) -> Behaviour:
        with self._lock:
            if self._matched:
                text = request_text(body)
                for m, q in self._matched:
                    if q and m in text:
                        return q.popleft()
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(body)
        return Reply(content="ok")

    # ----------------------------------------------------------------- chat logic
    def _check_params(self, body: dict[str, Any]) -> Fail | None:
        rf = body.get("response_format") or {}
        if not self.supports_json_schema and rf.get("type") == "json_schema":
            return Fail(400, "response_format of type 'json_schema' is not supported by this server", param="response_format")
        model = str(body.get("model", ""))
        if model.startswith(self.reasoning_prefixes):
            if "temperature" in body and body["temperature"] not in (None, 1):
                return Fail(400, "Unsupported parameter: 'temperature' is not supported with this model.", param="temperature")
            if "max_tokens" in body:
                return Fail(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                 "Use 'max_completion_tokens' instead.", param="max_tokens")
        return None

    def completion(self, body: dict[str, Any], b: Reply, raw_len: int | None = None) -> dict[str, Any]:
        content = b.content
        if b.json is not None:
            content = json.dumps(b.json)
        n = b.n or int(body.get("n") or 1)
        prompt_tokens = (raw_len if raw_len is not None else len(json.dumps(body.get("messages", [])))) // 4
        completion_tokens = len(content or b.refusal or "") // 4 + 1
        usage = b.usage or {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens}
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if b.refusal is not None:
            message["refusal"] = b.refusal
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": b.model or self.model_name or f"{body.get('model', 'fake')}-2026-01-01",
            "choices": [{"index": i, "finish_reason": b.finish_reason, "message": message, "logprobs": None} for i in range(n)],
            "usage": usage,
        }

    def answer_chat(self, body: dict[str, Any], raw_len: int | None = None) -> tuple[Behaviour, int, dict[str, Any]]:
        """Decide the answer to one chat request: (behaviour, status, JSON body)."""
        bad = self._check_params(body)
        if bad is not None:
            return bad, bad.status, _error_body(bad)
        b = self._next(body)
        if isinstance(b, Reply):
            return b, 200, self.completion(body, b, raw_len)
        if isinstance(b, Fail):
            return b, b.status, _error_body(b)
        return b, 0, {}

    # ----------------------------------------------------------------- batch logic
    def _new_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = f"file-{next(self._ids)}"
        obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed"}
        self._files[fid] = obj
        self._file_data[fid] = data
        return obj

    def _run_batch(self, batch: dict[str, Any]) -> None:
        lines = self._file_data[batch["input_file_id"]].decode().splitlines()
        out, errors = [], []
        for line in lines:
            if not line.strip():
                continue
            item = json.loads(line)
            self.counts["batch_lines"] += 1
            body = item["body"]
            if self.keep_requests:
                self.requests.append(body)
            b, status, payload = self.answer_chat(body)
            if isinstance(b, Disconnect):
                errors.append({"id": f"err-{next(self._ids)}", "custom_id": item["custom_id"], "response": None,
                               "error": {"code": "server_error", "message": "dropped"}})
                continue
            out.append({"id": f"batch_req_{next(self._ids)}", "custom_id": item["custom_id"],
                        "response": {"status_code": status, "request_id": f"req_{next(self._ids)}", "body": payload},
                        "error": None})
        batch["output_file_id"] = self._new_file("".join(json.dumps(o) + "\n" for o in out).encode(), "output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._new_file("".join(json.dumps(o) + "\n" for o in errors).encode(), "errors.jsonl", "batch_output")["id"]
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())
        batch["request_counts"] = {"total": len(out) + len(errors), "completed": len(out), "failed": len(errors)}

    # ----------------------------------------------------------------- HTTP
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for ln in lines[1:]:
                    if ln:
                        k, _, v = ln.partition(":")
                        headers[k.strip().lower()] = v.strip()
                arrived = time.monotonic()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                if "authorization" in headers:
                    self.auth_seen.add(headers["authorization"])
                if "api-key" in headers:
                    self.auth_seen.add(headers["api-key"])
                result = await self._route(method, urlsplit(target).path, headers, body, arrived)
                if result is None:  # Disconnect
                    writer.close()
                    return
                status, ctype, payload, extra = result
                out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {ctype}",
                       f"Content-Length: {len(payload)}", "Connection: keep-alive"]
                out += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:  # pragma: no cover
                pass

    async def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes, arrived: float = 0.0):
        def js(obj: Any, status: int = 200, extra: dict[str, str] | None = None):
            return status, "application/json", json.dumps(obj).encode(), extra or {}

        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == "v1":
            parts = parts[1:]
        if method == "POST" and parts == ["chat", "completions"]:
            body = json.loads(raw)
            self.counts["chat"] += 1
            if self.keep_requests:
                self.requests.append(body)
            b, status, payload = self.answer_chat(body, len(raw))
            delay = self.latency + getattr(b, "delay", 0.0)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                if delay:  # a fixed latency: the reply leaves `delay` seconds after the request arrived
                    await asyncio.sleep(max(0.0, arrived + delay - time.monotonic()))
            finally:
                self.inflight -= 1
            if isinstance(b, Disconnect):
                return None
            extra = {}
            if isinstance(b, Fail) and b.retry_after is not None:
                extra["Retry-After"] = f"{b.retry_after:g}"
            return js(payload, status, extra)
        if method == "GET" and parts == ["models"]:
            self.counts["models"] += 1
            return js({"object": "list", "data": [{"id": self.model_name or "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]})
        if parts[:1] == ["files"]:
            self.counts["files"] += 1
            if method == "POST" and len(parts) == 1:
                fields = _multipart(headers.get("content-type", ""), raw)
                data, filename = fields.get("file", (b"", "upload"))
                purpose = fields.get("purpose", (b"batch", ""))[0].decode()
                return js(self._new_file(data, filename, purpose))
            if method == "GET" and len(parts) == 2 and parts[1] in self._files:
                return js(self._files[parts[1]])
            if method == "GET" and len(parts) == 3 and parts[2] == "content" and parts[1] in self._file_data:
                return 200, "application/octet-stream", self._file_data[parts[1]], {}
            return js({"error": {"message": "no such file"}}, 404)
        if parts[:1] == ["batches"]:
            self.counts["batches"] += 1
            if method == "POST" and len(parts) == 1:
                body = json.loads(raw)
                if body.get("input_file_id") not in self._files:
                    return js({"error": {"message": "unknown input file"}}, 400)
                bid = f"batch_{next(self._ids)}"
                obj = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                       "completion_window": body.get("completion_window", "24h"), "status": "validating",
                       "created_at": int(time.time()), "metadata": body.get("metadata"),
                       "output_file_id": None, "error_file_id": None,
                       "request_counts": {"total": 0, "completed": 0, "failed": 0}}
                self._batches[bid] = _Batch(obj)
                self.counts["batch_create"] += 1
                return js(obj)
            if method == "GET" and len(parts) == 1:
                return js({"object": "list", "data": [b.obj for b in self._batches.values()], "has_more": False,
                           "first_id": None, "last_id": None})
            if len(parts) >= 2 and parts[1] in self._batches:
                bt = self._batches[parts[1]]
                if method == "POST" and parts[2:] == ["cancel"]:
                    bt.obj["status"] = "cancelled"
                    return js(bt.obj)
                if method == "GET" and len(parts) == 2:
                    bt.polls += 1
                    if bt.obj["status"] in ("validating", "in_progress"):
                        if bt.polls >= self.batch_polls:
                            self._run_batch(bt.obj)
                        else:
                            bt.obj["status"] = "in_progress"
                    return js(bt.obj)
            return js({"error": {"message": "no such batch"}}, 404)
        return js({"error": {"message": f"no route {method} {path}"}}, 404)

    # ----------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "FakeOpenAIServer":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port, backlog=512))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            loop = self._loop

            async def shutdown() -> None:
                if self._server is not None:
                    self._server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                loop.stop()

            asyncio.run_coroutine_threadsafe(shutdown(), loop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _error_body(b: Fail) -> dict[str, Any]:
    return {"error": {"message": b.message, "type": "invalid_request_error" if b.status < 500 else "server_error",
                      "param": b.param, "code": None}}


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[bytes, str]]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    out: dict[str, tuple[bytes, str]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            out[str(name)] = (part.get_payload(decode=True) or b"", str(part.get_filename() or ""))
    return out


def fast_config(server: "FakeOpenAIServer", **overrides: Any) -> Any:
    """An :class:`~openmedreason.llm.LLMConfig` for ``server`` with test-sized timeouts and backoffs."""
    from openmedreason.llm import LLMConfig

    settings: dict[str, Any] = dict(
        base_url=server.base_url, model="qwen-vl", concurrency=4, connection_pools=1, timeout_s=2.0, max_retries=3,
        backoff_initial_s=0.01, backoff_max_s=0.05, retry_after_max_s=2.0,
    )
    settings.update(overrides)
    return LLMConfig(**settings)


def main() -> None:  # pragma: no cover - used by the bench as a separate process
    ap = argparse.ArgumentParser(description="Fake OpenAI-compatible server (scripted replies, not a model).")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every chat reply")
    ap.add_argument("--content", default='{"answer": "B", "confidence": 0.5}', help="fixed reply content")
    args = ap.parse_args()
    srv = FakeOpenAIServer(latency=args.latency, port=args.port, keep_requests=False,
                           responder=lambda body: Reply(content=args.content))
    srv.start()
    print(f"PORT {srv.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
