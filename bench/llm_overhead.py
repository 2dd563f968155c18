"""LLM engine overhead against a loopback fake server with a fixed latency.

The fake server (``tests/llm_fake_server.py``, a separate process so that its CPU is not counted)
answers every chat request with the same scripted JSON after ``--latency`` seconds; nothing here
is model output. The engine runs with ``--concurrency`` requests in flight, its SQLite cache, the
budget and the usage ledger all on (as in a real run), and a pydantic response model.

Targets (issue 3): throughput >= 0.95 x concurrency / latency, client CPU <= 1 ms per call.

    python bench/llm_overhead.py                 # 200 ms, concurrency 32, 1600 calls
    python bench/llm_overhead.py --calls 3200 --check   # exit 1 when a target is missed
    python bench/llm_overhead.py --transport sdk        # through the SDK's client.post (more CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]


class Answer(BaseModel):
    answer: str
    confidence: float


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per call (s)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--calls", type=int, default=1600, help="measured calls (after a warm-up of 2 x concurrency)")
    ap.add_argument("--transport", choices=["auto", "direct", "sdk"], default="auto", help="engine chat transport (LLMConfig.transport)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args()

    from openmedreason.llm import Budget, LLMCache, LLMConfig, LLMEngine, LLMRequest, Message, UsageLedger, write_usage_summary

    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "llm_fake_server.py"), "--latency", str(args.latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline().split()[1])  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp)
            cfg = LLMConfig(
                base_url=f"http://127.0.0.1:{port}/v1",
                model="bench-model",
                concurrency=args.concurrency,
                transport=args.transport,
                max_tokens=256,
                price_input_per_mtok=0.15,
                price_output_per_mtok=0.60,
            )
            engine = LLMEngine(
                cfg,
                cache=LLMCache(run / "_llm" / "cache.sqlite"),
                budget=Budget.for_run(run, max_cost_usd=1000.0),
                ledger=UsageLedger(run),
                env={"OMR_LLM_API_KEY": "sk-bench-not-a-real-key"},
            )
            prompt = "Panel caption: axial CT of the chest showing a right lower lobe consolidation. " * 8

            def requests(tag: str, n: int) -> list[LLMRequest]:
                return [
                    LLMRequest(
                        step="bench",
                        template="bench",
                        template_version="1",
                        messages=[Message.system("You write one multiple-choice answer."), Message.user(f"{tag} #{i}: {prompt}")],
                        response_model=Answer,
                    )
                    for i in range(n)
                ]

            engine.complete_many(requests("warm-up", 2 * args.concurrency))
            reqs = requests("measure", args.calls)
            c0, t0 = time.process_time(), time.perf_counter()
            results = engine.complete_many(reqs)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            ok = sum(r.ok for r in results)
            calls = sum(r.calls for r in results)

            c1, t1 = time.process_time(), time.perf_counter()
            again = engine.complete_many(reqs)
            wall_hit, cpu_hit = time.perf_counter() - t1, time.process_time() - c1
            engine.close()
            usage = write_usage_summary(run)

        ideal = args.concurrency / args.latency
        thr = args.calls / wall
        cpu_ms = cpu / max(calls, 1) * 1000
        figures = {
            "latency_s": args.latency,
            "concurrency": args.concurrency,
            "calls": calls,
            "ok": ok,
            "wall_s": round(wall, 3),
            "throughput_per_s": round(thr, 1),
            "ideal_per_s": round(ideal, 1),
            "throughput_ratio": round(thr / ideal, 4),
            "client_cpu_ms_per_call": round(cpu_ms, 3),
            "transport": engine.transport,
            "rerun_calls": sum(r.calls for r in again),
            "rerun_cached": sum(r.cached for r in again),
            "rerun_wall_s": round(wall_hit, 3),
            "rerun_cpu_ms_per_result": round(cpu_hit / max(len(again), 1) * 1000, 3),
            "usage_cost_usd": usage["total"]["cost_usd"],
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
        print(json.dumps(figures, indent=2))
        passed = thr >= 0.95 * ideal and cpu_ms <= 1.0 and ok == args.calls and figures["rerun_calls"] == 0
        print(
            f"throughput {thr:.1f}/s = {thr / ideal:.3f} x ideal {ideal:.0f}/s (target >= 0.95); "
            f"client CPU {cpu_ms:.3f} ms/call (target <= 1 ms); rerun calls {figures['rerun_calls']}: "
            + ("PASS" if passed else "MISS")
        )
        return 0 if passed or not args.check else 1
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
