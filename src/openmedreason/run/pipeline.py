"""The pipeline as a list of steps, and ``run``: plan shards, execute, write funnel and manifest."""

from __future__ import annotations

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
from openmedreason.run.steps import Pending, RunIncomplete, Step
from openmedreason.run.store import write_json_atomic

#: Step names in pipeline order; later issues append A2 → C2.
PIPELINE = ("ingest", "a1_pixels")


def build_steps(config: RunConfig, run_dir: Path, upto: str | None = None) -> list[Step]:
    from openmedreason.quality.pixels import A1Pixels

    factories: dict[str, Callable[[dict[str, Any]], Step]] = {
        "ingest": lambda c: Ingest(c, workdir=run_dir / "ingest" / "files"),
        "a1_pixels": lambda c: A1Pixels(c),
    }
    unknown = set(config.steps) - set(factories)
    if unknown:
        raise ValueError(f"config names unknown step(s): {sorted(unknown)}; known: {list(factories)}")
    steps = []
    for name in PIPELINE:
        steps.append(factories[name](config.step_config(name)))
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
    on_plan: Callable[[int], None] | None = None,
    on_shard_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the pipeline (or its prefix up to step ``upto``) over ``sources`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    units = plan_sources(sources, rows_per_unit=config.rows_per_unit)
    shards = plan_shards(units, config.shard_size)
    steps = build_steps(config, out, upto)
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
