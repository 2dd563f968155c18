"""LLM calls and tokens per accepted instance of the whole pipeline in llm mode, on the bundled corpus.

The pipeline (ingest → A1 → A2 → B1 → B2 → C1 → C2, ``engine = "llm"``) runs on
``examples/corpus/articles`` and ``examples/corpus/medical`` against the loopback fake server
(``tests/llm_fake_server.py``) answering with the scripted replies of
``tests/llm_pipeline_responder.py``. **The replies are scripted, not model output**: every A2
verdict passes, B1 always picks two categories, and only the scripted bad replies (the knobs
below) reject anything after a call. So the numbers measure our call structure (how many requests
each step makes for the records it reads, what the deterministic pre-checks save, what repairs
cost, that a rerun costs nothing), not how a model would behave: with a real model A2 and C2
reject far more, which changes every "per accepted instance" figure.

Tokens: prompt tokens are counted by the responder as a real OpenAI-style server would (text / 4
plus image tokens by the tile rule: 85 at low detail), completion tokens from the scripted reply.

    python bench/llm_pipeline_calls.py
    python bench/llm_pipeline_calls.py --clean          # no scripted bad replies
    python bench/llm_pipeline_calls.py --workers 2 --json numbers.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

LLM_STEPS = ("a2_text", "b1_tasks", "b2_mcq", "c1_trace", "c2_verify")
#: usage.json names of each step's requests (C1 accounts its two sub-steps separately)
USAGE_NAMES = {"c1_trace": ("c1_draft", "c1_final")}
#: prompt templates of each step
TEMPLATES = {"a2_text": ("a2_text", "a2_context"), "b1_tasks": ("b1_tasks",), "b2_mcq": ("b2_mcq",),
             "c1_trace": ("c1_draft", "c1_final"), "c2_verify": ("c2_verify",)}
#: scripted bad replies of the default run (about one request in N; see the responder)
DEFAULT_KNOBS = {"b2_decline_every": 5, "b2_bad_json_every": 10, "c1_wrong_letter_every": 10}


def precall_codes() -> dict[str, set[str]]:
    """Reject codes a step gives *before* calling its LLM (deterministic pre-checks)."""
    from openmedreason.curate import a2, c1, trace_checks

    c2_codes = {trace_checks.FORMAT, trace_checks.WRONG_ANSWER, trace_checks.TOO_SHORT, trace_checks.TOO_LONG,
                trace_checks.ABSENT_IMAGE, trace_checks.CITES_SOURCE, trace_checks.COPIES_CAPTION,
                trace_checks.HEDGED, trace_checks.ELIMINATION}
    return {"a2_text": {a2.TOO_SHORT}, "b1_tasks": set(), "b2_mcq": set(), "c1_trace": {c1.NO_IMAGE}, "c2_verify": c2_codes}


def b2_no_image(run: Path) -> int:
    """B2 questions rejected before a call because there is no image to show."""
    import pyarrow.parquet as pq

    n = 0
    for p in sorted((run / "b2_mcq").glob("rejected-*.parquet")):
        t = pq.read_table(p, columns=["reject_reason", "reject_detail"]).to_pylist()
        n += sum(r["reject_reason"] == "b2.invalid" and r["reject_detail"] == "no image to show" for r in t)
    return n


def measure(run: Path, answered: dict[str, int] | None = None) -> dict[str, Any]:
    """Numbers of a finished run; ``answered`` is the responder's count of what the server answered
    (``<template>:repair`` keys give the repair calls per step)."""
    fun = json.loads((run / "funnel.json").read_text())["steps"]
    usage = json.loads((run / "usage.json").read_text())
    n = fun["c2_verify"]["kept"]
    codes = precall_codes()
    steps: dict[str, Any] = {}
    for step in LLM_STEPS:
        names = USAGE_NAMES.get(step, (step,))
        tot = {k: sum(usage["steps"].get(u, {}).get("total", {}).get(k, 0) for u in names)
               for k in ("requests", "calls", "retries", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd")}
        f = fun[step]
        pre = sum(v for k, v in f["rejected"].items() if k in codes[step]) + (b2_no_image(run) if step == "b2_mcq" else 0)
        steps[step] = {
            "inputs": f["inputs"], "in": f["in"], "kept": f["kept"], "rejected": f["rejected"],
            "requests": tot["requests"], "paid_calls": tot["calls"],
            "repairs": sum((answered or {}).get(f"{t}:repair", 0) for t in TEMPLATES[step]),
            "retries": tot["retries"], "cache_hits": tot["cache_hits"], "prompt_tokens": tot["prompt_tokens"], "completion_tokens": tot["completion_tokens"],
            "rejected_before_any_call": pre,
        }
    total = {k: sum(s[k] for s in steps.values()) for k in
             ("inputs", "requests", "paid_calls", "repairs", "cache_hits", "prompt_tokens", "completion_tokens", "rejected_before_any_call")}
    before_llm = {s: fun[s]["rejected"] for s in ("ingest", "a1_pixels")}
    return {"instances": n, "funnel": fun, "steps": steps, "total": total, "before_llm": before_llm,
            "usage_total_calls": usage["total"]["calls"]}


def per(v: float, n: int) -> str:
    return f"{v / n:,.2f}" if n else "-"


def render(m: dict[str, Any], knobs: dict[str, int], seconds: float, rerun_calls: int, report_baseline: int | None) -> str:
    n = m["instances"]
    L = [
        "=" * 100,
        "LLM pipeline calls per accepted instance -- REPLIES ARE SCRIPTED BY A FAKE SERVER, NOT A MODEL.",
        "The numbers measure our call structure (requests per record read, pre-checks, repairs, cache),",
        "not a model's behaviour: every A2 verdict passes and only scripted bad replies reject after a call.",
        f"Scripted bad replies: {', '.join(f'{k}={v}' for k, v in knobs.items()) or 'none'}",
        "=" * 100,
        "",
        "Funnel (in = kept + rejected; inputs = records the step reads):",
    ]
    for step, s in m["funnel"].items():
        rej = ", ".join(f"{k} {v}" for k, v in s["rejected"].items()) or "-"
        L.append(f"  {step:<10} inputs {s['inputs']:>4}  in {s['in']:>4}  kept {s['kept']:>4}   rejected: {rej}")
    L += ["", f"Instances kept (accepted by C2): {n}", ""]
    hdr = (f"  {'step':<10} {'reads':>5} {'requests':>8} {'paid calls':>10} {'repairs':>7} {'cache hits':>10} {'pre-call rej':>12} "
           f"{'calls/inst':>10} {'prompt tok/inst':>15} {'compl tok/inst':>14} {'calls/read':>10}")
    L += ["Per LLM step (paid calls = HTTP calls, repairs included; cache hits = byte-identical requests answered",
          "from the cache within this run, e.g. panels of one figure image that share their text; C1 = draft + final):",
          hdr, "  " + "-" * (len(hdr) - 2)]
    for step, s in m["steps"].items():
        ratio = f"{s['paid_calls'] / s['inputs']:.2f}" if s["inputs"] else "-"
        L.append(f"  {step:<10} {s['inputs']:>5} {s['requests']:>8} {s['paid_calls']:>10} {s['repairs']:>7} {s['cache_hits']:>10} "
                 f"{s['rejected_before_any_call']:>12} {per(s['paid_calls'], n):>10} {per(s['prompt_tokens'], n):>15} "
                 f"{per(s['completion_tokens'], n):>14} {ratio:>10}")
    t = m["total"]
    ratio = f"{t['paid_calls'] / t['inputs']:.2f}" if t["inputs"] else "-"
    L.append(f"  {'total':<10} {t['inputs']:>5} {t['requests']:>8} {t['paid_calls']:>10} {t['repairs']:>7} {t['cache_hits']:>10} "
             f"{t['rejected_before_any_call']:>12} {per(t['paid_calls'], n):>10} {per(t['prompt_tokens'], n):>15} "
             f"{per(t['completion_tokens'], n):>14} {ratio:>10}")
    base = t["inputs"]
    L += [
        "",
        "Against 'one call per step for every record each LLM step reads' (sum of the LLM steps' inputs):",
        f"  baseline {base} calls = {per(base, n)} per instance; paid {t['paid_calls']} = {per(t['paid_calls'], n)} per instance "
        f"({t['paid_calls'] / base:.2f}x the baseline)" if base else "  baseline: no LLM step read anything",
        "  where they differ: A2 makes up to 2 calls per panel (verdict, then context for the survivors), C1 always 2",
        "  (draft + final), B2 one per planned question (a task fans out into 1-2 questions), repairs add one each;",
        "  records rejected by a pre-check cost nothing at that step.",
    ]
    if report_baseline is not None and report_baseline != base:
        L.append(f"  note: report.py's per_instance baseline says {report_baseline} (it leaves out c1_trace, whose usage is "
                 "recorded as c1_draft/c1_final)")
    pre = m["steps"]
    before = sum(sum(v.values()) for v in m["before_llm"].values())
    L += [
        "",
        "Deterministic pre-checks (records rejected before any LLM call):",
        f"  before the first LLM step (ingest + A1 pixel checks): {before} records "
        f"({'; '.join(f'{s}: ' + (', '.join(f'{k} {v}' for k, v in r.items()) or '-') for s, r in m['before_llm'].items())})",
        f"  A2 length pre-filter (a2.too_short): {pre['a2_text']['rejected_before_any_call']} panels, each >= 1 verdict call saved "
        f"(and everything downstream)",
        f"  B2 no image to show: {pre['b2_mcq']['rejected_before_any_call']}; C1 c1.no_image: {pre['c1_trace']['rejected_before_any_call']}",
        f"  C2 deterministic trace checks before the verdict call: {pre['c2_verify']['rejected_before_any_call']} instances "
        f"({', '.join(f'{k} {v}' for k, v in m['funnel']['c2_verify']['rejected'].items() if k in precall_codes()['c2_verify']) or '-'})",
        f"  LLM steps' pre-call rejects in all: {t['rejected_before_any_call']} records, >= "
        f"{pre['a2_text']['rejected_before_any_call'] + pre['b2_mcq']['rejected_before_any_call'] + 2 * pre['c1_trace']['rejected_before_any_call'] + pre['c2_verify']['rejected_before_any_call']}"
        " calls not made at their own step",
        "",
        f"usage.json total paid calls: {m['usage_total_calls']}; run time {seconds:.1f} s; "
        f"rerun of the same command: {rerun_calls} new calls",
    ]
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "examples" / "corpus", help="folder with articles/ and medical/")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--clean", action="store_true", help="no scripted bad replies")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    from llm_fake_server import FakeOpenAIServer, fast_config
    from llm_pipeline_responder import PipelineResponder

    from openmedreason.config import RunConfig
    from openmedreason.report import build_report
    from openmedreason.run import pipeline

    knobs = {} if args.clean else dict(DEFAULT_KNOBS)
    sources = [args.corpus / "articles", args.corpus / "medical" / "metadata.jsonl"]
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="omr-llm-bench-")
        out = Path(tmp) / "run"
    else:
        out = args.out
        if out.exists():
            shutil.rmtree(out)
    try:
        responder = PipelineResponder(**knobs)
        with FakeOpenAIServer(responder=responder, keep_requests=False) as server:
            cfg = RunConfig(
                engine="llm", shard_size=4, steps={"ingest": {"field_map": "medcorpus"}},
                llm={"default": fast_config(server, concurrency=16, timeout_s=30.0).model_dump()},
            )
            t0 = time.perf_counter()
            pipeline.run(sources, out, cfg, workers=args.workers)
            seconds = time.perf_counter() - t0
            calls = server.chat_calls
            pipeline.run(sources, out, cfg, workers=args.workers)
            rerun_calls = server.chat_calls - calls
        m = measure(out, dict(responder.calls))
        assert m["usage_total_calls"] == calls, (m["usage_total_calls"], calls)
        per_inst = build_report(out).get("per_instance") or {}
        print(render(m, knobs, seconds, rerun_calls, per_inst.get("one_call_per_record")))
        if args.json:
            args.json.write_text(json.dumps({"knobs": knobs, "seconds": seconds, "rerun_calls": rerun_calls, **m}, indent=2))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
