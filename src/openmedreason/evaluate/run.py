"""``omr eval``: run a model on a benchmark, score it, judge its traces, write results.

:func:`evaluate` does, in chunks of jobs (item × sample), each chunk written before the next
starts:

1. the runner produces the responses (:mod:`.runners`; endpoint replies are cached);
2. closed items: :func:`openmedreason.bench.answers.extract_answer` restricted to the item's
   letters; strict scoring (an invalid answer is wrong; no random or nearest-option fallback);
   optionally an LLM extractor on the leftovers, reported separately; open items: normalised
   exact match, plus the optional LLM judge reported separately (:mod:`.open_answers`);
3. items with PKR rubric units are judged (LLM judge: per-axis or batched; offline lexical judge
   when no endpoint; ``judge="none"`` skips); a judge error marks its unit, which is excluded and
   counted;
4. one line per job is appended to ``OUT/items.jsonl`` and flushed.

Then ``OUT/results.json`` (aggregates with clustered bootstrap CIs), ``OUT/manifest.json``,
``OUT/report.md`` and PNG plots are written. A crashed or interrupted eval resumes from
``items.jsonl``: complete lines are kept, lines without a response are rerun, lines with judge
errors are re-judged (successful judge calls come back from the cache).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from pydantic import BaseModel

from openmedreason.config import endpoint_configured as _endpoint_configured
from openmedreason.bench.items import AXES, BenchItem, UnitJudgement
from openmedreason.evaluate.runners import Generation, Job, Protocol, Runner, make_runner, prompt_hash, prompts_manifest
from openmedreason.run.store import write_json_atomic

SCHEMA = "omr-eval/1"
ITEMS = "items.jsonl"
RESULTS = "results.json"
MANIFEST = "manifest.json"
REPORT = "report.md"

#: the rules that decide correctness, written into results.json (never switched silently)
SCORING = {
    "closed": "strict: openmedreason.bench.answers.extract_answer restricted to the item's letters; an invalid or missing "
    "answer counts as wrong; no random or nearest-option fallback",
    "open": "normalised exact match (lower case, punctuation and articles removed, yes/no synonyms mapped)",
    "no_response": "an item whose request failed counts as wrong and is listed under 'errors' (rerun to retry)",
}

#: extractor outcomes the optional LLM extractor may look at (explicitly invalid answers stay invalid)
LLM_EXTRACTABLE = frozenset({"no_answer", "unparseable_tag", "ambiguous"})


class EvalError(ValueError):
    """The evaluation cannot start (bad bench path, mismatching output folder, no judge endpoint)."""


# ------------------------------------------------------------------------------------ helpers
def _llm_sections(config: Any) -> dict[str, dict[str, Any]]:
    """The ``[llm.*]`` sections of ``config``: a RunConfig, a TOML path, ``{"llm": {...}}`` or the
    sections themselves."""
    if config is None:
        return {}
    if isinstance(config, (str, Path)):
        from openmedreason.config import load_config

        config = load_config(Path(config))
    if hasattr(config, "llm"):
        return dict(config.llm)
    if isinstance(config, Mapping):
        return dict(config.get("llm", config))
    raise TypeError(f"config must be a RunConfig or a mapping of [llm.*] sections, not {type(config).__name__}")


def endpoint_configured(llm_sections: Mapping[str, Any], step: str = "judge", env: Mapping[str, str] | None = None) -> bool:
    """True when an LLM endpoint is configured for ``step`` (env, ``[llm.default]`` or ``[llm.<step>]``)."""
    return _endpoint_configured(llm_sections, step, env)


def item_hash(item: BenchItem) -> str:
    h = hashlib.sha256()
    img = item.image_bytes()
    for part in (item.id, item.kind, item.question, "\x1f".join(item.options), item.answer,
                 hashlib.sha256(img).hexdigest() if img else "-"):
        h.update(part.encode())
        h.update(b"\0")
    for axis in AXES:
        for u in item.units(axis):
            h.update(json.dumps(u.model_dump(), sort_keys=True).encode())
    return h.hexdigest()


def dataset_hash(items: Sequence[BenchItem]) -> str:
    """sha256 over the evaluated items' content (id, question, options, answer, image, rubric),
    in order: the same items give the same hash whatever file layout they came from."""
    h = hashlib.sha256()
    for it in items:
        h.update(item_hash(it).encode())
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("openmedreason", "openai", "pyarrow", "datasets", "numpy", "transformers", "torch", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Lines of an ``items.jsonl``; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return out


def latest_lines(lines: Iterable[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(id, sample) → its last line (a re-judged line supersedes the earlier one)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for ln in lines:
        out[(ln["id"], int(ln.get("sample", 0)))] = ln
    return out


def _repair_tail(path: Path) -> None:
    """Drop a torn last line so that appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with path.open("r+b") as fh:
        fh.truncate(cut)


# ------------------------------------------------------------------------------------ judges
def make_judge(kind: str, mode: str, llm_sections: Mapping[str, Any], out: Path, *, env: Mapping[str, str] | None = None,
               no_cache: bool = False, max_cost_usd: float | None = None, seed: int = 0) -> tuple[Any, Any]:
    """(PKR judge or None, judge engine or None) for ``kind`` auto|offline|llm|none."""
    if kind not in ("auto", "offline", "llm", "none"):
        raise EvalError(f"--judge must be auto, offline, llm or none, not {kind!r}")
    if mode not in ("per_axis", "batched"):
        raise EvalError(f"--judge-mode must be per_axis or batched, not {mode!r}")
    if kind == "none":
        return None, None
    if kind == "auto":
        kind = "llm" if endpoint_configured(llm_sections, "judge", env) else "offline"
    from openmedreason.evaluate.judge import LLMJudge, OfflineJudge

    if kind == "offline":
        return OfflineJudge(), None
    from openmedreason.llm import LLMConfigError, engine_for_step

    try:
        engine = engine_for_step("judge", llm_sections, out, no_cache=no_cache, max_cost_usd=max_cost_usd, env=env)
    except LLMConfigError as exc:
        raise EvalError(f"--judge llm needs a judge endpoint ([llm.judge] / [llm.default] or OMR_LLM_MODEL): {exc}") from exc
    return LLMJudge(engine, mode=mode, seed=seed), engine


def judge_info(judge: Any) -> dict[str, Any] | None:
    if judge is None:
        return None
    info: dict[str, Any] = {"name": getattr(judge, "name", type(judge).__name__)}
    describe = getattr(judge, "describe", None)
    if callable(describe):
        d = describe()
        info.update(d if isinstance(d, dict) else {"description": d})
    return info


# ------------------------------------------------------------------------------------ scoring one line
def score_response(item: BenchItem, gen: Generation) -> dict[str, Any]:
    """The answer part of an items.jsonl line for one response (no judging)."""
    from openmedreason.bench.answers import extract_answer
    from openmedreason.evaluate.open_answers import exact_match, extract_open

    rec: dict[str, Any] = {"gold": item.answer}
    if gen.error:
        rec.update(extracted=None, method="no_response", invalid_reason="no_response", correct=False)
        return rec
    if item.kind == "mcq":
        ex = extract_answer(gen.text, letters=item.letters, options=item.options)
        rec.update(
            extracted=ex.letter,
            method=ex.method,
            invalid_reason=ex.invalid_reason,
            candidates=list(ex.candidates),
            correct=ex.letter is not None and ex.letter == item.answer.strip().upper(),
        )
    else:
        ex = extract_open(gen.text)
        rec.update(extracted=ex.text, method=ex.method, invalid_reason=None if ex.text else "no_answer",
                   correct=exact_match(ex.text, item.answer))
    return rec


def _unit_dicts(judgements: Sequence[UnitJudgement]) -> list[dict[str, Any]]:
    return [j.model_dump() for j in judgements]


def _judge_complete(line: Mapping[str, Any]) -> bool:
    """A line is complete when it has a response and, if judged, no unit carries a judge error."""
    if line.get("error"):
        return False
    if line.get("judge_pending"):
        return False
    return not any(u.get("error") for u in line.get("units") or [])


# ------------------------------------------------------------------------------------ evaluate
def evaluate(
    bench: str | Path,
    model: str,
    out: str | Path,
    *,
    base_url: str | None = None,
    config: Any = None,
    judge: str = "auto",
    judge_mode: str = "per_axis",
    samples: int = 1,
    seed: int = 0,
    limit: int | None = None,
    judge_check: int = 0,
    llm_extractor: bool = False,
    benchmark: str | None = None,
    split: str = "test",
    no_cache: bool = False,
    max_cost_usd: float | None = None,
    max_tokens: int | None = None,
    env: Mapping[str, str] | None = None,
    runner: Runner | None = None,
    hf_options: Mapping[str, Any] | None = None,
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the benchmark at ``bench``; write ``out/`` and return results.json's dict.

    ``model``: ``builtin:reference`` (oracle replaying the reference traces), ``builtin:blind``
    (text-only baseline), ``hf:<name-or-path>`` (local transformers) or a model id at the
    OpenAI-compatible endpoint (``base_url``, else ``[llm.eval]``/``[llm.default]``/``OMR_LLM_BASE_URL``).
    ``config``: a :class:`~openmedreason.config.RunConfig` or a mapping of ``[llm.*]`` sections.
    ``judge``: ``auto`` (LLM judge when an endpoint is configured, else offline), ``offline``,
    ``llm`` or ``none``; ``judge_mode``: ``per_axis`` (3 calls per response, as published) or
    ``batched`` (1 call). ``samples``: 1 = greedy; k > 1 = k sampled responses per item at the
    published settings. ``limit``: only the first N items. ``judge_check``: re-judge N items for
    test–retest and per-axis vs batched agreement. ``llm_extractor``: an LLM reads the replies the
    rule extractor found no answer in (reported separately). ``progress(done, total)`` is called
    after each chunk. Rerunning with the same arguments resumes.

    Also: ``benchmark``/``split`` (passed to ``load_items``), ``no_cache``, ``max_cost_usd``
    (``--max-cost``, over model, judge and extractor calls), ``max_tokens`` (reply cap of the
    model under test), ``env`` (where endpoint variables and keys are read; default
    ``os.environ``), ``runner`` (a ready :class:`~.runners.Runner` instead of one made from
    ``model``), ``hf_options`` (``TransformersRunner`` keyword arguments), ``chunk_size`` (jobs
    per written chunk; default eight times the endpoint's concurrency, so scoring a chunk rarely leaves the endpoint idle).
    """
    from openmedreason.bench.loaders import load_items

    out = Path(out)
    if samples < 1:
        raise EvalError("--samples must be at least 1")
    llm = _llm_sections(config)
    started = time.time()

    try:
        items = load_items(bench, benchmark=benchmark, split=split)
    except (FileNotFoundError, ValueError) as exc:
        raise EvalError(f"cannot load the benchmark at {bench}: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    n_loaded = len(items)
    if limit is not None:
        items = items[: max(0, limit)]
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise EvalError(f"the benchmark has duplicate item ids (e.g. {dup!r}); ids must be unique")

    protocol = Protocol(samples=samples, seed=seed, max_tokens=max_tokens)
    pkr_judge, judge_engine = make_judge(judge, judge_mode, llm, out, env=env, no_cache=no_cache, max_cost_usd=max_cost_usd, seed=seed)
    jinfo = judge_info(pkr_judge)
    resume_key = {
        "schema": SCHEMA,
        "model": model,
        "protocol": protocol.describe(),
        "prompts": prompts_manifest(),
        "judge": None if jinfo is None else {"name": jinfo.get("name"), "mode": judge_mode if judge_engine is not None else None},
        "llm_extractor": bool(llm_extractor),
    }
    items_path = out / ITEMS
    manifest_path = out / MANIFEST
    existing = read_lines(items_path)
    if existing and manifest_path.exists():
        old = json.loads(manifest_path.read_text()).get("resume_key")
        if old is not None and old != resume_key:
            raise EvalError(
                f"{out} already holds an evaluation with other settings; use a new --out or delete it. "
                f"was: {json.dumps(old, sort_keys=True)[:300]}"
            )
    done = latest_lines(existing)

    if runner is None:
        runner = make_runner(model, out, llm_sections=llm, base_url=base_url, env=env, no_cache=no_cache,
                             max_cost_usd=max_cost_usd, hf_options=hf_options)
    extract_engine = None
    if llm_extractor:
        if not endpoint_configured(llm, "extract", env):
            raise EvalError("--llm-extractor needs an LLM endpoint ([llm.extract] / [llm.default] or OMR_LLM_MODEL)")
        from openmedreason.llm import engine_for_step

        extract_engine = engine_for_step("extract", llm, out, no_cache=no_cache, max_cost_usd=max_cost_usd, env=env)

    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "status": "running",
        "resume_key": resume_key,
        "bench": {"path": str(Path(bench).resolve()), "benchmark": benchmark, "split": split, "n_loaded": n_loaded,
                  "n_evaluated": len(items), "limit": limit, "content_sha256": dataset_hash(items)},
        "model": runner.describe(),
        "protocol": protocol.describe(),
        "judge": {**(jinfo or {"name": None}), "requested": judge, "mode": judge_mode if judge_engine is not None else None,
                  "model_config": _engine_public(judge_engine)},
        "llm_extractor": _engine_public(extract_engine) if extract_engine is not None else None,
        "prompts": {**prompts_manifest(), **_extra_prompts(judge_engine is not None, extract_engine is not None)},
        "seed": seed,
        "package_versions": package_versions(),
        "command": " ".join(sys.argv) if sys.argv and "omr" in Path(sys.argv[0]).name else None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }
    write_json_atomic(manifest, manifest_path)

    jobs = [Job(it, s) for it in items for s in range(samples)]
    todo = [j for j in jobs if (j.item.id, j.sample) not in done or done[(j.item.id, j.sample)].get("error")]
    rejudge = [j for j in jobs if (j.item.id, j.sample) in done and not done[(j.item.id, j.sample)].get("error")
               and not _judge_complete(done[(j.item.id, j.sample)])]
    if chunk_size is None:
        conc = getattr(getattr(getattr(runner, "engine", None), "config", None), "concurrency", 0)
        chunk_size = max(8, min(256, 8 * conc)) if conc else 64
    total = len(jobs)
    finished = total - len(todo) - len(rejudge)
    if progress:
        progress(finished, total)

    _repair_tail(items_path)
    stats = Counter()
    from openmedreason.llm import REQUEST_FAILED

    answered = any(not ln.get("error") for ln in done.values())
    try:
        with items_path.open("a", encoding="utf-8") as fh:
            # lines whose judging was interrupted or failed: the responses are kept, only judging reruns
            for start in range(0, len(rejudge), chunk_size):
                chunk = rejudge[start : start + chunk_size]
                lines = [dict(done[(j.item.id, j.sample)]) for j in chunk]
                _judge_lines(chunk, lines, pkr_judge, stats)
                _emit(fh, lines)
                finished += len(chunk)
                if progress:
                    progress(finished, total)
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start : start + chunk_size]
                gens = runner.generate(chunk, protocol)
                lines = [_line(j, g) for j, g in zip(chunk, gens)]
                if extract_engine is not None:
                    _llm_extract(chunk, lines, extract_engine, stats)
                if judge_engine is not None:
                    _open_judge(chunk, lines, judge_engine)
                # responses are written before judging, so a crash while judging keeps them
                # (the resumed run only re-judges those lines)
                to_judge = [i for i, (j, ln) in enumerate(zip(chunk, lines))
                            if pkr_judge is not None and not ln.get("error") and j.item.has_rubric()]
                for i in to_judge:
                    lines[i]["judge_pending"] = True
                _emit(fh, lines)
                if to_judge:
                    sub_jobs = [chunk[i] for i in to_judge]
                    sub_lines = [lines[i] for i in to_judge]
                    _judge_lines(sub_jobs, sub_lines, pkr_judge, stats)
                    _emit(fh, sub_lines)
                finished += len(chunk)
                if progress:
                    progress(finished, total)
                answered = answered or any(not g.error for g in gens)
                if not answered and all(g.error == REQUEST_FAILED for g in gens):
                    # never a reply, in this folder or this run: a wrong URL or a server that is
                    # down; stop instead of failing every item (item-specific errors go on)
                    g = gens[0]
                    raise EvalError(f"the endpoint answered none of the first {len(gens)} requests ({g.error}: {g.detail}); "
                                    "check --base-url and the server, then rerun the same command to resume")
        final = latest_lines(read_lines(items_path))
        _compact(items_path, jobs, final)
        check = None
        if judge_check and pkr_judge is not None:
            check = run_judge_check(items, final, judge_check, pkr_judge, seed)
        results = compute_results(items, final, samples=samples, seed=seed)
        results["scoring"] = {**SCORING, "pkr_judge": jinfo, "judge_mode": judge_mode if judge_engine is not None else None,
                              "llm_extractor": "separate figure (accuracy_with_llm_extractor); never in the strict figure"
                              if extract_engine is not None else None,
                              "open_llm_judge": "separate figure (open.llm_judge)" if judge_engine is not None else None}
        results["judge_check"] = check
        results["model"] = {"name": model, "server_models": manifest["model"].get("server_models")}
        results["bench"] = manifest["bench"]
        if extract_engine is None:
            results.pop("llm_extractor", None)
    finally:
        runner.close()
        for eng in (judge_engine, extract_engine):
            if eng is not None:
                eng.close()

    usage = None
    if (out / "_llm").exists():
        from openmedreason.llm import write_usage_summary

        usage = write_usage_summary(out)
    results["usage"] = usage
    manifest["model"] = runner.describe()
    if pkr_judge is not None:
        manifest["judge"].update(judge_info(pkr_judge) or {})
    manifest["status"] = "complete"
    manifest["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["wall_s"] = round(time.time() - started, 2)
    manifest["resume"] = {"lines_kept": len(done), "generated": len(todo), "rejudged": len(rejudge)}
    results["model"]["server_models"] = manifest["model"].get("server_models")
    write_json_atomic(manifest, manifest_path)
    write_json_atomic(results, out / RESULTS)
    from openmedreason.evaluate.report import write_report

    write_report(out, results, manifest)
    return results


def _engine_public(engine: Any) -> dict[str, Any] | None:
    if engine is None:
        return None
    from openmedreason.llm.engine import redact_url

    cfg = engine.config
    return {"model": cfg.model, "base_url": redact_url(cfg.base_url), "temperature": cfg.temperature, "seed": cfg.seed,
            "config_fingerprint": cfg.fingerprint()}


def _extra_prompts(judge_llm: bool, extractor: bool) -> dict[str, Any]:
    from openmedreason.prompts import load

    out = {}
    names = (["open_judge"] if judge_llm else []) + (["eval_extract"] if extractor else [])
    for name in names:
        t = load(name)
        out[name] = {"id": t.id, "sha256": hashlib.sha256((t.system + "\0" + t.user).encode()).hexdigest()[:16]}
    return out


def _line(job: Job, gen: Generation) -> dict[str, Any]:
    it = job.item
    line: dict[str, Any] = {
        "id": it.id,
        "sample": job.sample,
        "benchmark": it.benchmark,
        "kind": it.kind,
        "cluster": it.cluster_key,
        "category": it.category,
        "family": it.family,
        "modality": it.modality,
        "prompt_hash": prompt_hash(it),
        "response": gen.text,
        "finish_reason": gen.finish_reason,
        "truncated": gen.truncated,
        "refusal": gen.refusal,
        "stop_appended": gen.stop_appended,
        "model": gen.model,
        "cached": gen.cached,
        "error": gen.error,
        "error_detail": gen.detail if gen.error else None,
    }
    line.update(score_response(it, gen))
    line["units"] = None
    line["pkr"] = None
    return line


def _emit(fh: Any, lines: Sequence[dict[str, Any]]) -> None:
    for ln in lines:
        fh.write(json.dumps(ln, ensure_ascii=False, default=str) + "\n")
    fh.flush()


def _compact(path: Path, jobs: Sequence[Job], final: Mapping[tuple[str, int], dict[str, Any]]) -> None:
    """Rewrite items.jsonl with one line per job, in benchmark order (atomic replace). Lines of
    items outside this run's selection (an earlier run with a larger ``limit``) are kept after."""
    order = [(j.item.id, j.sample) for j in jobs]
    seen = set(order)
    extra = [k for k in final if k not in seen]
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for key in order + extra:
            if key in final:
                fh.write(json.dumps(final[key], ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def _judge_lines(chunk: Sequence[Job], lines: list[dict[str, Any]], judge: Any, stats: Counter) -> None:
    """Judge the PKR units of the lines whose item has a rubric and whose response exists."""
    from openmedreason.bench.score import score_item

    if judge is None:
        for ln in lines:
            ln["units"], ln["pkr"], ln["judge_pending"] = None, None, False
        return
    pairs, where = [], []
    for i, (job, ln) in enumerate(zip(chunk, lines)):
        if ln.get("error") or not job.item.has_rubric():
            ln["units"], ln["pkr"], ln["judge_pending"] = None, None, False
            continue
        pairs.append((job.item, ln.get("response") or ""))
        where.append(i)
    if not pairs:
        return
    verdicts = judge.judge(pairs)
    for i, (item, _), judgements in zip(where, pairs, verdicts):
        ln = lines[i]
        ln["units"] = _unit_dicts(judgements)
        ln["pkr"] = score_item(judgements, item).to_dict()
        ln["judge_pending"] = False
        stats["judged"] += 1


def _dump(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return obj


def _open_judge(chunk: Sequence[Job], lines: list[dict[str, Any]], engine: Any) -> None:
    from openmedreason.evaluate.open_answers import judge_open

    idx = [i for i, (j, ln) in enumerate(zip(chunk, lines)) if j.item.kind == "open" and not ln.get("error")]
    if not idx:
        return
    verdicts = judge_open(engine, [(chunk[i].item.question, chunk[i].item.answer, lines[i].get("extracted")) for i in idx])
    for i, v in zip(idx, verdicts):
        lines[i]["open_llm_judge"] = v


class _Letter(BaseModel):
    letter: str


def _llm_extract(chunk: Sequence[Job], lines: list[dict[str, Any]], engine: Any, stats: Counter) -> None:
    """The optional LLM extractor, only on replies where the rules found no answer."""
    from openmedreason.llm import LLMRequest, Message
    from openmedreason.prompts import load

    tpl = load("eval_extract")
    idx = [i for i, (j, ln) in enumerate(zip(chunk, lines))
           if j.item.kind == "mcq" and not ln.get("error") and ln.get("extracted") is None and ln.get("invalid_reason") in LLM_EXTRACTABLE]
    if not idx:
        return
    reqs = []
    for i in idx:
        it = chunk[i].item
        system, user = tpl.render(question=it.question_text(), reply=lines[i].get("response") or "")
        reqs.append(LLMRequest(step="extract", template=tpl.name, template_version=tpl.version,
                               messages=[Message.system(system), Message.user(user)], response_model=_Letter,
                               overrides={"temperature": 0.0}))
    for i, r in zip(idx, engine.complete_many(reqs)):
        it = chunk[i].item
        raw = (r.parsed.letter.strip().upper() if (r.ok and r.parsed is not None) else None)
        letter = raw if raw and len(raw) == 1 and raw in it.letters else None
        lines[i]["llm_extractor"] = {"letter": letter, "raw": raw, "error": None if r.ok else r.reason, "model": r.model}
        stats["llm_extracted"] += 1


# ------------------------------------------------------------------------------------ results
def _ci(values: Sequence[float], clusters: Sequence[str], seed: int) -> dict[str, Any]:
    from openmedreason.bench.stats import bootstrap_ci

    if not values:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    mean, lo, hi = bootstrap_ci(list(values), list(clusters), seed=seed)
    return {"n": len(values), "mean": mean, "lo": lo, "hi": hi}


def _breakdown(values: Sequence[float], keys: Sequence[str], clusters: Sequence[str], seed: int) -> dict[str, Any]:
    from openmedreason.bench.stats import breakdown

    if not values:
        return {}
    res = breakdown(list(values), list(keys), list(clusters), seed=seed)
    return {str(k): v for k, v in res.items()}  # each v is {"n", "mean", "lo", "hi"}


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _correct_with_extractor(ln: Mapping[str, Any]) -> bool:
    if ln.get("correct"):
        return True
    ex = ln.get("llm_extractor") or {}
    return bool(ex.get("letter")) and ex["letter"] == str(ln.get("gold", "")).strip().upper()


def compute_results(items: Sequence[BenchItem], lines: Mapping[tuple[str, int], Mapping[str, Any]], *, samples: int = 1,
                    seed: int = 0) -> dict[str, Any]:
    """Every aggregate of results.json from the items and their items.jsonl lines.

    Accuracy values are per item (the mean over its samples) so that the bootstrap resamples
    articles (``item.cluster_key``), not responses. Items with no line at all (never answered)
    count as wrong and are listed as ``missing``; lines with an ``error`` count as wrong and are
    listed under ``errors``. The denominator is always every evaluated item.
    """
    per_item: list[tuple[BenchItem, list[Mapping[str, Any]]]] = []
    missing = []
    for it in items:
        ls = [lines[(it.id, s)] for s in range(samples) if (it.id, s) in lines]
        if len(ls) < samples:
            missing.append(it.id)
        per_item.append((it, ls))

    def acc(ls: Sequence[Mapping[str, Any]]) -> float:
        return sum(1.0 for ln in ls if ln.get("correct")) / samples

    vals = [acc(ls) for _, ls in per_item]
    clusters = [it.cluster_key for it, _ in per_item]
    keys = {
        "benchmark": [it.benchmark for it, _ in per_item],
        "family": [it.family or "unknown" for it, _ in per_item],
        "category": [it.category or "unknown" for it, _ in per_item],
        "modality": [it.modality or "unknown" for it, _ in per_item],
        "kind": [it.kind for it, _ in per_item],
    }
    all_lines = [ln for _, ls in per_item for ln in ls]
    closed = [(it, ls) for it, ls in per_item if it.kind == "mcq"]
    opened = [(it, ls) for it, ls in per_item if it.kind == "open"]
    closed_lines = [ln for _, ls in closed for ln in ls]
    n_closed_resp = len(closed) * samples
    invalid = [ln for ln in closed_lines if ln.get("extracted") is None and not ln.get("error")]

    res: dict[str, Any] = {
        "schema": SCHEMA,
        "n_items": len(items),
        "n_clusters": len(set(clusters)),
        "samples": samples,
        "n_responses_expected": len(items) * samples,
        "n_responses": len(all_lines),
        "accuracy": {
            "overall": _ci(vals, clusters, seed),
            **{f"by_{k}": _breakdown(vals, v, clusters, seed) for k, v in keys.items()},
        },
        "closed": {
            "n_items": len(closed),
            "acc_strict": _ci([acc(ls) for _, ls in closed], [it.cluster_key for it, _ in closed], seed),
            "invalid_rate": (len(invalid) / n_closed_resp) if n_closed_resp else None,
            "n_invalid": len(invalid),
            "invalid_reasons": dict(Counter(ln.get("invalid_reason") or "?" for ln in invalid).most_common()),
            "methods": dict(Counter(ln.get("method") for ln in closed_lines if not ln.get("error")).most_common()),
        },
        "open": None,
        "truncated": sum(1 for ln in all_lines if ln.get("truncated")),
        "truncated_rate": (sum(1 for ln in all_lines if ln.get("truncated")) / len(all_lines)) if all_lines else None,
        "refusals": sum(1 for ln in all_lines if ln.get("refusal")),
        "stop_appended": sum(1 for ln in all_lines if ln.get("stop_appended")),
        "errors": {"n": sum(1 for ln in all_lines if ln.get("error")),
                   "by_reason": dict(Counter(ln["error"] for ln in all_lines if ln.get("error"))),
                   "ids": sorted({ln["id"] for ln in all_lines if ln.get("error")})[:50]},
        "missing": {"n": len(missing), "ids": missing[:50]},
        "skipped": {"n": sum(1 for ln in all_lines if ln.get("error")) + len(missing),
                    "note": "counted as wrong: the denominator is every evaluated item"},
    }
    if opened:
        em = [acc(ls) for _, ls in opened]
        judged = [ln.get("open_llm_judge") for _, ls in opened for ln in ls]
        open_res: dict[str, Any] = {"n_items": len(opened), "exact_match": _ci(em, [it.cluster_key for it, _ in opened], seed),
                                    "llm_judge": None}
        if any(j is not None for j in judged):
            ok = [j for j in judged if j and j.get("correct") is not None]
            per = [sum(1.0 for ln in ls if (ln.get("open_llm_judge") or {}).get("correct")) / samples for _, ls in opened]
            open_res["llm_judge"] = {**_ci(per, [it.cluster_key for it, _ in opened], seed), "n_graded": len(ok),
                                     "n_errors": sum(1 for j in judged if j and j.get("error")),
                                     "note": "separate figure; the headline is exact_match"}
        res["open"] = open_res
    if any("llm_extractor" in ln for ln in closed_lines):
        ext = [ln["llm_extractor"] for ln in closed_lines if "llm_extractor" in ln]
        res["llm_extractor"] = {
            "n_attempted": len(ext),
            "n_recovered": sum(1 for e in ext if e.get("letter")),
            "n_errors": sum(1 for e in ext if e.get("error")),
            "accuracy_with_llm_extractor": _ci([sum(1.0 for ln in ls if _correct_with_extractor(ln)) / samples for _, ls in closed],
                                               [it.cluster_key for it, _ in closed], seed),
            "note": "separate figure; acc_strict never uses the LLM extractor",
        }
    if samples > 1:
        res["sampling"] = _sampling_metrics(per_item, samples, seed)
    res["pkr"] = pkr_results(per_item, seed)
    return res


def _sampling_metrics(per_item: Sequence[tuple[BenchItem, list[Mapping[str, Any]]]], samples: int, seed: int) -> dict[str, Any]:
    """pass@k (any sample correct) and maj@k (the most frequent valid answer is correct; ties and
    all-invalid count as wrong)."""
    pass_k, maj_k, cl = [], [], []
    for it, ls in per_item:
        cl.append(it.cluster_key)
        pass_k.append(1.0 if any(ln.get("correct") for ln in ls) else 0.0)
        votes = Counter(ln.get("extracted") if it.kind == "mcq" else (ln.get("extracted") or "").lower() for ln in ls
                        if ln.get("extracted"))
        top = votes.most_common(2)
        if top and (len(top) == 1 or top[0][1] > top[1][1]):
            winner = top[0][0]
            line = next(ln for ln in ls if (ln.get("extracted") if it.kind == "mcq" else (ln.get("extracted") or "").lower()) == winner)
            maj_k.append(1.0 if line.get("correct") else 0.0)
        else:
            maj_k.append(0.0)
    return {"k": samples, "pass_at_k": _ci(pass_k, cl, seed), "maj_at_k": _ci(maj_k, cl, seed),
            "mean_at_k": "see accuracy.overall (the mean over samples)"}


def pkr_results(per_item: Sequence[tuple[BenchItem, list[Mapping[str, Any]]]], seed: int) -> dict[str, Any] | None:
    """PKR figures: ``bench.score.aggregate`` over every judged response (values 0–1), plus
    95% CIs ×100 over items (clustered by article) of each axis's presence, correctness and score,
    of the trace and of the presence trace. With several samples an item's value is the mean
    over its judged samples."""
    from openmedreason.bench.score import aggregate, score_item

    scores = []
    vals: dict[str, list[tuple[float, str]]] = defaultdict(list)
    n_rubric = 0
    for it, ls in per_item:
        if not it.has_rubric():
            continue
        n_rubric += 1
        mine = []
        for ln in ls:
            if ln.get("units") is None or ln.get("error"):
                continue
            s = score_item([UnitJudgement.model_validate(u) for u in ln["units"]], it)
            mine.append(s)
            scores.append(s)
        if not mine:
            continue

        def add(key: str, xs: list[float | None]) -> None:
            xs2 = [x for x in xs if x is not None]
            if xs2:
                vals[key].append((sum(xs2) / len(xs2), it.cluster_key))

        for a in AXES:
            for m in ("presence", "correctness", "score"):
                add(f"{a}.{m}", [getattr(s.axes[a], m) if a in s.axes else None for s in mine])
        add("trace", [s.trace for s in mine])
        add("presence_trace", [s.presence_trace for s in mine])
    if n_rubric == 0:
        return None
    if not scores:
        return {"n_items_with_rubric": n_rubric, "n_judged": 0, "aggregate": None, "ci": {}}
    # the offline judge leaves every c unset: correctness, score and trace are then unavailable
    # (score.py still gives 0 to items with nothing engaged, which alone would read as a score)
    correctness = any(u.get("c") is not None for _, ls in per_item for ln in ls for u in (ln.get("units") or [])
                      if not u.get("error"))
    metrics = ("presence", "correctness", "score") if correctness else ("presence",)
    ci: dict[str, Any] = {a: {m: _ci_scaled(vals[f"{a}.{m}"], seed) for m in metrics} for a in AXES}
    ci["trace"] = _ci_scaled(vals["trace"] if correctness else [], seed)
    ci["presence_trace"] = _ci_scaled(vals["presence_trace"], seed)
    return {"n_items_with_rubric": n_rubric, "n_judged": len(scores), "correctness_available": correctness,
            "aggregate": aggregate(scores), "ci": ci, "scale": "aggregate: fractions 0-1; ci: x100"}


def _ci_scaled(pairs: Sequence[tuple[float, str]], seed: int) -> dict[str, Any]:
    r = _ci([v for v, _ in pairs], [c for _, c in pairs], seed)
    for k in ("mean", "lo", "hi"):
        if r[k] is not None:
            r[k] = 100.0 * r[k]
    return r


def axis_value(pkr_line: Mapping[str, Any] | None, axis: str, metric: str = "score") -> float | None:
    """One axis's ``metric`` (presence, correctness, score; 0–1) from an items.jsonl ``pkr``
    field, or ``trace`` / ``presence_trace`` when ``axis`` names them; None when undefined."""
    if not pkr_line:
        return None
    if axis in ("trace", "presence_trace"):
        v = pkr_line.get(axis)
    else:
        v = ((pkr_line.get("axes") or {}).get(axis) or {}).get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# ------------------------------------------------------------------------------------ judge check
def run_judge_check(items: Sequence[BenchItem], lines: Mapping[tuple[str, int], Mapping[str, Any]], n: int, judge: Any,
                    seed: int) -> dict[str, Any] | None:
    """Re-judge ``n`` judged responses (sample 0) with the PKR helper's ``judge_check``: test–retest
    agreement (cache bypassed) and, for an LLM judge, per-axis vs batched agreement. None when no
    response was judged."""
    from openmedreason.evaluate.judge import judge_check

    pairs = []
    for it in items:
        ln = lines.get((it.id, 0))
        if ln and ln.get("units") is not None and not ln.get("error"):
            pairs.append((it, ln.get("response") or ""))
    if not pairs:
        return None
    return _dump(judge_check(judge, pairs, sample=n, seed=seed))
