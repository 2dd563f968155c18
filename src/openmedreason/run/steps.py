"""The step abstraction: a named, versioned, configured transformation of a batch of records.

A step never knows how it is run (in-process, process pool, Ray). It takes a list of input
records and returns the records it keeps plus the ones it rejects, each reject with a stable
reason code (:mod:`openmedreason.reasons`) and the measured value that triggered it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict

from openmedreason.reasons import check
from openmedreason.records import Record

In = TypeVar("In")
Out = TypeVar("Out", bound=Record)


class RunIncomplete(Exception):
    """Base of the exceptions a step raises to end a run early without losing work: finished
    batches and shards are kept, and rerunning the same command resumes."""


class StopRun(RunIncomplete):
    """Stop the whole run now (e.g. the ``--max-cost`` budget is reached)."""


class Pending(RunIncomplete):
    """This shard cannot finish yet (e.g. its requests wait in a remote Batch API job); the
    executor goes on with the other shards and reports the run as pending."""


@dataclass
class Rejected:
    """A record a step did not keep. The record keeps all its fields so it can be re-admitted."""

    record: Record
    reason: str
    value: float | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        check(self.reason)
        if self.value is not None:
            self.value = float(self.value)


@dataclass
class StepResult(Generic[Out]):
    kept: list[Out] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def extend(self, other: "StepResult[Out]") -> None:
        self.kept.extend(other.kept)
        self.rejected.extend(other.rejected)


@dataclass(frozen=True)
class RunContext:
    """What a step may need about the run it is part of, outside its config: none of this
    changes a step's output, so none of it enters the step's fingerprint (raising --max-cost or
    turning the cache off must not wipe finished work)."""

    run_dir: Path
    llm: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_cost_usd: float | None = None
    no_cache: bool = False
    workers: int = 1


class StepConfig(BaseModel):
    """Base for step configs: frozen, no unknown keys (a typo in a config file is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(Generic[In, Out]):
    """Subclass and set ``name``, ``version``, ``Config``, ``output``; implement :meth:`process`.

    ``one_to_one`` steps must account for every input record exactly once (kept or rejected);
    the executor verifies it. Steps that fan out (one panel, several questions) set it False.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[StepConfig]] = StepConfig
    output: ClassVar[type[Record]]
    one_to_one: ClassVar[bool] = True
    #: True for steps that call an LLM (they implement :meth:`estimate` for ``--dry-run``)
    uses_llm: ClassVar[bool] = False

    def __init__(self, config: StepConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.Config(**config)
        self.config = config
        self.ctx: RunContext | None = None

    def bind(self, ctx: RunContext) -> "Step[In, Out]":
        """Attach the run context (run directory, LLM sections, budget) before execution."""
        self.ctx = ctx
        return self

    def close(self) -> None:
        """Release what the step opened in this process (the executor calls it after each shard)."""

    def estimate(self, sample: Sequence[In], total: int) -> Any:  # pragma: no cover - LLM steps override
        """For ``--dry-run``: calls, tokens and cost for ``total`` input records, from a sample."""
        return None

    def process(self, batch: Sequence[In]) -> StepResult[Out]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Hash of name, version and config: a change means this step's output must be recomputed."""
        payload = json.dumps(
            {"name": self.name, "version": self.version, "config": self.config.model_dump(mode="json")},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
