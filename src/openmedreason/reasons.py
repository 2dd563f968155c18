"""Registry of stable reject-reason codes.

Every module that rejects records declares its codes here through :func:`reason`, so that
``omr reasons`` and ``docs/reasons.md`` list every code with its meaning, and a typo in a code
fails loudly instead of inventing a new funnel row.
"""

from __future__ import annotations

REASONS: dict[str, str] = {}


def reason(code: str, description: str) -> str:
    """Register ``code`` (``<stage>.<what>``) with a one-line description and return it."""
    stage, _, what = code.partition(".")
    if not stage or not what:
        raise ValueError(f"reason code must look like 'stage.what': {code!r}")
    known = REASONS.get(code)
    if known is not None and known != description:
        raise ValueError(f"reason code {code!r} registered twice with different descriptions")
    REASONS[code] = description
    return code


def check(code: str) -> str:
    if code not in REASONS:
        raise KeyError(f"unregistered reject reason {code!r}; declare it with openmedreason.reasons.reason()")
    return code


def load_all() -> None:
    """Import every module that declares reasons, so that the registry is complete."""
    import importlib

    for mod in (
        "openmedreason.run.executor",
        "openmedreason.ingest.step",
        "openmedreason.ingest.jats",
        "openmedreason.ingest.oa_package",
        "openmedreason.ingest.records_source",
        "openmedreason.quality.pixels",
    ):
        importlib.import_module(mod)
