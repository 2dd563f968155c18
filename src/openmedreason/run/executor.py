"""Run a list of steps over shards, resumably.

Layout of a run directory, per step::

    RUN/<step>/_step.json                      chain fingerprint of this step (name, version, config, upstream)
    RUN/<step>/kept-SSSSS-BBBB.parquet         kept records of shard S, batch B
    RUN/<step>/rejected-SSSSS-BBBB.parquet     rejected records (all fields + reject_* columns)
    RUN/<step>/_markers/SSSSS-BBBB.json        batch done (counts, shard fingerprint)
    RUN/<step>/_markers/SSSSS.done.json        shard done (counts by reason, shard fingerprint)

Resume rules:
* A step whose chain fingerprint changed (its version or config, or those of a step before it)
  is wiped and recomputed; steps before it are untouched.
* A finished shard (done marker with a matching fingerprint) is skipped; inside an unfinished
  shard, finished batches are skipped. Parts are written atomically before their marker, and a
  batch's old parts are removed before it is recomputed, so a kill at any point never leaves a
  duplicate or a lost record.
* Each shard flows through all steps in one worker; memory is bounded by the batch size.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pyarrow.parquet as pq

from openmedreason.reasons import reason
from openmedreason.run.steps import Pending, Rejected, Step, StepResult, StopRun
from openmedreason.run.store import (
    iter_records,
    records_table,
    rejected_table,
    write_atomic,
    write_json_atomic,
)

DUPLICATE_ID = reason("run.duplicate_id", "a step emitted a record id already emitted earlier in the same shard")


@dataclass(frozen=True)
class Shard:
    """One unit of parallel work: its index, its first-step inputs and their fingerprint."""

    index: int
    items: tuple[Any, ...]
    fingerprint: str


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def chain_fingerprints(steps: Sequence[Step]) -> list[str]:
    out, prev = [], ""
    for step in steps:
        prev = _sha(prev, step.fingerprint())
        out.append(prev)
    return out


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class StepDir:
    """File naming for one step's output."""

    def __init__(self, root: Path, step: Step) -> None:
        self.path = root / step.name
        self.markers = self.path / "_markers"

    def kept(self, shard: int, batch: int) -> Path:
        return self.path / f"kept-{shard:05d}-{batch:04d}.parquet"

    def rejected(self, shard: int, batch: int) -> Path:
        return self.path / f"rejected-{shard:05d}-{batch:04d}.parquet"

    def batch_marker(self, shard: int, batch: int) -> Path:
        return self.markers / f"{shard:05d}-{batch:04d}.json"

    def done_marker(self, shard: int) -> Path:
        return self.markers / f"{shard:05d}.done.json"

    def kept_parts(self, shard: int) -> list[Path]:
        return sorted(self.path.glob(f"kept-{shard:05d}-*.parquet"))

    def shard_files(self, shard: int) -> list[Path]:
        return [
            *self.path.glob(f"kept-{shard:05d}-*"),
            *self.path.glob(f"rejected-{shard:05d}-*"),
            *self.markers.glob(f"{shard:05d}-*"),
            *self.markers.glob(f"{shard:05d}.done.json*"),
        ]


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _add_counts(totals: dict[str, Any], counts: dict[str, Any]) -> None:
    totals["in"] += counts["in"]
    totals["inputs"] += counts.get("inputs", counts["in"])
    totals["kept"] += counts["kept"]
    rej: Counter = totals["rejected"]
    rej.update(counts["rejected"])


def _verify(step: Step, batch: Sequence[Any], result: StepResult) -> None:
    if not step.one_to_one:
        return
    ids_in = Counter(r.id for r in batch)
    ids_out = Counter([r.id for r in result.kept] + [r.record.id for r in result.rejected])
    if ids_in != ids_out:
        missing = list((ids_in - ids_out).elements())[:5]
        extra = list((ids_out - ids_in).elements())[:5]
        raise RuntimeError(f"step {step.name} lost or invented records: missing={missing} extra={extra}")


def _read_ids(paths: Iterable[Path]) -> list[str]:
    ids: list[str] = []
    for p in paths:
        if p.exists():
            ids.extend(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return ids


def run_step_on_shard(
    sdir: StepDir,
    step: Step,
    shard: int,
    fingerprint: str,
    batches: Iterable[list[Any]],
) -> dict[str, Any]:
    """Process one shard through one step, skipping what a previous run finished."""
    done = _load(sdir.done_marker(shard))
    if done and done.get("fingerprint") == fingerprint:
        return done
    sdir.markers.mkdir(parents=True, exist_ok=True)
    # any trace of an older fingerprint for this shard is stale: remove it all
    stale = [
        m
        for m in sdir.markers.glob(f"{shard:05d}-*.json")
        if (_load(m) or {}).get("fingerprint") != fingerprint
    ]
    if stale or done:
        for f in sdir.shard_files(shard):
            f.unlink(missing_ok=True)

    totals: dict[str, Any] = {"in": 0, "inputs": 0, "kept": 0, "rejected": Counter()}
    seen: set[str] = set()
    n_batches = 0
    for b, batch in enumerate(batches):
        n_batches = b + 1
        marker = _load(sdir.batch_marker(shard, b))
        if marker and marker.get("fingerprint") == fingerprint:
            _add_counts(totals, marker)
            if not step.one_to_one:
                seen.update(_read_ids([sdir.kept(shard, b), sdir.rejected(shard, b)]))
            continue
        for p in (sdir.kept(shard, b), sdir.rejected(shard, b)):
            p.unlink(missing_ok=True)
        result = step.process(batch)
        _verify(step, batch, result)
        if not step.one_to_one:
            result = _dedupe(result, seen)
        if result.kept:
            write_atomic(records_table(result.kept, step.output), sdir.kept(shard, b))
        if result.rejected:
            write_atomic(rejected_table(result.rejected, step.output, step.name), sdir.rejected(shard, b))
        n_in = len(batch) if step.one_to_one else len(result.kept) + len(result.rejected)
        counts = {
            "fingerprint": fingerprint,
            "in": n_in,
            "inputs": len(batch),
            "kept": len(result.kept),
            "rejected": dict(Counter(r.reason for r in result.rejected)),
        }
        write_json_atomic(counts, sdir.batch_marker(shard, b))
        _add_counts(totals, counts)
    final = {
        "fingerprint": fingerprint,
        "batches": n_batches,
        "in": totals["in"],
        "inputs": totals["inputs"],
        "kept": totals["kept"],
        "rejected": dict(sorted(totals["rejected"].items())),
    }
    write_json_atomic(final, sdir.done_marker(shard))
    return final


def _dedupe(result: StepResult, seen: set[str]) -> StepResult:
    out = StepResult()
    for rec in result.kept:
        if rec.id in seen:
            out.rejected.append(Rejected(rec, DUPLICATE_ID, detail="kept earlier in this shard"))
        else:
            seen.add(rec.id)
            out.kept.append(rec)
    for rej in result.rejected:
        if rej.record.id in seen:
            out.rejected.append(Rejected(rej.record, DUPLICATE_ID, detail=f"also {rej.reason}"))
        else:
            seen.add(rej.record.id)
            out.rejected.append(rej)
    return out


def run_shard(root: Path, steps: Sequence[Step], shard: Shard, batch_size: int, first_batch: int) -> list[dict]:
    """Run one shard through every step in order; returns each step's shard counts."""
    try:
        return _run_shard(root, steps, shard, batch_size, first_batch)
    finally:
        for step in steps:
            step.close()


def _run_shard(root: Path, steps: Sequence[Step], shard: Shard, batch_size: int, first_batch: int) -> list[dict]:
    chain = chain_fingerprints(steps)
    results = []
    upstream_fp = shard.fingerprint
    upstream: StepDir | None = None
    for step, step_fp in zip(steps, chain):
        sdir = StepDir(root, step)
        fp = _sha(step_fp, upstream_fp)
        if upstream is None:
            batches: Iterable[list[Any]] = _batched(shard.items, first_batch)
        else:
            prev_model = steps[len(results) - 1].output
            batches = _batched(iter_records(upstream.kept_parts(shard.index), prev_model), batch_size)
        counts = run_step_on_shard(sdir, step, shard.index, fp, batches)
        results.append(counts)
        upstream, upstream_fp = sdir, fp
    return results


def prepare_run_dir(root: Path, steps: Sequence[Step], n_shards: int) -> None:
    """Wipe steps whose chain fingerprint changed, drop shards beyond the plan and temp files."""
    root.mkdir(parents=True, exist_ok=True)
    for step, fp in zip(steps, chain_fingerprints(steps)):
        sdir = StepDir(root, step)
        meta_path = sdir.path / "_step.json"
        meta = _load(meta_path)
        if meta and meta.get("fingerprint") != fp:
            shutil.rmtree(sdir.path)
        sdir.markers.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            {"fingerprint": fp, "name": step.name, "version": step.version, "config": step.config.model_dump(mode="json")},
            meta_path,
        )
        for tmp in [*sdir.path.glob("*.tmp"), *sdir.markers.glob("*.tmp")]:
            tmp.unlink(missing_ok=True)
        for f in [*sdir.path.glob("*-*.parquet"), *sdir.markers.glob("*.json")]:
            try:
                idx = int(f.name.split("-")[1] if f.suffix == ".parquet" else f.name[:5])
            except ValueError:
                continue
            if idx >= n_shards:
                f.unlink(missing_ok=True)


def funnel(root: Path, steps: Sequence[Step], n_shards: int) -> dict[str, Any]:
    """Aggregate the done markers of the planned shards: in = kept + sum(rejected) per step."""
    out: dict[str, Any] = {"steps": {}, "shards": n_shards}
    for step in steps:
        sdir = StepDir(root, step)
        totals: dict[str, Any] = {"in": 0, "inputs": 0, "kept": 0, "rejected": Counter()}
        complete = 0
        for s in range(n_shards):
            m = _load(sdir.done_marker(s))
            if m:
                complete += 1
                _add_counts(totals, m)
        rejected = dict(sorted(totals["rejected"].items()))
        if totals["in"] != totals["kept"] + sum(rejected.values()):  # not an assert: must hold under python -O
            raise RuntimeError(f"funnel mismatch in {step.name}: in != kept + rejected")
        out["steps"][step.name] = {
            "in": totals["in"],
            "kept": totals["kept"],
            "rejected": rejected,
            # records (or source units, for the first step) read; differs from "in" for fan-out steps
            "inputs": totals["inputs"],
            "shards_done": complete,
        }
    return out


def execute(
    root: Path,
    steps: Sequence[Step],
    shards: Sequence[Shard],
    *,
    workers: int = 1,
    batch_size: int = 256,
    first_batch: int = 4,
    on_shard_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``steps`` over ``shards`` in-process (workers=1) or in a process pool; return the funnel.

    A step may end the run early: :class:`StopRun` (e.g. budget reached) stops scheduling and is
    re-raised once running shards have ended; :class:`Pending` leaves that shard unfinished while
    the others go on, and a :class:`Pending` naming the waiting shards is raised at the end. In
    both cases every finished batch is kept and rerunning resumes.
    """
    prepare_run_dir(root, steps, len(shards))
    pending: list[int] = []
    stop: StopRun | None = None
    if workers <= 1:
        for shard in shards:
            try:
                run_shard(root, steps, shard, batch_size, first_batch)
            except Pending:
                pending.append(shard.index)
                continue
            except StopRun as exc:
                stop = exc
                break
            if on_shard_done:
                on_shard_done(shard.index)
    else:
        # spawn: forking a process that holds Arrow/OpenCV thread pools can deadlock
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(run_shard, root, steps, s, batch_size, first_batch): s.index for s in shards}
            for fut in cf.as_completed(futures):
                try:
                    fut.result()
                except Pending:
                    pending.append(futures[fut])
                    continue
                except StopRun as exc:
                    if stop is None:
                        stop = exc
                        for other in futures:
                            other.cancel()
                    continue
                except cf.CancelledError:
                    continue
                if on_shard_done:
                    on_shard_done(futures[fut])
    result = funnel(root, steps, len(shards))
    if stop is not None:
        stop.funnel = result  # type: ignore[attr-defined]
        raise stop
    if pending:
        exc = Pending(f"{len(pending)} shard(s) wait for remote work (e.g. Batch API jobs); rerun later to collect them")
        exc.shards = sorted(pending)  # type: ignore[attr-defined]
        exc.funnel = result  # type: ignore[attr-defined]
        raise exc
    return result


def step_outputs(root: Path, step_name: str, kind: str = "kept") -> list[Path]:
    """Sorted Parquet parts of a step's kept or rejected output."""
    return sorted((root / step_name).glob(f"{kind}-*.parquet"))
