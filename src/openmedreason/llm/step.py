"""Base class for steps that call an LLM: the engine comes from the run context.

A subclass builds requests for its batch and turns results into kept or rejected records::

    class A2Text(LLMStep):
        name, version, output = "a2_text", "1", Panel

        def process(self, batch):
            results = self.complete(self.request(p) for p in batch)
            ...

The run context (``RUN`` directory, ``[llm.*]`` sections, ``--max-cost``, ``--no-cache``, worker
count) is bound by the pipeline and is not part of the step's fingerprint, so changing the budget
or the cache setting never recomputes finished work.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Iterable

from openmedreason.llm.engine import LLMEngine, engine_for_step
from openmedreason.llm.types import LLMRequest, LLMResult
from openmedreason.run.steps import Step


class LLMStep(Step):
    uses_llm = True
    #: prompt templates the step renders in llm mode (their versions enter the fingerprint)
    templates: ClassVar[tuple[str, ...]] = ()
    #: names under which the step's endpoints are configured ([llm.<name>]); default: the step name
    llm_names: ClassVar[tuple[str, ...]] = ()

    def fingerprint(self) -> str:
        """Name, version and config, plus in llm mode the prompt versions and the settings that
        shape replies (model, sampling, token limits), so that a new prompt or model recomputes
        the step; rate limits, prices, the cache path and the budget do not."""
        base = super().fingerprint()
        if not getattr(self, "uses_llm", False) or self.ctx is None:
            return base
        from openmedreason.prompts import load

        shaping = ("base_url", "model", "temperature", "top_p", "max_tokens", "reasoning_effort", "structured",
                   "image_max_side", "image_format", "image_detail", "seed")
        extra = {
            "templates": {t: load(t).version for t in self.templates},
            "llm": {
                n: {k: v for k, v in self.llm_config(n).public_dump().items() if k in shaping}
                for n in (self.llm_names or (self.name,))
            },
        }
        payload = json.dumps({"base": base, **extra}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def llm_config(self, name: str) -> Any:
        """The resolved endpoint settings for ``name`` (one of :attr:`llm_names`)."""
        from openmedreason.llm.config import resolve_llm_config

        return resolve_llm_config(name, self.ctx.llm if self.ctx else {})

    def engine(self) -> LLMEngine:
        """This process's engine for this step (created on first use, closed by :meth:`close`)."""
        eng = self.__dict__.get("_engine")
        if eng is None:
            if self.ctx is None:
                raise RuntimeError(f"step {self.name} needs a run context (Step.bind) to reach its LLM")
            eng = engine_for_step(
                self.name,
                self.ctx.llm,
                self.ctx.run_dir,
                no_cache=self.ctx.no_cache,
                max_cost_usd=self.ctx.max_cost_usd,
                processes=self.ctx.workers,
            )
            self._engine = eng
        return eng

    def complete(self, requests: Iterable[LLMRequest]) -> list[LLMResult]:
        eng = self.engine()
        try:
            return eng.complete_many(list(requests))
        finally:
            eng.flush()

    def close(self) -> None:
        eng = self.__dict__.pop("_engine", None)
        if eng is not None:
            eng.close()

    def __getstate__(self) -> dict[str, Any]:
        # engines hold sockets, threads and SQLite handles: each worker process makes its own
        state = dict(self.__dict__)
        state.pop("_engine", None)
        return state
