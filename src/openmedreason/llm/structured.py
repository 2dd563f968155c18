"""Structured outputs: the strict JSON schema sent as ``response_format``, the instruction used
when a server only offers JSON mode (or nothing), parsing a reply, and the one repair prompt.

Modes, in the order the engine falls back when a server answers 400 to the previous one:

* ``json_schema``: ``{"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}``
  with the pydantic model's schema made strict (every property required, no additional ones).
* ``json_object``: ``{"type": "json_object"}`` plus a system instruction carrying the schema.
* ``prompt``: the instruction only.

Whatever the mode, the reply is validated with the pydantic model; ``<think>…</think>`` blocks and
Markdown code fences around the JSON are tolerated.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

MODES = ("json_schema", "json_object", "prompt")
REPAIR_VERSION = "1"

SCHEMA_INSTRUCTION = (
    "Reply with one JSON object and nothing else (no prose, no Markdown). "
    "It must conform to this JSON schema:\n{schema}"
)
REPAIR_INSTRUCTION = (
    "Your previous reply could not be used: {error}\n"
    "Reply again with only the corrected JSON object, conforming to the JSON schema you were given."
)

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def _strictify(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _strictify(v) for k, v in node.items() if k != "default"}
        if node.get("type") == "object" and "properties" in node:
            node["required"] = list(node["properties"])
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strictify(x) for x in node]
    return node


@lru_cache(maxsize=256)
def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema (pydantic's), memoised per class."""
    return model.model_json_schema()


@lru_cache(maxsize=256)
def schema_json(model: type[BaseModel]) -> str:
    return json.dumps(schema_of(model), sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=256)
def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Strict variant for ``json_schema`` mode: all properties required, no extra properties, no
    defaults (pydantic still applies defaults when validating)."""
    return _strictify(copy.deepcopy(schema_of(model)))


def response_format(model: type[BaseModel], mode: str) -> dict[str, Any] | None:
    if mode == "json_schema":
        name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64]
        return {"type": "json_schema", "json_schema": {"name": name, "schema": strict_schema(model), "strict": True}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def instruction(model: type[BaseModel]) -> str:
    return SCHEMA_INSTRUCTION.format(schema=json.dumps(schema_of(model), indent=1, sort_keys=True))


def _candidates(text: str) -> list[str]:
    body = _THINK.sub("", text).strip()
    out = [body]
    m = _FENCE.match(body)
    if m:
        out.append(m.group(1).strip())
    i, j = body.find("{"), body.rfind("}")
    if 0 <= i < j and (i > 0 or j < len(body) - 1):
        out.append(body[i : j + 1])
    return out


def parse_reply(text: str, model: type[BaseModel]) -> tuple[BaseModel | None, str | None]:
    """Validate a reply against ``model``: ``(instance, None)`` or ``(None, short error)``."""
    first_error: str | None = None
    for cand in _candidates(text):
        try:
            return model.model_validate_json(cand), None
        except ValidationError as exc:
            if first_error is None:
                first_error = _summarise(exc)
    return None, first_error or "empty reply"


def _summarise(exc: ValidationError) -> str:
    errs = exc.errors(include_url=False, include_input=False)
    if errs and errs[0].get("type") == "json_invalid":
        return f"it is not valid JSON ({errs[0].get('msg', '')})"
    parts = []
    for e in errs[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {e.get('msg', '')}")
    more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return "it does not match the schema: " + "; ".join(parts) + more
