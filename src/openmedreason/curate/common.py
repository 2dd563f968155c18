"""Helpers shared by the curation steps: provenance entries, LLM-failure rejects, dry-run estimates."""

from __future__ import annotations

from typing import Sequence

from openmedreason.llm import Estimate, LLMRequest, LLMResult, estimate
from openmedreason.records import Provenance, Record
from openmedreason.run.steps import Rejected


def offline_provenance(step: str, version: str) -> Provenance:
    return Provenance(step=step, engine="offline", template=f"offline-{step}@{version}")


def llm_provenance(step: str, result: LLMResult) -> Provenance:
    return Provenance(step=step, engine="llm", **result.provenance())


def llm_failure(record: Record, result: LLMResult, what: str) -> Rejected:
    """Reject ``record`` with the engine's reason for a failed call, keeping the raw reply."""
    detail = f"{what}: {result.detail or result.reason}"
    if result.text:
        detail += f"; raw reply: {result.text[:4000]}"
    return Rejected(record, result.reason or "llm.invalid_output", detail=detail)


def scaled_estimate(config, requests: Sequence[LLMRequest], sample_size: int, total: int) -> Estimate:
    """:func:`openmedreason.llm.estimate` of the requests built for a sample of ``sample_size``
    input records, scaled to ``total`` records."""
    est = estimate(config, list(requests))
    scale = total / sample_size if sample_size else 0.0
    est.calls = round(est.calls * scale)
    est.images = round(est.images * scale)
    est.prompt_tokens = round(est.prompt_tokens * scale)
    est.completion_tokens = round(est.completion_tokens * scale)
    est.cost_usd *= scale
    est.notes.append(f"measured on {sample_size} sampled records, scaled x{scale:.2f} to {total}")
    return est
