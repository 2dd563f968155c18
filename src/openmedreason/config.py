"""Run configuration: one TOML file plus CLI flags, every default documented here.

Example ``omr.toml``::

    seed = 0
    shard_size = 64          # source units (articles / packages / record chunks) per shard
    batch_size = 256         # records per batch inside a shard (memory bound, resume granularity)
    rows_per_unit = 2000     # rows of a JSONL/Parquet record file per source unit

    [steps.ingest]
    allow_license = ["unknown"]
    field_map = "openpmc"

    [steps.a1_pixels]
    preset = "paper"
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(default=0, description="seed for every random choice (image scope, option shuffles, splits)")
    shard_size: int = Field(default=64, ge=1, description="source units per shard")
    batch_size: int = Field(default=256, ge=1, description="records per batch within a shard")
    units_per_batch: int = Field(default=4, ge=1, description="source units per ingest batch")
    rows_per_unit: int = Field(default=2000, ge=1, description="rows of a record file per source unit")
    engine: Literal["auto", "offline", "llm"] = Field(
        default="auto",
        description="curation engine: llm (an OpenAI-compatible endpoint), offline (heuristics, no network), "
        "or auto = llm when an endpoint is configured, else offline",
    )
    steps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-step config, keyed by step name")
    build: dict[str, Any] = Field(
        default_factory=dict,
        description="dataset build settings, the [build] table (validated by openmedreason.build.config.BuildConfig; docs/dataset.md)",
    )
    llm: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="LLM endpoints: [llm.default] and [llm.<step>] sections (docs/llm.md); never an API key",
    )

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]

    def step_config(self, name: str) -> dict[str, Any]:
        return dict(self.steps.get(name, {}))

    def resolved_engine(self, env: Mapping[str, str] | None = None, step: str | None = None) -> str:
        """``auto`` means llm when an endpoint is configured (env, ``[llm.default]`` or, with
        ``step``, ``[llm.<step>]``), else offline."""
        if self.engine != "auto":
            return self.engine
        return "llm" if endpoint_configured(self.llm, step, env) else "offline"


def endpoint_configured(llm: Mapping[str, Any], step: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """True when an LLM endpoint is configured for ``step``: ``OMR_LLM_BASE_URL``/``OMR_LLM_MODEL``,
    or a base_url/model in ``[llm.default]`` or ``[llm.<step>]``."""
    env = os.environ if env is None else env
    if env.get("OMR_LLM_BASE_URL") or env.get("OMR_LLM_MODEL"):
        return True
    for name in ("default", step):
        sect = (llm.get(name) or {}) if name else {}
        if sect.get("base_url") or sect.get("model"):
            return True
    return False


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in key:  # "steps.ingest.allow_license"
            head, step, field = key.split(".", 2)
            data.setdefault(head, {}).setdefault(step, {})[field] = value
        else:
            data[key] = value
    return RunConfig.model_validate(data)
