"""Requests, results and reject reasons of the LLM engine.

A step builds :class:`LLMRequest` objects (step name, prompt template id + version, messages with
text and images, an optional pydantic response model, optional per-request overrides) and gets
back :class:`LLMResult` objects. A result is either ``ok`` (with ``parsed`` for structured
requests) or carries a registered reject ``reason`` and the raw ``text`` for review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from openmedreason.reasons import reason

INVALID_OUTPUT = reason("llm.invalid_output", "the reply did not match the response schema, even after one repair call")
REFUSAL = reason("llm.refusal", "the model refused (refusal field or content filter)")
EMPTY_REPLY = reason("llm.empty_reply", "the model returned no content")
TRUNCATED = reason("llm.truncated", "the reply was cut at the output token limit (finish_reason=length)")
REQUEST_FAILED = reason(
    "llm.request_failed", "no reply after all retries (429/5xx/timeouts/connection errors); rerunnable, not cached"
)
BAD_REQUEST = reason("llm.bad_request", "the server rejected this request as invalid (HTTP 4xx other than 408/409/429)")
IMAGE_UNREADABLE = reason("llm.image_unreadable", "an image of the request could not be read or decoded; nothing was sent")

LLM_REASONS = (INVALID_OUTPUT, REFUSAL, EMPTY_REPLY, TRUNCATED, REQUEST_FAILED, BAD_REQUEST, IMAGE_UNREADABLE)


@dataclass(frozen=True)
class ImageInput:
    """An image for a message: a file path or raw bytes (any format Pillow reads)."""

    path: str | Path | None = None
    data: bytes | None = None
    detail: Literal["auto", "low", "high"] | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("ImageInput needs exactly one of path or data")

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        return Path(self.path).read_bytes()  # type: ignore[arg-type]


@dataclass(frozen=True)
class Message:
    """A chat message: text plus any number of images (images go after the text)."""

    role: Literal["system", "user", "assistant"]
    text: str = ""
    images: tuple[ImageInput, ...] = ()

    @classmethod
    def system(cls, text: str) -> "Message":
        return cls("system", text)

    @classmethod
    def user(cls, text: str, images: list[str | Path | bytes | ImageInput] | tuple = ()) -> "Message":
        return cls("user", text, tuple(_image(i) for i in images))

    @classmethod
    def assistant(cls, text: str) -> "Message":
        return cls("assistant", text)


def _image(x: str | Path | bytes | ImageInput) -> ImageInput:
    if isinstance(x, ImageInput):
        return x
    if isinstance(x, (bytes, bytearray)):
        return ImageInput(data=bytes(x))
    return ImageInput(path=x)


@dataclass
class LLMRequest:
    """One logical request. ``template`` + ``template_version`` identify the prompt template
    (they are part of the cache key and of the provenance); ``overrides`` may set
    temperature, top_p, max_tokens, n, stop, seed, reasoning_effort for this request only."""

    step: str
    template: str
    template_version: str
    messages: list[Message]
    response_model: type[BaseModel] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    record_id: str | None = None  # for logs and batch bookkeeping only; not part of the key

    ALLOWED_OVERRIDES = frozenset({"temperature", "top_p", "max_tokens", "n", "stop", "seed", "reasoning_effort"})

    def __post_init__(self) -> None:
        bad = set(self.overrides) - self.ALLOWED_OVERRIDES
        if bad:
            raise ValueError(f"unknown request overrides {sorted(bad)}; allowed: {sorted(self.ALLOWED_OVERRIDES)}")

    @property
    def template_ref(self) -> str:
        return f"{self.template}@{self.template_version}"


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens}


@dataclass
class LLMResult:
    """What the engine returns for one :class:`LLMRequest`.

    ``text`` is the raw reply (kept on failure too; after a repair, the repair's reply), ``texts``
    every choice when ``n > 1``. ``usage`` and ``cost_usd`` sum every call the result took
    (including the repair call; for cached results, what the original calls cost). ``calls`` counts
    HTTP requests actually sent for this result (0 when everything came from the cache),
    ``retries`` the retried ones among them.
    """

    ok: bool
    parsed: BaseModel | None = None
    text: str | None = None
    reason: str | None = None
    detail: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    cache_key: str = ""
    cached: bool = False
    template_version: str = ""
    template: str = ""
    calls: int = 0
    retries: int = 0
    repaired: bool = False
    texts: list[str | None] = field(default_factory=list)
    parsed_all: list[BaseModel | None] = field(default_factory=list)

    def provenance(self) -> dict[str, str | None]:
        """What every LLM-produced field records: server-reported model, template@version, cache key."""
        return {"model": self.model, "template": f"{self.template}@{self.template_version}", "cache_key": self.cache_key}
