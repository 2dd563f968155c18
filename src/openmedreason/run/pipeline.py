"""The pipeline as a list of steps, and ``run``: plan shards, execute, write funnel and manifest."""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from openmedreason import __version__
from openmedreason.config import RunConfig
from openmedreason.ingest.sources import SourceUnit, plan_sources, units_fingerprint
from openmedreason.ingest.step import Ingest
from openmedreason.run.executor import Shard, chain_fingerprints, execute
from openmedreason.run.steps import Pending, RunContext, RunIncomplete, Step
from openmedreason.run.store import write_json_atomic

#: Step names in pipeline order (METHOD stage codes). Cheap rejecting checks come first: pixel
#: checks before any LLM call, and each LLM step runs its deterministic checks before calling.
PIPELINE = ("ingest", "a1_pixels", "a2_text", "b1_tasks", "b2_mcq", "c1_trace", "c2_verify")

#: curation steps: module and class; each takes ``engine`` (offline | llm) in its config
CURATION = {
    "a2_text": ("openmedreason.curate.a2", "A2Text"),
    "b1_tasks": ("openmedreason.curate.b1", "B1Tasks"),
    "b2_mcq": ("openmedreason.curate.b2", "B2Mcq"),
    "c1_trace": ("openmedreason.curate.c1", "C1Trace"),
    "c2_verify": ("openmedreason.curate.c2", "C2Verify"),
}


def step_class(name: str) -> type[Step]:
    if name == "ingest":
        return Ingest
    if name == "a1_pixels":
        from openmedreason.quality.pixels import A1Pixels

        return A1Pixels
    module, cls = CURATION[name]
    return getattr(importlib.import_module(module), cls)


def build_steps(config: RunConfig, run_dir: Path, upto: str | None = None, ctx: RunContext | None = None) -> list[Step]:
    """The pipeline's steps (or its prefix up to ``upto``), configured and bound to the run."""
    unknown = set(config.steps) - set(PIPELINE)
    if unknown:
        raise ValueError(f"config names unknown step(s): {sorted(unknown)}; known: {list(PIPELINE)}")
    ctx = ctx or RunContext(run_dir=run_dir, llm=config.llm)
    engine = config.resolved_engine()
    steps: list[Step] = []
    for name in PIPELINE:
        cls = step_class(name)
        cfg = config.step_config(name)
        fields = cls.Config.model_fields
        if "engine" in fields:
            cfg.setdefault("engine", engine)
        if "seed" in fields:
            cfg.setdefault("seed", config.seed)
        step = Ingest(cfg, workdir=run_dir / "ingest" / "files") if cls is Ingest else cls(cfg)
        steps.append(step.bind(ctx))
        if name == upto:
            break
    return steps


def plan_shards(units: Sequence[SourceUnit], shard_size: int) -> list[Shard]:
    shards = []
    for i, start in enumerate(range(0, len(units), shard_size)):
        chunk = tuple(units[start : start + shard_size])
        shards.append(Shard(index=i, items=chunk, fingerprint=units_fingerprint(chunk)))
    return shards


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(
    sources: Sequence[str | Path],
    out: Path,
    config: RunConfig,
    *,
    workers: int = 1,
    upto: str | None = None,
    max_cost_usd: float | None = None,
    no_cache: bool = False,
    on_plan: Callable[[int], None] | None = None,
    on_shard_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the pipeline (or its prefix up to step ``upto``) over ``sources`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    units = plan_sources(sources, rows_per_unit=config.rows_per_unit)
    shards = plan_shards(units, config.shard_size)
    ctx = RunContext(run_dir=out, llm=config.llm, max_cost_usd=max_cost_usd, no_cache=no_cache, workers=workers)
    steps = build_steps(config, out, upto, ctx)
    if on_plan:
        on_plan(len(shards))
    manifest: dict[str, Any] = {
        "package": "openmedreason",
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": sys.argv,
        "sources": [str(s) for s in sources],
        "source_units": len(units),
        "shards": len(shards),
        "config": config.model_dump(mode="json"),
        "config_hash": config.config_hash(),
        "seed": config.seed,
        "engine": config.resolved_engine(),
        "max_cost_usd": max_cost_usd,
        "no_cache": no_cache,
        "steps": [
            {"name": s.name, "version": s.version, "config": s.config.model_dump(mode="json"), "fingerprint": fp}
            for s, fp in zip(steps, chain_fingerprints(steps))
        ],
        "started": _now(),
        "finished": None,
        "status": "running",
    }
    write_json_atomic(manifest, out / "manifest.json")
    try:
        result = execute(
            out,
            steps,
            shards,
            workers=workers,
            batch_size=config.batch_size,
            first_batch=config.units_per_batch,
            on_shard_done=on_shard_done,
        )
    except RunIncomplete as exc:
        # keep what finished, say why the run is not complete; rerunning resumes
        partial = getattr(exc, "funnel", None)
        if partial is not None:
            write_json_atomic({**partial, "complete": False}, out / "funnel.json")
        status = "pending" if isinstance(exc, Pending) else "stopped"
        manifest.update(finished=_now(), status=status, stop_reason=str(exc), seconds=round(time.time() - started, 3))
        _finish(out, manifest)
        raise
    write_json_atomic({**result, "complete": True}, out / "funnel.json")
    manifest.update(finished=_now(), status="complete", seconds=round(time.time() - started, 3))
    _finish(out, manifest)
    return result


def _finish(out: Path, manifest: dict[str, Any]) -> None:
    if (out / "_llm").is_dir():
        from openmedreason.llm.budget import write_usage_summary

        write_usage_summary(out)
    write_json_atomic(manifest, out / "manifest.json")


def load_funnel(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "funnel.json").read_text())


def dry_run(sources: Sequence[str | Path], out: Path, config: RunConfig, *, workers: int = 1) -> dict[str, Any]:
    """Plan the run and estimate its LLM spend without a paid call.

    The steps before the first LLM step cost nothing (parsing, pixel checks), so they run for real
    (their output is reused by the real run); each LLM step then estimates its calls, tokens and
    cost from a sample of the records that would reach it.
    """
    out = Path(out)
    steps = build_steps(config, out)
    free = []
    for step in steps:
        if step.uses_llm:
            break
        free.append(step.name)
    units = plan_sources(sources, rows_per_unit=config.rows_per_unit)
    report: dict[str, Any] = {"source_units": len(units), "shards": len(plan_shards(units, config.shard_size))}
    result = run(sources, out, config, workers=workers, upto=free[-1] if free else None) if free else None
    report["free_steps"] = result["steps"] if result else {}
    llm_steps = [s for s in steps if s.uses_llm]
    report["llm_steps"] = {}
    if llm_steps and result:
        from openmedreason.run.store import iter_records

        last = steps[len(free) - 1]
        total = result["steps"][last.name]["kept"]
        parts = sorted((out / last.name).glob("kept-*.parquet"))
        sample = []
        for rec in iter_records(parts, last.output):
            sample.append(rec)
            if len(sample) >= 200:
                break
        for step in llm_steps:
            report["llm_steps"][step.name] = step.estimate(sample, total)
    return report
