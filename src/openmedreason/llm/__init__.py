"""LLM engine: any OpenAI-compatible endpoint, structured outputs, content-addressed cache,
retries, rate limits, budgets and usage accounting. Every LLM step goes through it.

Typical use inside a step (see ``docs/llm.md``)::

    from openmedreason.llm import LLMRequest, Message, engine_for_step

    engine = engine_for_step("b2_mcq", run_config.llm, run_dir, max_cost_usd=max_cost)
    results = engine.complete_many([
        LLMRequest(step="b2_mcq", template="b2_mcq", template_version="3",
                   messages=[Message.system(SYSTEM), Message.user(prompt, images=[panel.image_path])],
                   response_model=MCQ)
        for panel in batch
    ])
    for panel, r in zip(batch, results):
        if r.ok: ...  r.parsed, r.provenance()
        else:    ...  Rejected(panel, r.reason, detail=r.text)

Modules: :mod:`.config` (LLMConfig, resolve_llm_config), :mod:`.types` (requests, results, reject
codes), :mod:`.engine` (LLMEngine), :mod:`.cache` (SQLite cache, stats, clear), :mod:`.budget`
(Budget, BudgetExceeded, usage ledger, dry-run estimate), :mod:`.structured` (schemas, parsing,
repair), :mod:`.images` (data URLs), :mod:`.batch` (Batch API submit/poll/collect).
"""

from openmedreason.llm.batch import BatchPending, BatchState, batch_collect, batch_poll, batch_submit, complete_or_submit, run_batch
from openmedreason.llm.budget import (
    Budget,
    BudgetExceeded,
    Estimate,
    UsageLedger,
    estimate,
    write_usage_summary,
)
from openmedreason.llm.cache import LLMCache, cache_clear, cache_key, cache_stats
from openmedreason.llm.config import LLMConfig, LLMConfigError, resolve_llm_config
from openmedreason.llm.engine import LLMEngine, LLMFatalError, engine_for_step, request_key
from openmedreason.llm.types import (
    BAD_REQUEST,
    EMPTY_REPLY,
    IMAGE_UNREADABLE,
    INVALID_OUTPUT,
    LLM_REASONS,
    REFUSAL,
    REQUEST_FAILED,
    TRUNCATED,
    ImageInput,
    LLMRequest,
    LLMResult,
    Message,
    Usage,
)

__all__ = [
    "BAD_REQUEST",
    "EMPTY_REPLY",
    "IMAGE_UNREADABLE",
    "INVALID_OUTPUT",
    "LLM_REASONS",
    "REFUSAL",
    "REQUEST_FAILED",
    "TRUNCATED",
    "BatchPending",
    "BatchState",
    "Budget",
    "BudgetExceeded",
    "Estimate",
    "ImageInput",
    "LLMCache",
    "LLMConfig",
    "LLMConfigError",
    "LLMEngine",
    "LLMFatalError",
    "LLMRequest",
    "LLMResult",
    "Message",
    "Usage",
    "UsageLedger",
    "batch_collect",
    "batch_poll",
    "batch_submit",
    "cache_clear",
    "cache_key",
    "cache_stats",
    "complete_or_submit",
    "engine_for_step",
    "estimate",
    "request_key",
    "resolve_llm_config",
    "run_batch",
    "write_usage_summary",
]
