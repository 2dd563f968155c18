"""The LLM engine: every LLM step (curation, rubric, judging, evaluation) calls models through it.

Create one engine per step per process (:func:`engine_for_step` wires the run directory's cache,
budget and usage ledger), then::

    results = engine.complete_many([LLMRequest(...), ...])   # sync: a step's batch, concurrently
    result = await engine.complete(request)                    # async: one request

What happens to one request:

1. Its cache key is computed (:func:`request_key`; images as hashes, nothing is encoded yet).
   A cached reply is used as is: zero HTTP calls.
2. Otherwise the budget reserves the call's worst-case cost (:class:`~.budget.BudgetExceeded`
   when the run would pass ``--max-cost``), the concurrency semaphore and the requests/min and
   tokens/min limiters are passed, and the request goes out. The client is the official
   ``openai`` SDK (``AsyncOpenAI`` / ``AsyncAzureOpenAI``: base URL, authentication and default
   headers, ``/models``, files and batches). Chat calls take one of two transports
   (``LLMConfig.transport``): ``sdk``, the SDK's documented low-level ``client.post`` with a body
   serialised once; or ``direct`` (default), an ``httpx2`` client carrying the SDK client's URL and
   headers, which needs less client CPU per call (0.8–0.9 against 1.1–1.2 ms in
   ``bench/llm_overhead.py``). Requests are spread over ``connection_pools`` connection pools.
   Identical requests in flight are sent once.
3. 429 / 408 / 409 / 5xx, timeouts and connection errors are retried with exponential backoff and
   jitter; a ``Retry-After`` (or ``retry-after-ms``) header is honoured and pauses every request of
   the engine. After ``max_retries`` the result is ``llm.request_failed`` (not cached: a rerun
   tries again). 401/403/404 raise :class:`LLMFatalError` (configuration, not data).
4. Model-family differences are handled up front (reasoning models: no temperature/top_p,
   ``max_completion_tokens``) and on the fly: a 400 naming an unsupported parameter drops or
   renames it, a 400 on ``response_format`` falls back json_schema → json_object → prompt.
   Adaptations are remembered by the engine.
5. The reply is cached, then interpreted: refusal → ``llm.refusal``; no content →
   ``llm.empty_reply``; cut at the token limit → ``llm.truncated``; for a response model, invalid
   JSON or schema mismatch → one repair call (the reply and the error are sent back), then
   ``llm.invalid_output`` with the raw text kept.

The API key is read from the environment when the SDK client is created and is never logged,
cached or written; server error messages and replies that echo it are scrubbed.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai
from aiolimiter import AsyncLimiter

from openmedreason.llm.budget import DEFAULT_OUTPUT_TOKENS, Budget, BudgetExceeded, UsageLedger, image_tokens, llm_dir, text_tokens
from openmedreason.llm.cache import LLMCache, cache_key
from openmedreason.llm.config import LLMConfig, resolve_llm_config
from openmedreason.llm.images import data_url, image_key
from openmedreason.llm.structured import REPAIR_INSTRUCTION, REPAIR_VERSION, instruction, parse_reply, response_format, schema_json
from openmedreason.llm.types import (
    BAD_REQUEST,
    EMPTY_REPLY,
    IMAGE_UNREADABLE,
    INVALID_OUTPUT,
    REFUSAL,
    REQUEST_FAILED,
    TRUNCATED,
    LLMRequest,
    LLMResult,
    Usage,
)

log = logging.getLogger("openmedreason.llm")

_SAMPLING = ("temperature", "top_p")
_RETRY_STATUS = frozenset({408, 409, 425, 429})
_MAX_ADAPTATIONS = 4


class LLMFatalError(RuntimeError):
    """The endpoint cannot serve this configuration (bad key, no such model or path). Every
    request would fail the same way, so the run stops instead of rejecting records."""


class ImageError(ValueError):
    """An image of a request cannot be read or decoded."""


class _Malformed(Exception):
    """A 2xx reply that is not a chat completion (retried like a server error)."""


def redact_url(url: str | None) -> str:
    """A URL without user info or query (which may hold credentials), for logs."""
    if not url:
        return "https://api.openai.com/v1"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# ---------------------------------------------------------------------------------- internals
@dataclass
class _Choice:
    content: str | None
    refusal: str | None
    finish_reason: str | None


@dataclass
class _Reply:
    model: str | None
    choices: list[_Choice]
    usage: Usage
    cost_usd: float
    cached: bool = False
    batch: bool = False

    def entry(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "choices": [{"content": c.content, "refusal": c.refusal, "finish_reason": c.finish_reason} for c in self.choices],
            "usage": self.usage.as_dict(),
        }


@dataclass
class _Failure:
    reason: str
    detail: str


@dataclass
class _Prepared:
    request: LLMRequest
    key: str
    material: dict[str, Any]
    messages: list[tuple[str, str, list[tuple[bytes, dict[str, Any]]]]]
    params: dict[str, Any]
    est_prompt_tokens: int


@dataclass
class _Acct:
    calls: int = 0
    retries: int = 0
    hits: int = 0
    paid: Usage = field(default_factory=Usage)
    paid_usd: float = 0.0
    saved_usd: float = 0.0


class _ConnError(Exception):
    """No HTTP answer: timeout, refused or dropped connection (retried)."""


class _SDKTransport:
    """Chat calls through the SDK's documented low-level ``client.post``."""

    def __init__(self, client: Any, timeout: float) -> None:
        self.client = client
        self.options = {"headers": {"Content-Type": "application/json"}, "timeout": timeout, "max_retries": 0}

    async def post(self, payload: bytes) -> tuple[int, Mapping[str, str], bytes]:
        try:
            resp = await self.client.post("/chat/completions", content=payload, cast_to=httpx2.Response, options=self.options)
            return resp.status_code, resp.headers, resp.content
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers, exc.response.content
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise _ConnError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self.client.close()


class _DirectTransport:
    """Chat calls straight through an httpx2 client that carries the SDK client's URL and headers
    (auth, user agent, platform headers): the same request, without the SDK's per-call layer."""

    def __init__(self, client: Any, timeout: float, http: httpx2.AsyncClient) -> None:
        headers = {k: v for k, v in {**client.default_headers, **client.auth_headers}.items() if isinstance(v, str)}
        headers["Content-Type"] = "application/json"
        self.url = str(client.base_url).rstrip("/") + "/chat/completions"
        if client.default_query:
            self.url = str(httpx2.URL(self.url, params=dict(client.default_query)))
        http.headers.update(headers)
        http.timeout = httpx2.Timeout(timeout)
        self.http = http

    async def post(self, payload: bytes) -> tuple[int, Mapping[str, str], bytes]:
        try:
            resp = await self.http.post(self.url, content=payload)
            return resp.status_code, resp.headers, resp.content
        except httpx2.TransportError as exc:  # timeouts, connection and protocol errors
            raise _ConnError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self.http.aclose()


class _Runtime:
    """Per-event-loop state: the SDK client, chat transports, semaphore, limiters, the
    Retry-After pause."""

    def __init__(self, client: Any, transports: list[Any], config: LLMConfig) -> None:
        self.client = client
        self.transports = transports
        self.inflight = [0] * len(transports)
        self.sem = asyncio.Semaphore(config.concurrency)
        self.rpm = AsyncLimiter(config.requests_per_minute, 60) if config.requests_per_minute else None
        self.tpm = AsyncLimiter(config.tokens_per_minute, 60) if config.tokens_per_minute else None
        self.pause_until = 0.0
        self.pending: dict[str, asyncio.Future] = {}

    def acquire(self) -> int:
        i = min(range(len(self.transports)), key=self.inflight.__getitem__)
        self.inflight[i] += 1
        return i

    async def aclose(self) -> None:
        for t in {id(t): t for t in self.transports}.values():
            try:
                await t.aclose()
            except Exception:  # pragma: no cover - closing a broken connection
                pass
        try:
            await self.client.close()
        except Exception:  # pragma: no cover
            pass


def _error_info(content: bytes) -> tuple[str, str | None, str]:
    """(message, param, raw text) of an error reply (OpenAI's ``{"error": {...}}`` or vLLM's flat shape)."""
    raw = content[:2000].decode("utf-8", errors="replace")
    try:
        body = json.loads(content)
    except ValueError:
        return raw.strip()[:500], None, raw
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return str(err.get("message") or raw)[:500], err.get("param"), raw
    return str(err)[:500], None, raw


def _logical_params(config: LLMConfig, request: LLMRequest) -> dict[str, Any]:
    o = request.overrides
    params = {
        "temperature": o.get("temperature", config.temperature),
        "top_p": o.get("top_p", config.top_p),
        "max_tokens": o.get("max_tokens", config.max_tokens),
        "reasoning_effort": o.get("reasoning_effort", config.reasoning_effort),
        "seed": o.get("seed", config.seed),
        "n": o.get("n", 1),
        "stop": o.get("stop"),
    }
    params = {k: v for k, v in params.items() if v is not None}
    if params.get("n") == 1:
        del params["n"]
    if config.extra_body:
        params["extra_body"] = config.extra_body
    return params


def _prepare(config: LLMConfig, request: LLMRequest) -> _Prepared:
    messages: list[tuple[str, str, list[tuple[bytes, dict[str, Any]]]]] = []
    mat_msgs: list[dict[str, Any]] = []
    chars = 0
    n_img = 0
    for m in request.messages:
        imgs = []
        for im in m.images:
            try:
                data = im.read()
            except OSError as exc:
                raise ImageError(f"cannot read image {im.path}: {exc}") from exc
            imgs.append((data, image_key(im, data, config.image_max_side, config.image_format, config.image_jpeg_quality, config.image_detail)))
        messages.append((m.role, m.text, imgs))
        entry: dict[str, Any] = {"role": m.role, "text": m.text}
        if imgs:
            entry["images"] = [k for _, k in imgs]
        mat_msgs.append(entry)
        chars += len(m.text)
        n_img += len(imgs)
    params = _logical_params(config, request)
    model = request.response_model
    material = {
        "endpoint": config.endpoint_kind,
        "model": config.model,
        "params": params,
        "messages": mat_msgs,
        "schema": schema_json(model) if model is not None else None,
        "structured": config.structured if model is not None else None,
        "template": request.template_ref,
    }
    if model is not None and config.structured != "json_schema":
        chars += len(schema_json(model))
    est = text_tokens(chars) + n_img * image_tokens(config.image_max_side, config.image_detail) + 4 * len(messages)
    return _Prepared(request, cache_key(material), material, messages, params, est)


def request_key(config: LLMConfig, request: LLMRequest) -> str:
    """The cache key of ``request`` under ``config`` (what :attr:`LLMResult.cache_key` holds)."""
    return _prepare(config, request).key


def _parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------------------- the engine
class LLMEngine:
    """One endpoint configuration, with its cache, budget and usage ledger.

    ``cache=None`` disables caching; ``budget=None`` means no spend limit (spend is still summed in
    memory); ``ledger=None`` keeps usage in memory only. ``env`` is where the API key is read
    (default ``os.environ``). ``http_client_factory`` returns the ``httpx2.AsyncClient`` for each
    connection pool (custom TLS, proxies); default: plain clients sized for ``concurrency``.
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        cache: LLMCache | None = None,
        budget: Budget | None = None,
        ledger: UsageLedger | None = None,
        env: Mapping[str, str] | None = None,
        http_client_factory: Any = None,
    ) -> None:
        if not config.model:
            from openmedreason.llm.config import LLMConfigError

            raise LLMConfigError("no model configured: set model in [llm.default] / [llm.<step>] or OMR_LLM_MODEL")
        self.config = config
        self.cache = cache if (cache is None or cache.read or cache.write) else None
        self.budget = budget if budget is not None else Budget(None)
        self.ledger = ledger if ledger is not None else UsageLedger(None)
        self._env = env
        self._http_client_factory = http_client_factory
        self._runtimes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Runtime]" = weakref.WeakKeyDictionary()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._secret: str | None = None
        self._owned: list[Any] = []
        self.batch_state_path: Path | None = None  # set (by engine_for_step) to use batch mode
        # model-family adaptation state (shared by every request of this engine)
        self._dropped: set[str] = set(_SAMPLING) if config.is_reasoning else set()
        self._max_field = "max_completion_tokens" if (config.is_reasoning or config.endpoint_kind in ("openai", "azure")) else "max_tokens"
        self._mode = "json_schema" if config.structured == "auto" else config.structured
        self._adaptations: set[str] = set()
        self._adapt_version = 0
        self._finalizer = weakref.finalize(self, _flush_quietly, self.cache, self.ledger, self.budget)

    # ------------------------------------------------------------------ clients
    def _api_key(self) -> str:
        key = self.config.api_key(self._env)
        if key is None:
            if self.config.endpoint_kind in ("openai", "azure"):
                var = self.config.api_key_env or "OMR_LLM_API_KEY (or OPENAI_API_KEY)"
                raise LLMFatalError(f"no API key for {redact_url(self.config.base_url)}: set the environment variable {var}")
            key = "EMPTY"  # local servers (vLLM, SGLang, Ollama) accept any key
        else:
            self._secret = key
        return key

    def _make_client(self, key: str, http: Any = None) -> Any:
        cfg = self.config
        if cfg.endpoint_kind == "azure" and cfg.api_version:
            return openai.AsyncAzureOpenAI(
                azure_endpoint=cfg.base_url or "", api_version=cfg.api_version, api_key=key, max_retries=0, timeout=cfg.timeout_s, http_client=http
            )
        return openai.AsyncOpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s, http_client=http)

    @property
    def transport(self) -> str:
        """The chat transport in use: ``sdk`` or ``direct`` (see :attr:`LLMConfig.transport`)."""
        cfg = self.config
        if cfg.transport != "auto":
            return cfg.transport
        return "sdk" if (cfg.endpoint_kind == "azure" and cfg.api_version) else "direct"

    def _runtime(self) -> _Runtime:
        loop = asyncio.get_running_loop()
        rt = self._runtimes.get(loop)
        if rt is None:
            cfg = self.config
            key = self._api_key()
            n = min(cfg.connection_pools, cfg.concurrency)
            per_pool = -(-cfg.concurrency // n) + 2
            limits = httpx2.Limits(max_connections=None, max_keepalive_connections=per_pool, keepalive_expiry=30.0)
            factory = self._http_client_factory or (lambda: httpx2.AsyncClient(limits=limits))
            client = self._make_client(key, factory())
            if self.transport == "sdk":
                transports: list[Any] = [_SDKTransport(client, cfg.timeout_s)]
                transports += [_SDKTransport(self._make_client(key, factory()), cfg.timeout_s) for _ in range(n - 1)]
            else:
                transports = [_DirectTransport(client, cfg.timeout_s, factory()) for _ in range(n)]
            rt = _Runtime(client, transports, cfg)
            self._runtimes[loop] = rt
        return rt

    def scrub(self, text: str | None) -> str:
        """``text`` with the API key (if it appears, e.g. echoed by a server) masked."""
        if not text:
            return text or ""
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    # ------------------------------------------------------------------ request building
    def cache_key(self, request: LLMRequest) -> str:
        return request_key(self.config, request)

    async def _image_urls(self, prep: _Prepared) -> dict[str, str]:
        """The data URLs of the request's images, encoded in a worker thread (Pillow releases the
        GIL): a large image decoded and downscaled on the event loop would stall every reply."""
        imgs = [(d, k) for _, _, ims in prep.messages for d, k in ims]
        if not imgs:
            return {}
        cfg = self.config

        def encode() -> dict[str, str]:
            out = {}
            for d, k in imgs:
                try:
                    out[k["sha256"]] = data_url(d, k["sha256"], cfg.image_max_side, cfg.image_format, cfg.image_jpeg_quality)
                except Exception:  # undecodable: _body raises ImageError for it
                    pass
            return out

        return await asyncio.to_thread(encode)

    def _body(self, prep: _Prepared, mode: str, urls: dict[str, str] | None = None) -> dict[str, Any]:
        cfg = self.config
        req = prep.request
        msgs: list[dict[str, Any]] = []
        if req.response_model is not None and mode != "json_schema":
            msgs.append({"role": "system", "content": instruction(req.response_model)})
        for role, text, imgs in prep.messages:
            if not imgs:
                msgs.append({"role": role, "content": text})
                continue
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            for data, k in imgs:
                try:
                    url = (urls or {}).get(k["sha256"]) or data_url(data, k["sha256"], cfg.image_max_side, cfg.image_format, cfg.image_jpeg_quality)
                except Exception as exc:  # Pillow raises several types for undecodable data
                    raise ImageError(f"cannot decode image {k['sha256'][:12]}: {exc}") from exc
                iu: dict[str, Any] = {"url": url}
                if k.get("detail"):
                    iu["detail"] = k["detail"]
                parts.append({"type": "image_url", "image_url": iu})
            msgs.append({"role": role, "content": parts})
        body: dict[str, Any] = {"model": cfg.model, "messages": msgs}
        p = prep.params
        for name in ("temperature", "top_p", "seed", "reasoning_effort", "n", "stop"):
            if name in p and name not in self._dropped:
                body[name] = p[name]
        if "max_tokens" in p:
            body[self._max_field] = p["max_tokens"]
        if req.response_model is not None:
            rf = response_format(req.response_model, mode)
            if rf is not None:
                body["response_format"] = rf
        if cfg.extra_body:
            body.update(cfg.extra_body)
        return body

    def _repair(self, prep: _Prepared, bad_text: str, error: str) -> _Prepared:
        repair_text = REPAIR_INSTRUCTION.format(error=error)
        messages = [*prep.messages, ("assistant", bad_text, []), ("user", repair_text, [])]
        material = {**prep.material, "repair": {"version": REPAIR_VERSION, "reply": bad_text, "error": error}}
        est = prep.est_prompt_tokens + text_tokens(len(bad_text) + len(repair_text))
        return _Prepared(prep.request, cache_key(material), material, messages, prep.params, est)

    def _adapt(self, message: str, param: str | None, raw: str, body: dict[str, Any], structured: bool, sent_version: int) -> bool:
        """Change what we send after a 400 that names a parameter; True if something changed
        (or another request already changed it since this one was sent)."""
        if sent_version != self._adapt_version:
            return True
        text = f"{message} {raw}".lower()
        param = (param or "").lower()

        def names(p: str) -> bool:
            return param == p or f"'{p}'" in text or f'"{p}"' in text or f"`{p}`" in text or f" {p} " in f" {text} "

        def once(tag: str) -> bool:
            if tag in self._adaptations:
                return False
            self._adaptations.add(tag)
            self._adapt_version += 1
            return True

        with self._lock:
            if "max_completion_tokens" in body and names("max_completion_tokens") and once("use:max_tokens"):
                self._max_field = "max_tokens"
                return True
            if "max_tokens" in body and names("max_tokens") and once("use:max_completion_tokens"):
                self._max_field = "max_completion_tokens"
                return True
            for p in ("temperature", "top_p", "seed", "reasoning_effort", "stop"):
                if p in body and names(p) and once(f"drop:{p}"):
                    self._dropped.add(p)
                    return True
            if structured and ("response_format" in body or self._mode == "json_object") and (
                names("response_format") or "json_schema" in text or "json_object" in text or "response_format" in text
            ):
                nxt = {"json_schema": "json_object", "json_object": "prompt"}.get(self._mode)
                if nxt and once(f"mode:{nxt}"):
                    log.warning("%s refused structured mode %s; falling back to %s", redact_url(self.config.base_url), self._mode, nxt)
                    self._mode = nxt
                    return True
        return False

    # ------------------------------------------------------------------ replies
    def _reply(self, data: Any, est_prompt_tokens: int = 0, discount: float = 1.0) -> _Reply:
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise _Malformed("reply has no choices")
        choices = []
        for c in sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
            msg = (c.get("message") or {}) if isinstance(c, dict) else {}
            content = msg.get("content")
            if isinstance(content, list):  # some servers return content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            refusal = msg.get("refusal")
            if self._secret:  # a server that echoes the key must not get it into the cache or outputs
                content = self.scrub(content) if content else content
                refusal = self.scrub(refusal) if refusal else refusal
            choices.append(_Choice(content, refusal, c.get("finish_reason") if isinstance(c, dict) else None))
        u = data.get("usage") or {}
        usage = Usage(
            int(u.get("prompt_tokens") or 0),
            int(u.get("completion_tokens") or 0),
            int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0),
        )
        if not u:  # servers that report no usage: estimate, so that budgets still hold
            usage = Usage(est_prompt_tokens, sum(text_tokens(len(c.content or "")) for c in choices), 0)
        cost = self.config.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, discount)
        return _Reply(data.get("model"), choices, usage, cost, batch=discount != 1.0)

    @staticmethod
    def _from_entry(entry: dict[str, Any]) -> _Reply:
        u = entry.get("usage") or {}
        return _Reply(
            entry.get("model"),
            [_Choice(c.get("content"), c.get("refusal"), c.get("finish_reason")) for c in entry.get("choices", [])],
            Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)), int(u.get("cached_tokens", 0))),
            float(entry.get("cost_usd", 0.0)),
            cached=True,
            batch=bool(entry.get("batch")),
        )

    def _store(self, prep: _Prepared, reply: _Reply) -> None:
        if self.cache is not None:
            self.cache.put(
                prep.key,
                reply.entry(),
                step=prep.request.step,
                template=prep.request.template_ref,
                model=reply.model,
                prompt_tokens=reply.usage.prompt_tokens,
                completion_tokens=reply.usage.completion_tokens,
                cost_usd=reply.cost_usd,
                batch=reply.batch,
            )

    # ------------------------------------------------------------------ calling
    async def _fetch(self, rt: _Runtime, prep: _Prepared, res: LLMResult, acct: _Acct) -> _Reply | _Failure:
        if self.cache is not None:
            entry = self.cache.get(prep.key)
            if entry is not None and entry.get("choices"):
                reply = self._from_entry(entry)
                acct.hits += 1
                acct.saved_usd += reply.cost_usd
                res.usage.add(reply.usage)
                res.cost_usd += reply.cost_usd
                return reply
        shared = rt.pending.get(prep.key)
        if shared is not None:  # the same request is in flight: wait for it instead of paying twice
            out = await asyncio.shield(shared)
            if isinstance(out, _Reply):
                acct.hits += 1
                acct.saved_usd += out.cost_usd
                res.usage.add(out.usage)
                res.cost_usd += out.cost_usd
            return out
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        rt.pending[prep.key] = fut
        try:
            out = await self._live(rt, prep, res, acct)
        except Exception as exc:  # BudgetExceeded, LLMFatalError: the sharers see the same
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody shares it
            raise
        except BaseException:  # cancelled / interrupted
            fut.cancel()
            raise
        finally:
            rt.pending.pop(prep.key, None)
        fut.set_result(out)
        if isinstance(out, _Reply):
            self._store(prep, out)
            acct.paid.add(out.usage)
            acct.paid_usd += out.cost_usd
            res.usage.add(out.usage)
            res.cost_usd += out.cost_usd
        return out

    async def _live(self, rt: _Runtime, prep: _Prepared, res: LLMResult, acct: _Acct) -> _Reply | _Failure:
        cfg = self.config
        n = int(prep.params.get("n", 1))
        max_out = int(prep.params.get("max_tokens") or DEFAULT_OUTPUT_TOKENS) * n
        est_cost = cfg.cost(prep.est_prompt_tokens, max_out)
        self.budget.reserve(est_cost)
        actual = 0.0
        structured = prep.request.response_model is not None
        try:
            urls = await self._image_urls(prep)
            attempt = 0
            adaptations = 0
            while True:
                if rt.pause_until:
                    wait = rt.pause_until - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                async with rt.sem:
                    if rt.rpm is not None:
                        await rt.rpm.acquire()
                    if rt.tpm is not None:
                        await rt.tpm.acquire(min(float(prep.est_prompt_tokens + max_out), rt.tpm.max_rate))
                    version = self._adapt_version
                    try:
                        body = self._body(prep, self._mode, urls)
                    except ImageError as exc:
                        return _Failure(IMAGE_UNREADABLE, str(exc))
                    payload = json.dumps(body, ensure_ascii=False).encode()
                    i = rt.acquire()
                    res.calls += 1
                    acct.calls += 1
                    status, headers, content, detail = 0, {}, b"", ""
                    try:
                        status, headers, content = await rt.transports[i].post(payload)
                    except _ConnError as exc:
                        detail = f"no reply ({exc})"
                    finally:
                        rt.inflight[i] -= 1
                if 200 <= status < 300:
                    try:
                        reply = self._reply(json.loads(content), prep.est_prompt_tokens)
                        actual = reply.cost_usd
                        return reply
                    except (ValueError, _Malformed) as exc:
                        status, detail = 0, f"malformed reply: {exc}"
                message, param, raw = _error_info(content) if status else ("", None, "")
                if status:
                    detail = f"HTTP {status}: {message}"
                detail = self.scrub(detail)
                if status in (400, 422) and adaptations < _MAX_ADAPTATIONS and self._adapt(message, param, raw, body, structured, version):
                    adaptations += 1
                    continue
                if status in (401, 403, 404):
                    raise LLMFatalError(f"{redact_url(cfg.base_url)} answered {detail} (model {cfg.model!r}); check base_url, model and the API key variable")
                retryable = status == 0 or status in _RETRY_STATUS or status >= 500
                if not retryable:
                    return _Failure(BAD_REQUEST, detail)
                if attempt >= cfg.max_retries:
                    return _Failure(REQUEST_FAILED, f"{detail} (after {attempt} retries)")
                retry_after = _parse_retry_after(headers) if status else None
                if retry_after is not None:
                    delay = min(retry_after, cfg.retry_after_max_s)
                    delay += random.uniform(0, 0.05 * delay)
                    rt.pause_until = max(rt.pause_until, time.monotonic() + delay)
                else:
                    base = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2**attempt))
                    delay = base / 2 + random.uniform(0, base / 2)
                attempt += 1
                res.retries += 1
                acct.retries += 1
                log.warning("%s: %s; retry %d/%d in %.2fs", prep.request.step, detail, attempt, cfg.max_retries, delay)
                await asyncio.sleep(delay)
        finally:
            self.budget.settle(est_cost, actual)

    def _interpret(self, request: LLMRequest, reply: _Reply, res: LLMResult, final: bool) -> str | None:
        """Fill ``res`` from a reply; return an error text when a repair call should be made."""
        res.model = reply.model or res.model
        res.texts = [c.content for c in reply.choices]
        first = reply.choices[0]
        res.text = first.content
        res.finish_reason = first.finish_reason
        res.ok, res.parsed, res.reason, res.detail = False, None, None, None
        if first.refusal or first.finish_reason == "content_filter":
            res.reason, res.detail = REFUSAL, self.scrub(first.refusal or "finish_reason=content_filter")
            return None
        if not (first.content or "").strip():
            res.reason = TRUNCATED if first.finish_reason == "length" else EMPTY_REPLY
            return None
        model = request.response_model
        if model is None:
            if first.finish_reason == "length":
                res.reason = TRUNCATED
            else:
                res.ok = True
            return None
        parsed, error = parse_reply(first.content or "", model)
        if len(reply.choices) > 1:
            res.parsed_all = [parse_reply(c.content, model)[0] if c.content else None for c in reply.choices]
        if parsed is not None:
            res.ok, res.parsed = True, parsed
            return None
        if first.finish_reason == "length":
            res.reason, res.detail = TRUNCATED, error
            return None
        res.reason, res.detail = INVALID_OUTPUT, error
        return None if (final or len(reply.choices) > 1) else error

    async def complete(self, request: LLMRequest) -> LLMResult:
        """Run one request (cache, budget, limits, retries, structured output, one repair)."""
        rt = self._runtime()
        acct = _Acct()
        try:
            prep = _prepare(self.config, request)
        except ImageError as exc:
            res = LLMResult(ok=False, reason=IMAGE_UNREADABLE, detail=str(exc), template=request.template, template_version=request.template_version)
            self._account(request, res, acct)
            return res
        res = LLMResult(ok=False, cache_key=prep.key, template=request.template, template_version=request.template_version)
        try:
            out = await self._fetch(rt, prep, res, acct)
            if isinstance(out, _Failure):
                res.reason, res.detail = out.reason, out.detail
            else:
                error = self._interpret(request, out, res, final=False)
                if error is not None:
                    bad = res.text or ""
                    res.repaired = True
                    out2 = await self._fetch(rt, self._repair(prep, bad, error), res, acct)
                    if isinstance(out2, _Failure):
                        res.reason, res.detail = out2.reason, f"{error}; repair call failed: {out2.detail}"
                    else:
                        self._interpret(request, out2, res, final=True)
                        if res.reason == INVALID_OUTPUT:
                            res.detail = f"{res.detail} (first reply: {error})"
        except BudgetExceeded:
            self._account(request, res, acct, count_request=False)
            raise
        res.cached = acct.calls == 0 and acct.hits > 0
        self._account(request, res, acct)
        return res

    def _account(self, request: LLMRequest, res: LLMResult, acct: _Acct, count_request: bool = True) -> None:
        self.ledger.add(
            request.step,
            res.model or self.config.model,
            requests=int(count_request),
            ok=int(res.ok and count_request),
            calls=acct.calls,
            retries=acct.retries,
            cache_hits=acct.hits,
            prompt_tokens=acct.paid.prompt_tokens,
            completion_tokens=acct.paid.completion_tokens,
            cached_tokens=acct.paid.cached_tokens,
            cost_usd=acct.paid_usd,
            saved_usd=acct.saved_usd,
            reason=res.reason if count_request else None,
        )

    async def acomplete_many(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        """Run requests concurrently (bounded by ``concurrency``); results in input order.

        Raises :class:`BudgetExceeded` (with ``.results``: finished ones, None for the others) once
        the budget stops new calls, after the calls in flight have finished and been cached;
        :class:`LLMFatalError` on a configuration error.
        """
        results: list[LLMResult | None] = [None] * len(requests)
        stop: list[BaseException] = []
        todo = iter(range(len(requests)))

        # A bounded pool of workers (not one task per request): preparing and looking up the
        # cache for a whole batch up front would stall the replies of the first calls.
        async def worker() -> None:
            for i in todo:
                if stop:
                    return
                try:
                    results[i] = await self.complete(requests[i])
                except (BudgetExceeded, LLMFatalError) as exc:
                    stop.append(exc)
                    return

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(len(requests), 2 * self.config.concurrency))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a bug or an interrupt: leave no request running behind
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            self.flush()
        fatal = [e for e in stop if isinstance(e, LLMFatalError)]
        if fatal:
            raise fatal[0]
        if stop:
            b = stop[0]
            assert isinstance(b, BudgetExceeded)
            raise BudgetExceeded(b.spent_usd, b.limit_usd, b.needed_usd, results=results)
        return results  # type: ignore[return-value]

    def complete_many(self, requests: Iterable[LLMRequest]) -> list[LLMResult]:
        """Synchronous :meth:`acomplete_many` for steps (runs the engine's own event loop, which
        keeps connections alive between batches).

        In batch mode (``batch = true`` and a ``batch_state_path``, as :func:`engine_for_step`
        sets up), requests that are not cached yet are submitted to the Batch API instead and
        :class:`~.batch.BatchPending` is raised; once the batches are done, the same call is
        answered from the cache (see :func:`~.batch.complete_or_submit`).
        """
        if self.batch_state_path is not None:
            from openmedreason.llm.batch import complete_or_submit

            return complete_or_submit(self, list(requests), self.batch_state_path)
        return self.complete_many_live(requests)

    def complete_many_live(self, requests: Iterable[LLMRequest]) -> list[LLMResult]:
        """:meth:`complete_many` without batch mode: every request that is not cached is sent now."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("complete_many() was called inside a running event loop; use `await engine.acomplete_many(...)`")
        return self._run(self.acomplete_many(list(requests)))

    def _run(self, coro: Any) -> Any:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def alist_models(self) -> list[str]:
        rt = self._runtime()
        page = await rt.client.with_options(max_retries=2).models.list()
        return [m.id for m in page.data]

    def list_models(self) -> list[str]:
        """The endpoint's ``/models`` ids (a cheap connectivity and key check)."""
        return self._run(self.alist_models())

    # ------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        _flush_quietly(self.cache, self.ledger, self.budget, raise_errors=True)

    async def aclose(self) -> None:
        """For callers that run :meth:`complete` in their own event loop: close the HTTP clients
        opened in this loop and flush (call :meth:`close` too to release the cache and budget)."""
        rt = self._runtimes.pop(asyncio.get_running_loop(), None)
        if rt is not None:
            await rt.aclose()
        self.flush()

    def close(self) -> None:
        """Flush the cache, ledger and budget, close the HTTP clients and owned resources."""
        try:
            self.flush()
        finally:
            if self._loop is not None and not self._loop.is_closed():
                rt = self._runtimes.pop(self._loop, None)
                if rt is not None:
                    self._loop.run_until_complete(rt.aclose())
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.close()
            for r in self._owned:
                r.close()
            self._owned.clear()

    def __enter__(self) -> "LLMEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flush_quietly(cache: LLMCache | None, ledger: UsageLedger, budget: Budget, raise_errors: bool = False) -> None:
    for obj in (cache, ledger, budget):
        if obj is None:
            continue
        try:
            obj.flush()
        except Exception:
            if raise_errors:
                raise
            log.debug("flush failed", exc_info=True)


def engine_for_step(
    step_name: str,
    llm_sections: Mapping[str, Mapping[str, Any]] | None,
    run_dir: str | Path,
    *,
    no_cache: bool = False,
    max_cost_usd: float | None = None,
    processes: int = 1,
    env: Mapping[str, str] | None = None,
    config: LLMConfig | None = None,
) -> LLMEngine:
    """The engine a step uses inside a worker: config from ``[llm.*]`` + env, the cache
    (``cache_path`` or ``RUN/_llm/cache.sqlite``; ``no_cache`` = neither read nor write), the run's
    shared budget and this process's usage ledger part; with ``batch = true``, batch mode with its
    state in ``RUN/_llm/batches/<step>.json``. Close it (or use ``with``) when done."""
    cfg = config or resolve_llm_config(step_name, llm_sections, env)
    cfg = cfg.per_process(processes)
    run_dir = Path(run_dir)
    cache = None
    if cfg.cache and not no_cache:
        cache = LLMCache(Path(cfg.cache_path).expanduser() if cfg.cache_path else llm_dir(run_dir) / "cache.sqlite")
    budget = Budget.for_run(run_dir, max_cost_usd)
    ledger = UsageLedger(run_dir)
    eng = LLMEngine(cfg, cache=cache, budget=budget, ledger=ledger, env=env)
    eng._owned = [x for x in (cache, budget) if x is not None]
    if cfg.batch:
        if cache is None:
            raise ValueError(f"[llm.{step_name}] batch = true needs the cache (results are delivered through it); drop --no-cache")
        eng.batch_state_path = llm_dir(run_dir) / "batches" / f"{step_name}.json"
    return eng
