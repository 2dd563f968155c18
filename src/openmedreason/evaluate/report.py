"""Evaluation reports: ``OUT/report.md`` with PNG plots, and ``omr compare`` of two evaluations.

:func:`write_report` renders what :func:`openmedreason.evaluate.run.evaluate` computed (it reads
nothing else). :func:`compare` pairs two evaluation folders on their common items: a paired
clustered bootstrap of accuracy, paired per-axis PKR differences, and, when a judge endpoint is
configured, the pairwise preference of :func:`openmedreason.evaluate.pairwise.compare_pairs`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from openmedreason.bench.items import AXES
from openmedreason.report import _figure, _save  # the run report's Agg figure helpers (no pyplot state)

PLOT_AXES = "pkr_axes.png"
PLOT_CATEGORY = "accuracy_by_category.png"
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"


# ------------------------------------------------------------------------------------ formatting
def _pct(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100.0 * float(x):.{digits}f}"


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{float(x):.{digits}f}"


def _ci_pct(c: Mapping[str, Any] | None) -> str:
    if not c or c.get("mean") is None:
        return "–"
    return f"{_pct(c['mean'])} [{_pct(c['lo'])}, {_pct(c['hi'])}]"


def _ci_num(c: Mapping[str, Any] | None) -> str:
    if not c or c.get("mean") is None:
        return "–"
    return f"{_num(c['mean'])} [{_num(c['lo'])}, {_num(c['hi'])}]"


# ------------------------------------------------------------------------------------ PKR access
def axis_table(pkr: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One row per axis with units, then the trace, from results['pkr']: per-example presence,
    correctness and score (fractions, from ``bench.score.aggregate``), pooled (corpus-level)
    presence and correctness, and the CIs (×100) of each. The trace row's score is the mean of
    the axis scores (the published tables' Trace)."""
    if not pkr or not pkr.get("aggregate"):
        return []
    agg = pkr["aggregate"]
    ci = pkr.get("ci") or {}
    avail = pkr.get("correctness_available", True)
    rows = []
    for axis in AXES:
        a = (agg.get("axes") or {}).get(axis)
        if not a or not a.get("n_items"):
            continue
        rows.append({
            "axis": axis, "n": a["n_items"], "presence": a.get("presence"), "correctness": a.get("correctness") if avail else None,
            "score": a.get("score") if avail else None, "presence_pooled": a.get("presence_pooled"),
            "correctness_pooled": a.get("correctness_pooled") if avail else None,
            "n_errors": a.get("n_errors", 0), "ci": ci.get(axis) or {},
        })
    if rows:
        rows.append({
            "axis": "trace", "n": agg.get("n_items"), "presence": agg.get("presence_trace_mean"), "correctness": None,
            "score": agg.get("trace_of_axis_means") if avail else None, "presence_pooled": None, "correctness_pooled": None,
            "n_errors": agg.get("n_errors", 0), "ci": {"presence": ci.get("presence_trace"), "score": ci.get("trace")},
        })
    return rows


def _scaled(x: Any) -> Any:
    """PKR values are fractions (0–1) in aggregate(); reports show ×100."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return 100.0 * float(x)


def _with_ci(value: Any, ci: Mapping[str, Any] | None) -> str:
    v = _num(_scaled(value))
    if ci and ci.get("lo") is not None and value is not None:
        v += f" [{_num(ci['lo'])}, {_num(ci['hi'])}]"
    return v


# ------------------------------------------------------------------------------------ plots
def plot_pkr(results: Mapping[str, Any], path: Path) -> bool:
    rows = axis_table(results.get("pkr"))
    if not rows:
        return False
    fig = _figure(7.0, 3.8)
    ax = fig.add_subplot()
    metrics = [("presence", "#4C72B0"), ("correctness", "#55A868"), ("score", "#DD8452")]
    width = 0.26
    for k, (m, color) in enumerate(metrics):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(rows):
            v = _scaled(r[m])
            if v is None:
                continue
            xs.append(i + (k - 1) * width)
            ys.append(v)
            c = (r["ci"] or {}).get(m) or {}
            lo.append(max(0.0, v - c["lo"]) if c.get("lo") is not None else 0.0)
            hi.append(max(0.0, c["hi"] - v) if c.get("hi") is not None else 0.0)
        if ys:
            ax.bar(xs, ys, width, color=color, label=m, yerr=[lo, hi], ecolor="black", capsize=3)
    ax.set_xticks(range(len(rows)), [r["axis"] for r in rows])
    ax.set_ylim(0, 105)
    ax.set_ylabel("×100")
    title = "PKR per axis (score = presence × correctness); whiskers: 95% bootstrap over articles"
    if all(r["correctness"] is None for r in rows):
        title += "\ncorrectness unavailable (offline judge): presence only"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_category(results: Mapping[str, Any], path: Path) -> bool:
    cats = (results.get("accuracy") or {}).get("by_category") or {}
    cats = {k: v for k, v in cats.items() if v.get("mean") is not None}
    if not cats:
        return False
    names = sorted(cats, key=lambda k: (-(cats[k]["mean"] or 0), k))
    fig = _figure(7.0, max(2.2, 0.32 * len(names) + 1.2))
    ax = fig.add_subplot()
    ys = list(range(len(names)))
    means = [100 * cats[k]["mean"] for k in names]
    lo = [max(0.0, 100 * (cats[k]["mean"] - cats[k]["lo"])) for k in names]
    hi = [max(0.0, 100 * (cats[k]["hi"] - cats[k]["mean"])) for k in names]
    ax.barh(ys, means, color="#4C72B0", xerr=[lo, hi], ecolor="black", capsize=2)
    ax.set_yticks(ys, [f"{k} (n={cats[k]['n']})" for k in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%), whiskers: 95% bootstrap clustered by article")
    ax.set_title("Accuracy by category", fontsize=9)
    _save(fig, path)
    return True


# ------------------------------------------------------------------------------------ report.md
def render_report(results: Mapping[str, Any], manifest: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    m = manifest.get("model") or {}
    j = manifest.get("judge") or {}
    b = manifest.get("bench") or {}
    proto = manifest.get("protocol") or {}
    L: list[str] = [f"# Evaluation: {m.get('name')}", ""]
    if m.get("kind") == "builtin":
        L += [f"> **{m.get('name')} is not a model.** {m.get('note', '')}", ""]
    server = ", ".join(m.get("server_models") or []) or "–"
    L += [
        f"- model: `{m.get('name')}` ({m.get('kind')}); server-reported id: {server}",
        f"- benchmark: `{b.get('path')}` ({b.get('n_evaluated')} of {b.get('n_loaded')} items; content sha256 `{str(b.get('content_sha256'))[:16]}`)",
        f"- protocol: {proto.get('mode')}, {proto.get('samples')} sample(s) per item"
        + (f", T={proto.get('temperature')}, top_p={proto.get('top_p')}, stop {proto.get('stop')}" if proto.get("mode") == "sampling" else ""),
        f"- judge: {j.get('name') or 'none'}" + (f" ({j.get('mode')})" if j.get("mode") else ""),
        "- prompts: " + ", ".join(f"`{v['id']}`" for v in (manifest.get("prompts") or {}).values()),
        "",
        "## Accuracy",
        "",
        "Strict scoring: an answer the extractor cannot read as exactly one valid letter is wrong; there is no "
        "random or nearest-option fallback. 95% intervals: bootstrap resampling articles (clusters).",
        "",
        "| | n | accuracy % [95% CI] |",
        "|---|---:|---|",
    ]
    acc = results.get("accuracy") or {}
    nc = results.get("n_clusters")
    if not results.get("n_items"):
        L[-4:-4] = ["> **No items were evaluated** (empty split or selection).", ""]
    elif nc is not None and nc < 10:
        L[-4:-4] = [f"> Only {nc} article cluster(s): the bootstrap intervals are rough (degenerate with one cluster).", ""]
    L.append(f"| **overall** | {acc.get('overall', {}).get('n')} | {_ci_pct(acc.get('overall'))} |")
    closed = results.get("closed") or {}
    if closed.get("n_items"):
        L.append(f"| closed (multiple choice), strict | {closed['n_items']} | {_ci_pct(closed.get('acc_strict'))} |")
    op = results.get("open")
    if op:
        L.append(f"| open, normalised exact match | {op['n_items']} | {_ci_pct(op.get('exact_match'))} |")
        if op.get("llm_judge"):
            L.append(f"| open, LLM judge (separate figure) | {op['n_items']} | {_ci_pct(op['llm_judge'])} |")
    ext = results.get("llm_extractor")
    if ext:
        L.append(f"| closed, with LLM extractor on leftovers (separate figure) | {closed.get('n_items')} | {_ci_pct(ext.get('accuracy_with_llm_extractor'))} |")
    samp = results.get("sampling")
    if samp:
        L.append(f"| pass@{samp['k']} | {samp['pass_at_k']['n']} | {_ci_pct(samp['pass_at_k'])} |")
        L.append(f"| maj@{samp['k']} | {samp['maj_at_k']['n']} | {_ci_pct(samp['maj_at_k'])} |")
    L.append("")
    n_resp = results.get("n_responses") or 0
    errors = results.get("errors") or {}
    L += [
        f"- responses: {n_resp} of {results.get('n_responses_expected')} expected",
        f"- invalid answers (closed): {closed.get('n_invalid', 0)} ({_pct(closed.get('invalid_rate'))}%)"
        + (": " + ", ".join(f"{k} {v}" for k, v in (closed.get("invalid_reasons") or {}).items()) if closed.get("n_invalid") else ""),
        f"- truncated replies (finish_reason=length): {results.get('truncated', 0)} ({_pct(results.get('truncated_rate'))}%)",
        f"- refusals: {results.get('refusals', 0)}",
        f"- no response (request failed; counted wrong, rerun to retry): {errors.get('n', 0)}",
        f"- missing lines: {(results.get('missing') or {}).get('n', 0)}",
    ]
    if closed.get("methods"):
        L.append("- extraction methods: " + ", ".join(f"`{k}` {v}" for k, v in closed["methods"].items()))
    L.append("")
    for key, title in (("by_benchmark", "benchmark"), ("by_family", "family"), ("by_category", "category"), ("by_modality", "modality")):
        rows = acc.get(key) or {}
        if len(rows) <= 1 and key != "by_category":
            continue
        L += [f"### By {title}", "", f"| {title} | n | accuracy % [95% CI] |", "|---|---:|---|"]
        L += [f"| {k} | {v['n']} | {_ci_pct(v)} |" for k, v in rows.items()]
        L.append("")
    if PLOT_CATEGORY in plots:
        L += [f"![accuracy by category]({PLOT_CATEGORY})", ""]

    pkr = results.get("pkr")
    L += ["## PKR trace scores", ""]
    if not pkr:
        L += ["No item of this benchmark has PKR rubric units (or judging was skipped with `--judge none`).", ""]
    else:
        rows = axis_table(pkr)
        offline = not pkr.get("correctness_available", True)
        L += [
            f"Items with a rubric: {pkr.get('n_items_with_rubric')}, judged responses: {pkr.get('n_judged')}. "
            "Per axis: presence, correctness, score = presence × correctness (per-example means), ×100; "
            "trace = mean of the axes that have units.",
            "",
        ]
        if offline:
            L += [f"> **Offline judge ({j.get('name')}):** presence is scored by lexical overlap with the rubric units; "
                  "correctness is **unavailable** and no score below is a correctness judgement.", ""]
        L += ["| axis | n | presence [95% CI] | correctness [95% CI] | score [95% CI] | pooled presence | pooled correctness | judge errors |",
              "|---|---:|---|---|---|---:|---:|---:|"]
        for r in rows:
            ci = r["ci"] or {}
            L.append(
                f"| {r['axis']} | {r['n']} | {_with_ci(r['presence'], ci.get('presence'))} | "
                f"{'unavailable' if offline else _with_ci(r['correctness'], ci.get('correctness'))} | "
                f"{'unavailable' if offline else _with_ci(r['score'], ci.get('score'))} | {_num(_scaled(r['presence_pooled']))} | "
                f"{_num(_scaled(r['correctness_pooled']))} | {r['n_errors']} |"
            )
        agg = pkr.get("aggregate") or {}
        if agg.get("trace_mean") is not None and not offline:
            L += ["", f"Trace row: score = mean of the axis scores (the published tables' Trace); the mean of per-item "
                      f"traces is {_num(_scaled(agg['trace_mean']))}, its interval is the one shown."]
        errs = _judge_errors(pkr.get("aggregate"))
        if errs:
            L += ["", f"Judge errors (units excluded and counted): {errs}"]
        L.append("")
        if PLOT_AXES in plots:
            L += [f"![PKR per axis]({PLOT_AXES})", ""]
    chk = results.get("judge_check")
    if chk:
        L += judge_check_lines(chk)
    usage = results.get("usage") or {}
    total = usage.get("total") if isinstance(usage, Mapping) else None
    if total:
        L += ["## Usage", "", f"LLM calls: {total.get('calls', 0)}, cache hits: {total.get('cache_hits', 0)}, "
              f"cost: ${float(total.get('cost_usd', 0.0)):.4f}", ""]
    L += ["## Files", "", "- `items.jsonl`: one line per item × sample (raw response, extraction, correctness, unit judgements)",
          "- `results.json`: every figure above", "- `manifest.json`: model, judge, prompts, dataset hash, seeds, versions", ""]
    return "\n".join(L)


def judge_check_lines(chk: Mapping[str, Any]) -> list[str]:
    """The judge-check section: agreement of p and c, overall and per axis."""
    L = ["## Judge check", "", f"{chk.get('sample')} responses re-judged (seed {chk.get('seed')}). "
         "Agreement = share of units with the same p (presence) / c (correctness); judge errors excluded.", ""]
    for key, title in (("retest", "test–retest (cache bypassed)"), ("modes", "per-axis vs batched mode")):
        part = chk.get(key)
        if not part:
            continue
        L += [f"**{title}**" + (f" — {part['note']}" if part.get("note") else ""), "",
              "| | units | p agreement | mean abs p diff | c units | c agreement | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, row in [("all", part.get("all") or {}), *((a, (part.get("by_axis") or {}).get(a) or {}) for a in AXES)]:
            L.append(f"| {name} | {row.get('units', 0)} | {_pct(row.get('p_agreement'))}% | {_num(row.get('p_mean_abs_diff'), 2)} | "
                     f"{row.get('c_units', 0)} | {_pct(row.get('c_agreement'))}% | {row.get('errors', 0)} |")
        L.append("")
    return L


def _judge_errors(agg: Any) -> Any:
    if not isinstance(agg, Mapping):
        return None
    n = agg.get("n_errors")
    return f"{n} unit(s) in {agg.get('n_items_with_errors', 0)} response(s)" if n else None


def write_report(out: str | Path, results: Mapping[str, Any], manifest: Mapping[str, Any]) -> Path:
    """Write ``OUT/report.md`` and its PNGs; return the report path."""
    out = Path(out)
    plots = []
    if plot_pkr(results, out / PLOT_AXES):
        plots.append(PLOT_AXES)
    if plot_category(results, out / PLOT_CATEGORY):
        plots.append(PLOT_CATEGORY)
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render_report(results, manifest, plots), encoding="utf-8")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------ compare
def _eval_dir(p: str | Path) -> Path:
    p = Path(p)
    return p.parent if p.is_file() else p


def compare(
    a: str | Path,
    b: str | Path,
    out: str | Path,
    *,
    judge: str = "auto",
    config: Any = None,
    seed: int = 0,
    env: Mapping[str, str] | None = None,
    no_cache: bool = False,
    max_cost_usd: float | None = None,
) -> dict[str, Any]:
    """Compare two evaluations (folders or their results.json) on their common items.

    Writes ``OUT/compare.json`` and ``OUT/compare.md``. Accuracy: paired clustered bootstrap of
    per-item accuracy (B − A). PKR: paired differences of per-item axis scores. Pairwise preference:
    ``evaluate.pairwise.compare_pairs`` on the sample-0 responses of both runs, when ``judge`` is
    ``llm`` or ``auto`` with an endpoint configured (it needs the benchmark recorded in the
    manifests for images and questions); ``none`` skips it.
    """
    from openmedreason.bench.stats import paired_bootstrap
    from openmedreason.evaluate.run import ITEMS, MANIFEST, RESULTS, EvalError, latest_lines, read_lines
    from openmedreason.run.store import write_json_atomic

    da, db = _eval_dir(a), _eval_dir(b)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for d in (da, db):
        if not (d / ITEMS).exists() or not (d / MANIFEST).exists():
            raise EvalError(f"{d} is not an evaluation folder (no {ITEMS} / {MANIFEST})")
        runs.append({
            "dir": d,
            "lines": latest_lines(read_lines(d / ITEMS)),
            "manifest": json.loads((d / MANIFEST).read_text()),
            "results": json.loads((d / RESULTS).read_text()) if (d / RESULTS).exists() else {},
        })
    A, B = runs
    sa = int((A["manifest"].get("protocol") or {}).get("samples") or 1)
    sb = int((B["manifest"].get("protocol") or {}).get("samples") or 1)

    def per_item(run: Mapping[str, Any], samples: int) -> dict[str, dict[str, Any]]:
        d: dict[str, dict[str, Any]] = {}
        for (iid, s), ln in run["lines"].items():
            e = d.setdefault(iid, {"lines": [], "cluster": ln.get("cluster") or iid})
            e["lines"].append(ln)
        for e in d.values():
            e["acc"] = sum(1.0 for ln in e["lines"] if ln.get("correct")) / samples
        return d

    ia, ib = per_item(A, sa), per_item(B, sb)
    common = [i for i in ia if i in ib]
    ha = (A["manifest"].get("bench") or {}).get("content_sha256")
    hb = (B["manifest"].get("bench") or {}).get("content_sha256")
    res: dict[str, Any] = {
        "a": {"dir": str(da), "model": (A["manifest"].get("model") or {}).get("name"), "samples": sa},
        "b": {"dir": str(db), "model": (B["manifest"].get("model") or {}).get("name"), "samples": sb},
        "same_bench_hash": ha == hb,
        "n_common_items": len(common),
        "n_only_a": len(ia) - len(common),
        "n_only_b": len(ib) - len(common),
        "accuracy": None,
        "pkr": None,
        "pairwise": None,
        "direction": "differences are B − A",
    }
    if common:
        va = [ia[i]["acc"] for i in common]
        vb = [ib[i]["acc"] for i in common]
        cl = [ia[i]["cluster"] for i in common]
        pb = paired_bootstrap(vb, va, cl, seed=seed)  # stats gives mean(first) − mean(second): B − A
        res["accuracy"] = {"a": sum(va) / len(va), "b": sum(vb) / len(vb), "paired": _plain(pb), "n": len(common)}
        use_score = all(((r["results"].get("pkr") or {}).get("correctness_available", False)) for r in runs)
        res["pkr"] = _paired_pkr(common, ia, ib, seed, use_score)
    if judge != "none" and common:
        res["pairwise"] = _pairwise(common, A, B, judge, config, out, seed, env, no_cache, max_cost_usd)
    write_json_atomic(res, out / COMPARE_JSON)
    (out / COMPARE_MD).write_text(render_compare(res), encoding="utf-8")
    return res


def _plain(x: Any) -> Any:
    if hasattr(x, "model_dump"):
        return x.model_dump(mode="json")
    if isinstance(x, tuple):
        return list(x)
    return x


def _paired_pkr(common: Sequence[str], ia: Mapping[str, Any], ib: Mapping[str, Any], seed: int, use_score: bool) -> dict[str, Any] | None:
    """Per axis (and trace): paired B − A differences of the per-item score (×100); when either
    run has no correctness (offline judge), of presence instead (labelled in ``metric``)."""
    from openmedreason.bench.stats import paired_bootstrap
    from openmedreason.evaluate.run import axis_value

    def item_value(e: Mapping[str, Any], axis: str, metric: str) -> float | None:
        vs = [v for ln in e["lines"] if (v := axis_value(ln.get("pkr"), axis, metric)) is not None]
        return sum(vs) / len(vs) if vs else None

    out = {}
    for axis in (*AXES, "trace"):
        for metric in (("score", "presence") if use_score else ("presence",)):
            key = axis if axis != "trace" else ("trace" if metric == "score" else "presence_trace")
            va, vb, cl = [], [], []
            for i in common:
                xa, xb = item_value(ia[i], key, metric), item_value(ib[i], key, metric)
                if xa is not None and xb is not None:
                    va.append(100 * xa)
                    vb.append(100 * xb)
                    cl.append(ia[i]["cluster"])
            if va:
                out[axis] = {"metric": metric if axis != "trace" else key, "n": len(va), "a": sum(va) / len(va), "b": sum(vb) / len(vb),
                             "paired": _plain(paired_bootstrap(vb, va, cl, seed=seed))}
                break
    return out or None


def _pairwise(common, A, B, judge, config, out, seed, env, no_cache, max_cost_usd) -> dict[str, Any] | None:
    from openmedreason.evaluate.run import _llm_sections, endpoint_configured

    llm = _llm_sections(config)
    if judge == "offline":
        return {"skipped": "pairwise preference needs an LLM judge; offline judging has no pairwise mode"}
    if judge == "auto" and not endpoint_configured(llm, "judge", env):
        return {"skipped": "no judge endpoint configured ([llm.judge] / [llm.default] / OMR_LLM_MODEL)"}
    from openmedreason.bench.loaders import load_items
    from openmedreason.evaluate.pairwise import compare_pairs
    from openmedreason.llm import engine_for_step

    bench = (A["manifest"].get("bench") or {})
    path = bench.get("path")
    if not path or not Path(path).exists():
        return {"skipped": f"the benchmark recorded in {A['dir']}/manifest.json is not readable here: {path}"}
    items = {it.id: it for it in load_items(path, benchmark=bench.get("benchmark"), split=bench.get("split") or "test")}
    ids = [i for i in common if i in items and (i, 0) in A["lines"] and (i, 0) in B["lines"]
           and not A["lines"][(i, 0)].get("error") and not B["lines"][(i, 0)].get("error")]
    if not ids:
        return {"skipped": "no common item with responses from both runs"}
    engine = engine_for_step("judge", llm, out, no_cache=no_cache, max_cost_usd=max_cost_usd, env=env)
    try:
        res = compare_pairs([items[i] for i in ids], [A["lines"][(i, 0)].get("response") or "" for i in ids],
                            [B["lines"][(i, 0)].get("response") or "" for i in ids], engine, seed)
    finally:
        engine.close()
    return _plain(res)


def render_compare(res: Mapping[str, Any]) -> str:
    L = [f"# Comparison: A = {res['a']['model']} vs B = {res['b']['model']}", ""]
    L += [f"- common items: {res['n_common_items']} (only in A: {res['n_only_a']}, only in B: {res['n_only_b']})",
          f"- same benchmark content: {'yes' if res['same_bench_hash'] else '**no** (hashes differ)'}",
          "- differences are B − A; intervals: paired bootstrap resampling articles", ""]
    acc = res.get("accuracy")
    if acc:
        p = acc["paired"] or {}
        L += ["## Accuracy", "", "| A % | B % | B − A (points) [95% CI] | p |", "|---:|---:|---|---:|",
              f"| {_pct(acc['a'])} | {_pct(acc['b'])} | {_pct(_pget(p, 'diff'))} [{_pct(_pget(p, 'lo'))}, {_pct(_pget(p, 'hi'))}] | {_num(_pget(p, 'p'), 3)} |", ""]
    pkr = res.get("pkr")
    if pkr:
        L += ["## PKR (×100)", "", "| axis | metric | n | A | B | B − A [95% CI] |", "|---|---|---:|---:|---:|---|"]
        for axis, r in pkr.items():
            p = r["paired"] or {}
            L.append(f"| {axis} | {r['metric']} | {r['n']} | {_num(r['a'])} | {_num(r['b'])} | {_num(_pget(p, 'diff'))} [{_num(_pget(p, 'lo'))}, {_num(_pget(p, 'hi'))}] |")
        L.append("")
    pw = res.get("pairwise")
    L += ["## Pairwise preference", ""]
    if not pw:
        L += ["Not run (`--judge none`).", ""]
    elif pw.get("skipped"):
        L += [f"Not run: {pw['skipped']}.", ""]
    else:
        L += ["Each pair judged in both orders; a win needs both orders to agree, otherwise a tie.", "", "```json",
              json.dumps(pw, indent=2, default=str)[:4000], "```", ""]
    return "\n".join(L)


def _pget(p: Any, key: str) -> Any:
    if not isinstance(p, Mapping):
        return None
    aliases = {"diff": ("diff", "mean_diff", "delta"), "lo": ("lo", "ci_lo", "low"), "hi": ("hi", "ci_hi", "high"),
               "p": ("p_two_sided", "p", "p_value")}
    for k in aliases.get(key, (key,)):
        if k in p:
            return p[k]
    ci = p.get("ci")
    if key in ("lo", "hi") and isinstance(ci, (list, tuple)) and len(ci) == 2:
        return ci[0] if key == "lo" else ci[1]
    return None
