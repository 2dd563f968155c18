"""Run report: what a run directory holds, as numbers (:func:`build_report`) and as
``RUN/report.md`` with PNG plots under ``RUN/report/`` (:func:`write_report`).

The report reads only what the run wrote: ``manifest.json`` (summary), ``funnel.json`` (per-step
counts; rebuilt from the Parquet parts when it is missing), the kept Parquet parts of the last
panel-level step (licence and modality of the kept panels), the kept parts of ``c2_verify`` when the
run got that far (the accepted instances, read as :class:`~openmedreason.records.Instance`) and
``usage.json`` (LLM calls, tokens and cost per step and model).

Every Parquet part is streamed batch by batch into counters whose size depends on the number of
categories, letters, licences and modalities, never on the number of records.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq

from openmedreason.records import Instance
from openmedreason.run.store import iter_records
from openmedreason.taxonomy import BY_KEY, CATEGORIES, FAMILIES

#: Steps of the method in pipeline order (DESIGN "the flow"); the pipeline's own list comes first.
STEP_ORDER = ("ingest", "a1_pixels", "a2_text", "b1_tasks", "b2_mcq", "c1_trace", "c2_verify")
#: The step whose kept records are the accepted instances.
INSTANCE_STEP = "c2_verify"
#: Steps whose records are panels (used when a step has no Parquet part to look at).
PANEL_STEPS = ("ingest", "a1_pixels", "a2_text")
REPORT_MD = "report.md"
PLOT_DIR = "report"
PUBLISHED_TOTAL = sum(c.published for c in CATEGORIES)
LETTERS = "ABCDE"
#: reject reasons drawn separately in the funnel plot; the rest are stacked as "other"
TOP_REASONS = 8
BATCH_ROWS = 1024


# ------------------------------------------------------------------------------------ helpers
def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pipeline_order() -> list[str]:
    try:
        from openmedreason.run.pipeline import PIPELINE
    except Exception:  # pragma: no cover - the report must work on a run dir even if the pipeline breaks
        PIPELINE = ()
    order = list(PIPELINE)
    order += [s for s in STEP_ORDER if s not in order]
    return order


def order_steps(names: Iterable[str]) -> list[str]:
    """Known steps in pipeline order; an unknown step stays right after the step it followed."""
    names = list(names)
    rank = {s: i for i, s in enumerate(_pipeline_order())}
    keys: dict[str, tuple[float, int]] = {}
    prev = -1.0
    for pos, name in enumerate(names):
        if name in rank:
            prev = float(rank[name])
            keys[name] = (prev, pos)
        else:
            keys[name] = (prev + 0.5, pos)
    return sorted(names, key=lambda n: keys[n])


def _parts(run_dir: Path, step: str, kind: str = "kept") -> list[Path]:
    return sorted((run_dir / step).glob(f"{kind}-*.parquet"))


def _pct(n: float, d: float) -> float | None:
    return round(100.0 * n / d, 2) if d else None


def _share(counter: Counter | dict[str, int], total: int | None = None) -> dict[str, float | None]:
    total = sum(counter.values()) if total is None else total
    return {k: _pct(v, total) for k, v in counter.items()}


def _sorted_counts(counter: Counter) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _modality(modality: str | None, group: str | None) -> str:
    return modality or group or "unknown"


def _iter_columns(paths: Iterable[Path], columns: list[str]) -> Iterator[dict[str, Any]]:
    """Rows of ``columns`` (those present in each part), one Arrow batch in memory at a time."""
    for path in paths:
        pf = pq.ParquetFile(path)
        cols = [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols):
            yield from batch.to_pylist()


def _is_panel_step(run_dir: Path, step: str) -> bool:
    parts = _parts(run_dir, step) or _parts(run_dir, step, "rejected")
    if parts:
        names = pq.ParquetFile(parts[0]).schema_arrow.names
        return "source_kind" in names and "category" not in names
    return step in PANEL_STEPS


# ------------------------------------------------------------------------------------ sections
def _summary(run_dir: Path, funnel: dict[str, Any] | None) -> dict[str, Any]:
    man = _load_json(run_dir / "manifest.json") or {}
    config = man.get("config") or {}
    engine = man.get("engine") or (config.get("engine") if isinstance(config, dict) else None)
    return {
        "manifest": bool(man),
        "version": man.get("version"),
        "config_hash": man.get("config_hash"),
        "engine": engine,
        "seed": man.get("seed"),
        "started": man.get("started"),
        "finished": man.get("finished"),
        "status": man.get("status"),
        "stop_reason": man.get("stop_reason"),
        "seconds": man.get("seconds"),
        "sources": len(man.get("sources") or []),
        "source_units": man.get("source_units"),
        "shards": man.get("shards", (funnel or {}).get("shards")),
        "funnel_complete": (funnel or {}).get("complete"),
    }


def _funnel_from_parquet(run_dir: Path, steps: list[str]) -> dict[str, Any]:
    """Per-step counts from the Parquet parts (when funnel.json is missing): kept rows from the
    part footers, rejects by reason from the ``reject_reason`` column."""
    out: dict[str, Any] = {}
    for step in steps:
        kept = sum(pq.ParquetFile(p).metadata.num_rows for p in _parts(run_dir, step))
        rejected: Counter = Counter()
        for row in _iter_columns(_parts(run_dir, step, "rejected"), ["reject_reason"]):
            rejected[row.get("reject_reason") or "?"] += 1
        out[step] = {"in": kept + sum(rejected.values()), "kept": kept, "rejected": dict(sorted(rejected.items()))}
    return out


def _funnel(run_dir: Path) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    raw = _load_json(run_dir / "funnel.json")
    if raw is not None and isinstance(raw.get("steps"), dict):
        steps_raw, source = raw["steps"], "funnel.json"
    else:
        man = _load_json(run_dir / "manifest.json") or {}
        names = [s["name"] for s in man.get("steps", []) if isinstance(s, dict) and "name" in s]
        if not names and run_dir.is_dir():
            names = [p.name for p in sorted(run_dir.iterdir()) if p.is_dir() and any(p.glob("*-*.parquet"))]
        steps_raw, source = _funnel_from_parquet(run_dir, names), "parquet"
    out: dict[str, Any] = {}
    for name in order_steps(steps_raw):
        s = steps_raw[name]
        rejected = {k: int(v) for k, v in sorted((s.get("rejected") or {}).items(), key=lambda kv: (-kv[1], kv[0]))}
        entry = {
            "in": int(s.get("in", 0)),
            "kept": int(s.get("kept", 0)),
            "rejected_total": sum(rejected.values()),
            "rejected": rejected,
            "yield_pct": _pct(s.get("kept", 0), s.get("in", 0)),
        }
        if "inputs" in s:
            entry["inputs"] = int(s["inputs"])
        if "shards_done" in s:
            entry["shards_done"] = int(s["shards_done"])
        out[name] = entry
    return out, source, raw


def _panels(run_dir: Path, steps: list[str]) -> dict[str, Any] | None:
    """Licence and modality mix of the kept records of the last panel-level step."""
    panel_steps = [s for s in steps if _is_panel_step(run_dir, s)]
    if not panel_steps:
        return None
    step = panel_steps[-1]
    licenses: Counter = Counter()
    modalities: Counter = Counter()
    n = 0
    for row in _iter_columns(_parts(run_dir, step), ["license", "modality", "modality_group"]):
        n += 1
        licenses[row.get("license") or "unknown"] += 1
        modalities[_modality(row.get("modality"), row.get("modality_group"))] += 1
    return {
        "step": step,
        "total": n,
        "licenses": _sorted_counts(licenses),
        "license_shares": _share(_sorted_counts(licenses), n),
        "modalities": _sorted_counts(modalities),
        "modality_shares": _share(_sorted_counts(modalities), n),
    }


def _letters(counts: Counter, expected: dict[str, float], n: int) -> dict[str, Any]:
    """Answer letters: counts, shares and deviation (points) from uniform over each question's options."""
    letters = [l for l in LETTERS if counts.get(l) or expected.get(l)] + sorted(k for k in counts if k not in LETTERS)
    share = {l: _pct(counts.get(l, 0), n) for l in letters}
    exp = {l: _pct(expected.get(l, 0.0), n) for l in letters}
    dev = {l: round(100.0 * (counts.get(l, 0) - expected.get(l, 0.0)) / n, 2) if n else None for l in letters}
    devs = [abs(d) for d in dev.values() if d is not None]
    return {
        "n": n,
        "counts": {l: counts.get(l, 0) for l in letters},
        "share_pct": share,
        "uniform_pct": exp,
        "deviation_pts": dev,
        "max_abs_deviation_pts": round(max(devs), 2) if devs else None,
    }


def _instances(run_dir: Path) -> dict[str, Any]:
    categories: Counter = Counter()
    families: Counter = Counter()
    modalities: Counter = Counter()
    styles: Counter = Counter()
    scopes: Counter = Counter()
    engines: Counter = Counter()
    licenses: Counter = Counter()
    formats: Counter = Counter()
    letters = {g: Counter() for g in ("overall", "standard", "binary")}
    expected = {g: Counter() for g in ("overall", "standard", "binary")}
    sizes = {g: 0 for g in ("overall", "standard", "binary")}
    n = 0
    for inst in iter_records(_parts(run_dir, INSTANCE_STEP), Instance, batch_rows=BATCH_ROWS):
        assert isinstance(inst, Instance)
        n += 1
        categories[inst.category] += 1
        families[inst.family or (BY_KEY[inst.category].family if inst.category in BY_KEY else "unknown")] += 1
        modalities[_modality(inst.panel.modality, inst.panel.modality_group)] += 1
        styles[inst.style] += 1
        scopes[inst.image_scope] += 1
        engines[inst.engine] += 1
        licenses[inst.panel.license or "unknown"] += 1
        formats[inst.answer_format] += 1
        k = len(inst.options)
        groups = ["overall"]
        if k == 2:
            groups.append("binary")
        elif 4 <= k <= 5:
            groups.append("standard")
        for g in groups:
            sizes[g] += 1
            letters[g][inst.answer] += 1
            for l in LETTERS[:k]:
                expected[g][l] += 1.0 / k
    cat_rows = {c.key: categories.get(c.key, 0) for c in CATEGORIES}
    cat_rows.update({k: v for k, v in sorted(categories.items()) if k not in BY_KEY})
    fam_rows = {f: families.get(f, 0) for f in FAMILIES}
    fam_rows.update({k: v for k, v in sorted(families.items()) if k not in FAMILIES})
    return {
        "step": INSTANCE_STEP,
        "total": n,
        "categories": cat_rows,
        "category_shares": _share(cat_rows, n),
        "published_shares": {c.key: round(100.0 * c.published / PUBLISHED_TOTAL, 2) for c in CATEGORIES},
        "families": fam_rows,
        "family_shares": _share(fam_rows, n),
        "modalities": _sorted_counts(modalities),
        "modality_shares": _share(_sorted_counts(modalities), n),
        "letters": {g: _letters(letters[g], expected[g], sizes[g]) for g in letters},
        "answer_formats": _sorted_counts(formats),
        "styles": _sorted_counts(styles),
        "style_shares": _share(_sorted_counts(styles), n),
        "image_scopes": _sorted_counts(scopes),
        "image_scope_shares": _share(_sorted_counts(scopes), n),
        "engines": _sorted_counts(engines),
        "licenses": _sorted_counts(licenses),
        "license_shares": _share(_sorted_counts(licenses), n),
    }


_USAGE_KEYS = ("requests", "ok", "calls", "batch_requests", "retries", "cache_hits", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "saved_usd")


def _counters(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: d.get(k, 0) for k in _USAGE_KEYS}
    out["paid_calls"] = out["calls"] + out["batch_requests"]
    out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


def _usage(run_dir: Path) -> dict[str, Any] | None:
    raw = _load_json(run_dir / "usage.json")
    if raw is None:
        return None
    steps = raw.get("steps") or {}
    out_steps: dict[str, Any] = {}
    for step in order_steps(steps):
        s = steps[step]
        out_steps[step] = {
            "total": _counters(s.get("total") or {}),
            "models": {m: _counters(d) for m, d in sorted((s.get("models") or {}).items())},
        }
    return {
        "total": _counters(raw.get("total") or {}),
        "steps": out_steps,
        "models": {m: _counters(d) for m, d in sorted((raw.get("models") or {}).items())},
        "processes": raw.get("processes"),
        "updated": raw.get("updated"),
    }


def usage_owners() -> dict[str, str]:
    """Usage is recorded under the endpoint names a step uses (C1: ``c1_draft``, ``c1_final``);
    map each to its pipeline step."""
    from openmedreason.run.pipeline import PIPELINE, step_class

    owners: dict[str, str] = {}
    for name in PIPELINE:
        for sub in getattr(step_class(name), "llm_names", ()) or ():
            owners[sub] = name
    return owners


def _per_instance(usage: dict[str, Any] | None, funnel: dict[str, Any], n_instances: int | None) -> dict[str, Any] | None:
    """LLM requests, paid calls, tokens and cost per accepted instance, against the naive plan of
    one call per step for every record that enters an LLM step (Σ of those steps' ``in``)."""
    if usage is None or not n_instances:
        return None
    owner = usage_owners()
    llm_steps = sorted({owner.get(s, s) for s in usage["steps"]} & set(funnel))
    # one call per record each LLM step reads (inputs; for a fan-out step in counts its outputs)
    baseline = sum(funnel[s].get("inputs", funnel[s]["in"]) for s in llm_steps)
    tot = usage["total"]

    def per(v: float) -> float:
        return round(v / n_instances, 4)

    return {
        "instances": n_instances,
        "llm_steps": llm_steps,
        "steps_without_funnel": [s for s in usage["steps"] if owner.get(s, s) not in funnel],
        "requests": tot["requests"],
        "paid_calls": tot["paid_calls"],
        "cache_hits": tot["cache_hits"],
        "tokens": tot["tokens"],
        "cost_usd": tot["cost_usd"],
        "requests_per_instance": per(tot["requests"]),
        "paid_calls_per_instance": per(tot["paid_calls"]),
        "tokens_per_instance": per(tot["tokens"]),
        "cost_usd_per_instance": round(tot["cost_usd"] / n_instances, 6),
        "one_call_per_record": baseline,
        "one_call_per_record_per_instance": per(baseline),
        "requests_vs_one_call_per_record": round(tot["requests"] / baseline, 4) if baseline else None,
    }


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Every number of the report, JSON-serialisable; reads the run directory, writes nothing."""
    run_dir = Path(run_dir)
    funnel, funnel_source, raw = _funnel(run_dir)
    steps = list(funnel)
    final = steps[-1] if steps else None
    first = steps[0] if steps else None
    instances = _instances(run_dir) if INSTANCE_STEP in funnel else None
    usage = _usage(run_dir)
    panels = _panels(run_dir, steps)
    overall = {
        "first_step": first,
        "final_step": final,
        "in": funnel[first]["in"] if first else 0,
        "kept": funnel[final]["kept"] if final else 0,
        "yield_pct": _pct(funnel[final]["kept"], funnel[first]["in"]) if first and final else None,
        "panel_step": panels["step"] if panels else None,
        "per_kept_panel": round(instances["total"] / panels["total"], 4) if instances and panels and panels["total"] else None,
    }
    return {
        "run_dir": str(run_dir),
        "summary": _summary(run_dir, raw),
        "funnel_source": funnel_source,
        "steps": steps,
        "final_step": final,
        "funnel": funnel,
        "overall_yield": overall,
        "scope": "instances" if instances is not None else "panels",
        "panels": panels,
        "instances": instances,
        "usage": usage,
        "per_instance": _per_instance(usage, funnel, instances["total"] if instances else None),
        "plots": {},
        "dataset": _dataset(run_dir),
        "evaluations": _evaluations(run_dir),
    }


def _dataset(run_dir: Path) -> dict[str, Any] | None:
    """The build's split sizes and funnel (``RUN/dataset/build.json``), when the run was built."""
    build = _load_json(run_dir / "dataset" / "build.json")
    if build is None:
        return None
    split = build.get("split") or {}
    return {"train": split.get("train"), "test": split.get("test"), "steps": build.get("steps") or {}}


def _evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Headline figures of every ``RUN/eval/<name>/results.json`` (``omr demo`` writes two)."""
    out = []
    for path in sorted((run_dir / "eval").glob("*/results.json")):
        res = _load_json(path) or {}
        acc = (res.get("accuracy") or {}).get("overall") or {}
        model = res.get("model")
        out.append({
            "name": path.parent.name,
            "model": model.get("name") if isinstance(model, dict) else model,
            "n_items": res.get("n_items"),
            "accuracy": acc.get("mean"), "lo": acc.get("lo"), "hi": acc.get("hi"),
            "report": str(path.parent.relative_to(run_dir) / "report.md"),
        })
    return out


# ------------------------------------------------------------------------------------ plots
FAMILY_COLORS = {"Perception": "#4C72B0", "Diagnosis": "#DD8452", "Management": "#55A868", "Risk": "#C44E52", "Workup": "#8172B3"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)  # Agg backend, no display; no pyplot global state
    return fig


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    tmp.replace(path)


def plot_funnel(report: dict[str, Any], path: Path) -> None:
    """Kept records per step, with rejects stacked on top by the most frequent reasons."""
    funnel = report["funnel"]
    steps = list(funnel)
    totals: Counter = Counter()
    for s in funnel.values():
        totals.update(s["rejected"])
    top = [r for r, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]]
    fig = _figure(max(6.0, 1.1 * len(steps) + 3), 4.8)
    ax = fig.add_subplot()
    x = list(range(len(steps)))
    kept = [funnel[s]["kept"] for s in steps]
    ax.bar(x, kept, color="#4C9A5B", label="kept")
    bottom = list(kept)
    cmap = _cmap("tab20")
    layers = [(r, [funnel[s]["rejected"].get(r, 0) for s in steps]) for r in top]
    other = [sum(n for r, n in funnel[s]["rejected"].items() if r not in top) for s in steps]
    if any(other):
        layers.append(("other reasons", other))
    for i, (label, values) in enumerate(layers):
        ax.bar(x, values, bottom=bottom, color=cmap(i % 20), label=f"rejected: {label}")
        bottom = [b + v for b, v in zip(bottom, values)]
    for xi, s in zip(x, steps):
        ax.annotate(f"{funnel[s]['kept']:,} / {funnel[s]['in']:,}", (xi, funnel[s]["in"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, steps, rotation=20, ha="right")
    ax.set_ylabel("records")
    ax.set_title("Funnel: kept / in per step, rejects by reason")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top_in = max((funnel[s]["in"] for s in steps), default=0)
    ax.set_ylim(0, max(top_in, 1) * 1.1)
    _save(fig, path)


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name]


def plot_categories(report: dict[str, Any], path: Path) -> None:
    """Share of instances per category, coloured by family, with the published share as a marker."""
    inst = report["instances"]
    keys = list(inst["categories"])
    fig = _figure(8.5, 0.32 * len(keys) + 1.6)
    ax = fig.add_subplot()
    y = list(range(len(keys)))[::-1]
    shares = [inst["category_shares"][k] or 0.0 for k in keys]
    colors = [FAMILY_COLORS.get(BY_KEY[k].family, "#999999") if k in BY_KEY else "#999999" for k in keys]
    ax.barh(y, shares, color=colors)
    pub = [(yi, inst["published_shares"][k]) for yi, k in zip(y, keys) if k in inst["published_shares"]]
    ax.scatter([p for _, p in pub], [yi for yi, _ in pub], marker="D", s=18, color="black", zorder=3, label="published share")
    for yi, k, s in zip(y, keys, shares):
        ax.annotate(f" {inst['categories'][k]:,}", (s, yi), va="center", fontsize=7)
    ax.set_yticks(y, [BY_KEY[k].name if k in BY_KEY else k for k in keys], fontsize=8)
    ax.set_xlabel(f"% of {inst['total']:,} instances")
    ax.set_title("Instances per category")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=f) for f, c in FAMILY_COLORS.items()]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    _save(fig, path)


def plot_modalities(report: dict[str, Any], path: Path, top: int = 20) -> None:
    """Modality mix of the instances (of the kept panels when the run has no instances)."""
    src = report["instances"] or report["panels"] or {"modalities": {}, "total": 0}
    items = list(src["modalities"].items())
    if len(items) > top:
        items = items[: top - 1] + [("other", sum(v for _, v in items[top - 1 :]))]
    fig = _figure(7.5, 0.32 * max(len(items), 1) + 1.6)
    ax = fig.add_subplot()
    y = list(range(len(items)))[::-1]
    ax.barh(y, [v for _, v in items], color="#4C72B0")
    for yi, (_, v) in zip(y, items):
        ax.annotate(f" {v:,}", (v, yi), va="center", fontsize=7)
    ax.set_yticks(y, [k for k, _ in items], fontsize=8)
    what = "instances" if report["instances"] else f"kept panels ({src.get('step', '-')})"
    ax.set_xlabel(what)
    ax.set_title(f"Modality mix of the {what}")
    ax.margins(x=0.12)
    _save(fig, path)


# ------------------------------------------------------------------------------------ markdown
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v).replace("|", "\\|")


def _numeric(v: Any) -> bool:
    if v is None or isinstance(v, (int, float)) and not isinstance(v, bool):
        return True
    return isinstance(v, str) and v.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def _table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    """A Markdown table; columns of numbers are right-aligned."""
    rows = list(rows)
    align = ["---:" if rows and all(_numeric(r[i]) for r in rows) and not all(r[i] is None for r in rows) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _counts_table(title: str, counts: dict[str, int], shares: dict[str, float | None], extra: dict[str, Any] | None = None) -> list[str]:
    header = [title, "n", "%"] + (list(extra) if extra else [])
    rows = []
    for k, v in counts.items():
        rows.append([k, v, shares.get(k)] + ([col.get(k) for col in extra.values()] if extra else []))
    return _table(header, rows)


def _cost(v: float) -> str:
    return f"{v:,.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The text of ``RUN/report.md`` (plots referenced relatively, as ``report/<name>.png``)."""
    from openmedreason.reasons import REASONS, load_all

    load_all()
    s = report["summary"]
    L: list[str] = ["# Run report", ""]
    L += ["## Run summary", ""]
    L += _table(
        ["field", "value"],
        [
            ["run directory", report["run_dir"]],
            ["openmedreason version", s["version"]],
            ["config hash", s["config_hash"]],
            ["engine", s["engine"]],
            ["seed", s["seed"]],
            ["started", s["started"]],
            ["finished", s["finished"]],
            ["status", s["status"]],
            ["seconds", s["seconds"]],
            ["sources", s["sources"]],
            ["source units", s["source_units"]],
            ["shards", s["shards"]],
            ["funnel complete", s["funnel_complete"]],
            ["final step", report["final_step"]],
        ]
        + ([["stop reason", s["stop_reason"]]] if s["stop_reason"] else []),
    )
    if not s["manifest"]:
        L += ["_No manifest.json in the run directory._", ""]
    if report["scope"] == "panels":
        L += [
            f"> This run has no `{INSTANCE_STEP}` step yet (final step: `{report['final_step']}`): the report covers "
            "the panel-level steps only; the instance sections (categories, answer letters, styles, LLM use per "
            "instance) appear once the run reaches it.",
            "",
        ]

    funnel = report["funnel"]
    L += ["## Funnel", ""]
    if report["funnel_source"] != "funnel.json":
        L += ["_funnel.json is missing: counts are read from the Parquet parts._", ""]
    L += _table(
        ["step", "in", "kept", "rejected", "kept %"],
        [[name, f["in"], f["kept"], f["rejected_total"], f["yield_pct"]] for name, f in funnel.items()],
    )
    y = report["overall_yield"]
    if y["first_step"]:
        ratio = f"{y['kept'] / y['in']:.3f}" if y["in"] else "-"
        L += [
            f"Overall yield: {y['kept']:,} records kept by `{y['final_step']}` for {y['in']:,} records entering "
            f"`{y['first_step']}`: {ratio} per record ({_fmt(y['yield_pct'])} %; above 100 % when steps fan out, "
            "e.g. several questions per panel).",
            "",
        ]
        if y.get("per_kept_panel") is not None:
            L += [f"Instances per kept panel of `{y['panel_step']}`: {y['per_kept_panel']:.3f}.", ""]
    reason_rows = [[name, f"`{r}`", n, REASONS.get(r, "")] for name, f in funnel.items() for r, n in f["rejected"].items()]
    if reason_rows:
        L += ["### Reject reasons", ""]
        L += _table(["step", "reason", "n", "meaning"], reason_rows)
    if report["plots"].get("funnel"):
        L += [f"![funnel]({report['plots']['funnel']})", ""]

    inst = report["instances"]
    if inst is not None:
        n = inst["total"]
        L += [f"## Instances ({n:,} kept by `{inst['step']}`)", ""]
        L += ["### Per category", ""]
        L += _table(
            ["category", "family", "n", "%", "published %"],
            [
                [BY_KEY[k].name if k in BY_KEY else k, BY_KEY[k].family if k in BY_KEY else "-", v, inst["category_shares"][k], inst["published_shares"].get(k)]
                for k, v in inst["categories"].items()
            ],
        )
        if report["plots"].get("categories"):
            L += [f"![categories]({report['plots']['categories']})", ""]
        pub_fam = {f: round(100.0 * sum(c.published for c in CATEGORIES if c.family == f) / PUBLISHED_TOTAL, 2) for f in FAMILIES}
        L += ["### Per family", ""]
        L += _counts_table("family", inst["families"], inst["family_shares"], {"published %": pub_fam})
        L += ["### Per modality", ""]
        L += _counts_table("modality", inst["modalities"], inst["modality_shares"])
        if report["plots"].get("modalities"):
            L += [f"![modalities]({report['plots']['modalities']})", ""]
        L += ["### Answer letters", ""]
        L += [
            "Deviation = observed share − uniform share, in points; uniform = each question spreads 1/k over its k "
            "options, so 4- and 5-option questions mix correctly. Standard = 4–5 options, binary = 2.",
            "",
        ]
        for group, lt in inst["letters"].items():
            L += [f"**{group}** ({lt['n']:,} questions; largest deviation {_fmt(lt['max_abs_deviation_pts'])} points)", ""]
            if lt["n"]:
                L += _table(
                    ["letter", "n", "%", "uniform %", "deviation (pts)"],
                    [[l, lt["counts"][l], lt["share_pct"][l], lt["uniform_pct"][l], lt["deviation_pts"][l]] for l in lt["counts"]],
                )
        L += ["### Style, image scope, answer format, engine", ""]
        L += _counts_table("style", inst["styles"], inst["style_shares"])
        L += _counts_table("image scope", inst["image_scopes"], inst["image_scope_shares"])
        L += _counts_table("answer format", inst["answer_formats"], _share(inst["answer_formats"], n))
        L += _counts_table("engine", inst["engines"], _share(inst["engines"], n))

    L += ["## Licences", ""]
    if inst is not None:
        L += [f"Instances ({inst['total']:,}):", ""]
        L += _counts_table("licence", inst["licenses"], inst["license_shares"])
    panels = report["panels"]
    if panels is not None:
        L += [f"Kept panels of `{panels['step']}` ({panels['total']:,}):", ""]
        L += _counts_table("licence", panels["licenses"], panels["license_shares"])
        if inst is None:
            L += ["## Modality of the kept panels", ""]
            L += _counts_table("modality", panels["modalities"], panels["modality_shares"])
            if report["plots"].get("modalities"):
                L += [f"![modalities]({report['plots']['modalities']})", ""]

    ds = report.get("dataset")
    if ds is not None:
        L += ["## Dataset (`dataset/`)", ""]
        rows = [[name, st.get("in"), st.get("kept"), ", ".join(f"{k}: {v}" for k, v in (st.get("rejected") or {}).items()) or "-"] for name, st in ds["steps"].items()]
        L += _table(["build stage", "in", "kept", "rejected"], rows)
        L += [f"Train {ds['train']}, test {ds['test']} (no article and no near-duplicate image in both). Card: `dataset/README.md`.", ""]
    evals = report.get("evaluations") or []
    if evals:
        L += ["## Evaluation (`eval/`)", ""]
        L += _table(
            ["run", "model", "items", "strict accuracy %", "95% CI (article-clustered)", "report"],
            [[e["name"], e["model"], e["n_items"], None if e["accuracy"] is None else round(100 * e["accuracy"], 1),
              "-" if e["lo"] is None else f"{100 * e['lo']:.1f}–{100 * e['hi']:.1f}", f"`{e['report']}`"] for e in evals],
        )
    usage = report["usage"]
    L += ["## LLM usage and cost", ""]
    if usage is None:
        L += ["_No usage.json: this run made no LLM call (offline engine or panel-level steps only)._", ""]
    else:
        rows = []
        for step, su in usage["steps"].items():
            for model, c in su["models"].items():
                rows.append([step, model, c["requests"], c["paid_calls"], c["cache_hits"], c["retries"], c["prompt_tokens"], c["completion_tokens"], _cost(c["cost_usd"]), _cost(c["saved_usd"])])
        t = usage["total"]
        rows.append(["**total**", "", t["requests"], t["paid_calls"], t["cache_hits"], t["retries"], t["prompt_tokens"], t["completion_tokens"], _cost(t["cost_usd"]), _cost(t["saved_usd"])])
        L += _table(["step", "model", "requests", "paid calls", "cache hits", "retries", "prompt tokens", "completion tokens", "cost $", "saved by cache $"], rows)
        L += ["Paid calls = HTTP calls (repairs and retries included) + Batch API requests.", ""]
        per = report["per_instance"]
        if per is not None:
            L += ["### Per accepted instance", ""]
            L += _table(
                ["measure", "total", "per instance"],
                [
                    ["LLM requests", per["requests"], per["requests_per_instance"]],
                    ["paid calls", per["paid_calls"], per["paid_calls_per_instance"]],
                    ["tokens (prompt + completion)", per["tokens"], per["tokens_per_instance"]],
                    ["cost $", _cost(per["cost_usd"]), f"{per['cost_usd_per_instance']:.6f}"],
                    ["one call per step for every record (Σ records read by the LLM steps)", per["one_call_per_record"], per["one_call_per_record_per_instance"]],
                ],
            )
            L += [
                f"LLM steps: {', '.join(f'`{s}`' for s in per['llm_steps']) or '-'}; requests ÷ one-call-per-record = "
                f"{_fmt(per['requests_vs_one_call_per_record'])}.",
                "",
            ]
            if per["steps_without_funnel"]:
                L += [f"Usage of steps not in the funnel: {', '.join(f'`{s}`' for s in per['steps_without_funnel'])}.", ""]
    return "\n".join(L).rstrip() + "\n"


def write_report(run_dir: str | Path) -> Path:
    """Build the report, draw its plots under ``RUN/report/`` and write ``RUN/report.md``."""
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    plot_dir = run_dir / PLOT_DIR
    plots = {"funnel": plot_funnel}
    if report["instances"] is not None:
        plots["categories"] = plot_categories
    if report["instances"] is not None or report["panels"] is not None:
        plots["modalities"] = plot_modalities
    stale = {p.stem for p in plot_dir.glob("*.png")} - set(plots) if plot_dir.is_dir() else set()
    for name in stale & {"funnel", "categories", "modalities"}:
        (plot_dir / f"{name}.png").unlink(missing_ok=True)
    for name, draw in plots.items():
        draw(report, plot_dir / f"{name}.png")
        report["plots"][name] = f"{PLOT_DIR}/{name}.png"
    path = run_dir / REPORT_MD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_markdown(report))
    tmp.replace(path)
    return path


def print_report(run_dir: str | Path, console: Any = None) -> Path:
    """Write the report, then render ``report.md`` in the terminal with rich."""
    from rich.console import Console
    from rich.markdown import Markdown

    path = write_report(run_dir)
    (console or Console()).print(Markdown(path.read_text()))
    return path
