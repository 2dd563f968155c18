"""Per-step LLM endpoint configuration: ``[llm.default]``, ``[llm.<step>]``, then the environment.

Example ``omr.toml``::

    [llm.default]
    base_url = "http://localhost:8000/v1"     # vLLM; omit for api.openai.com
    model = "Qwen/Qwen2.5-VL-7B-Instruct"
    api_key_env = "VLLM_API_KEY"               # the NAME of the variable holding the key
    temperature = 0.0
    max_tokens = 2048
    concurrency = 32
    requests_per_minute = 600
    price_input_per_mtok = 0.0
    price_output_per_mtok = 0.0

    [llm.c1_trace]                             # overrides for one step
    model = "o4-mini"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"
    reasoning_effort = "medium"
    price_input_per_mtok = 1.10
    price_output_per_mtok = 4.40

Environment variables (applied last, to every step): ``OMR_LLM_BASE_URL``, ``OMR_LLM_MODEL``;
the key is read from ``OMR_LLM_API_KEY`` (else ``OPENAI_API_KEY``) unless ``api_key_env`` names
another variable. The key itself is never stored in an :class:`LLMConfig`, so no dump of a config
(manifest, cache, usage file) can contain it; it is read when the client is created.

Every field, its default and its meaning is listed in :class:`LLMConfig` (``omr`` prints them
in ``docs/llm.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_BASE_URL = "OMR_LLM_BASE_URL"
ENV_MODEL = "OMR_LLM_MODEL"
ENV_API_KEY = "OMR_LLM_API_KEY"
ENV_OPENAI_KEY = "OPENAI_API_KEY"

EndpointKind = Literal["openai", "azure", "vllm", "sglang", "ollama", "openai-compatible"]

# OpenAI reasoning models refuse sampling parameters and want max_completion_tokens.
_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d(?:[-_.].*)?|gpt-5.*)$", re.IGNORECASE)


class LLMConfigError(ValueError):
    """The configuration cannot work (unknown key, no model, no API key for OpenAI, …)."""


class LLMConfig(BaseModel):
    """One step's LLM endpoint and request settings (frozen; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # endpoint
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL ending in /v1; None = api.openai.com")
    model: str = Field(default="", description="model id (Azure: the deployment name)")
    kind: Literal["auto", "openai", "azure", "vllm", "sglang", "ollama", "openai-compatible"] = Field(
        default="auto", description="endpoint kind; auto = from base_url (api.openai.com, *.azure.com, :11434 = ollama, else openai-compatible)"
    )
    api_key_env: str | None = Field(default=None, description=f"name of the env var with the API key; None = {ENV_API_KEY}, else {ENV_OPENAI_KEY}")
    api_version: str | None = Field(default=None, description="Azure OpenAI api-version (only for kind=azure with the classic deployments API)")
    family: Literal["auto", "chat", "reasoning"] = Field(
        default="auto", description="reasoning = no temperature/top_p, max_completion_tokens; auto = from the model name (o1/o3/o4/gpt-5…)"
    )

    # request
    temperature: float | None = Field(default=0.0, description="sampling temperature (dropped for reasoning models)")
    top_p: float | None = Field(default=None, description="nucleus sampling (dropped for reasoning models)")
    max_tokens: int | None = Field(default=2048, ge=1, description="output token cap (sent as max_completion_tokens where required)")
    reasoning_effort: str | None = Field(default=None, description="reasoning effort (low, medium, high) for reasoning models; sent only when set")
    seed: int | None = Field(default=None, description="sampling seed, where the server supports it")
    structured: Literal["auto", "json_schema", "json_object", "prompt"] = Field(
        default="auto",
        description="how a response schema is requested: auto = strict json_schema, falling back to json_object then prompt-only when the server refuses",
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra JSON fields for the server (e.g. vLLM chat_template_kwargs)")

    # images
    image_max_side: int = Field(default=1024, ge=16, description="images are downscaled so that their longer side is at most this")
    image_format: Literal["auto", "jpeg", "png"] = Field(default="auto", description="data-URL encoding; auto = keep PNG for PNG sources, JPEG otherwise")
    image_jpeg_quality: int = Field(default=90, ge=1, le=100, description="JPEG quality for re-encoded images")
    image_detail: Literal["auto", "low", "high"] | None = Field(default=None, description="OpenAI image detail hint (None = not sent)")

    # reliability
    concurrency: int = Field(default=16, ge=1, description="requests in flight per process")
    requests_per_minute: float | None = Field(default=None, gt=0, description="request rate limit per process (None = unlimited)")
    tokens_per_minute: float | None = Field(default=None, gt=0, description="token rate limit per process, on estimated prompt + max output tokens")
    timeout_s: float = Field(default=120.0, gt=0, description="per-request timeout (seconds)")
    max_retries: int = Field(default=6, ge=0, description="retries on 429/5xx/timeouts/connection errors before llm.request_failed")
    backoff_initial_s: float = Field(default=1.0, ge=0, description="first backoff delay; doubles per retry (capped), each delay drawn between half and all of it")
    backoff_max_s: float = Field(default=60.0, ge=0, description="cap on one backoff delay")
    retry_after_max_s: float = Field(default=600.0, ge=0, description="cap on a server's Retry-After")
    connection_pools: int = Field(default=4, ge=1, description="HTTP connection pools the requests are spread over (lower client CPU at high concurrency)")
    transport: Literal["auto", "sdk", "direct"] = Field(
        default="auto",
        description="chat calls: sdk = the SDK's low-level client.post; direct = an httpx2 client carrying the SDK client's URL and headers "
        "(less client CPU per call); auto = direct, except sdk for Azure's deployments API (api_version set)",
    )

    # cost
    price_input_per_mtok: float = Field(default=0.0, ge=0, description="USD per 1M prompt tokens")
    price_output_per_mtok: float = Field(default=0.0, ge=0, description="USD per 1M completion tokens")
    price_cached_input_per_mtok: float | None = Field(default=None, ge=0, description="USD per 1M cached prompt tokens (None = input price)")

    # batch mode
    batch: bool = Field(default=False, description="submit this step's requests through the Batch API (OpenAI/Azure)")
    batch_discount: float = Field(default=0.5, ge=0, le=1, description="price multiplier for batch results")
    batch_poll_s: float = Field(default=30.0, gt=0, description="seconds between batch status polls")
    batch_completion_window: str = Field(default="24h", description="Batch API completion window")
    batch_max_requests: int = Field(default=50_000, ge=1, description="requests per submitted batch file")

    # cache
    cache: bool = Field(default=True, description="read and write the response cache")
    cache_path: str | None = Field(default=None, description="cache file, may be shared by runs; None = RUN/_llm/cache.sqlite")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if str(key).lower() in ("api_key", "key", "openai_api_key", "token", "secret"):
                    raise LLMConfigError(
                        f"'{key}' is not a config field: put the key in an environment variable and name it with api_key_env"
                    )
        return data

    # ------------------------------------------------------------------ derived
    @property
    def endpoint_kind(self) -> EndpointKind:
        if self.kind != "auto":
            return self.kind
        url = (self.base_url or "https://api.openai.com/v1").lower()
        if "api.openai.com" in url:
            return "openai"
        if ".azure.com" in url or ".azure-api.net" in url:
            return "azure"
        if ":11434" in url:
            return "ollama"
        return "openai-compatible"

    @property
    def is_reasoning(self) -> bool:
        if self.family != "auto":
            return self.family == "reasoning"
        return bool(_REASONING_MODEL.match(self.model))

    def api_key(self, env: Mapping[str, str] | None = None) -> str | None:
        """The key from the environment (never stored on the object)."""
        env = os.environ if env is None else env
        if self.api_key_env:
            return env.get(self.api_key_env) or None
        return env.get(ENV_API_KEY) or env.get(ENV_OPENAI_KEY) or None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, discount: float = 1.0) -> float:
        cached_price = self.price_input_per_mtok if self.price_cached_input_per_mtok is None else self.price_cached_input_per_mtok
        usd = (
            (prompt_tokens - cached_tokens) * self.price_input_per_mtok
            + cached_tokens * cached_price
            + completion_tokens * self.price_output_per_mtok
        ) / 1e6
        return usd * discount

    def per_process(self, processes: int) -> "LLMConfig":
        """A copy whose concurrency and rate limits are shared fairly among ``processes`` workers."""
        if processes <= 1:
            return self
        upd: dict[str, Any] = {"concurrency": max(1, self.concurrency // processes)}
        if self.requests_per_minute:
            upd["requests_per_minute"] = self.requests_per_minute / processes
        if self.tokens_per_minute:
            upd["tokens_per_minute"] = self.tokens_per_minute / processes
        return self.model_copy(update=upd)

    def public_dump(self) -> dict[str, Any]:
        """What manifests record: every field (the key's variable name, never the key)."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.public_dump(), sort_keys=True).encode()).hexdigest()[:16]


def resolve_llm_config(
    step_name: str,
    llm_sections: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> LLMConfig:
    """Merge ``[llm.default]``, then ``[llm.<step_name>]``, then ``OMR_LLM_BASE_URL`` /
    ``OMR_LLM_MODEL`` from ``env``, then keyword ``overrides`` (CLI flags; None values ignored)."""
    env = os.environ if env is None else env
    sections = dict(llm_sections or {})
    merged: dict[str, Any] = {}
    for name in ("default", step_name):
        sect = sections.get(name) or {}
        if not isinstance(sect, Mapping):
            raise LLMConfigError(f"[llm.{name}] must be a table")
        merged.update(sect)
    if env.get(ENV_BASE_URL):
        merged["base_url"] = env[ENV_BASE_URL]
    if env.get(ENV_MODEL):
        merged["model"] = env[ENV_MODEL]
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return LLMConfig.model_validate(merged)
    except LLMConfigError:
        raise
    except ValueError as exc:
        raise LLMConfigError(f"invalid [llm] config for step {step_name!r}: {exc}") from exc
