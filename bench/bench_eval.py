"""Benchmark: end-to-end ``omr eval`` (``openmedreason.evaluate.run.evaluate``) ÷ the ideal time and ÷
the raw LLM engine making the same requests, against a loopback fake server, same run.

Benchmark: ``--items`` test items (default 200) built by the pipeline's own build step from
synthetic verified instances (``tests/dataset_factory.py``: real images of the bundled corpus,
one per article, 4 items per article), with traces in the offline engine's section layout
(``tests/eval_bench_fixture.py``) and the rubric cut by the offline extractor (``omr rubric``), so
every item is judged. Cached under ``--cache`` (default ``/tmp/omr_bench_eval``) between runs.

Server: ``tests/llm_fake_server.py`` in a separate process (its CPU is not counted), answering
every chat request with the same scripted ``<think>…</think><answer>B</answer>`` reply after
``--latency`` seconds (default 0.2). Scripted: these numbers measure our client, not a model.

Measured, in the same process, ``--repeats`` times (default 3, alternating order; medians):

* ``eval``: ``evaluate(bench, model, out, base_url=…, judge="offline")`` into a fresh folder at the
  engine's default concurrency: loading the Parquet bench with its images, prompts, requests,
  answer extraction, offline PKR judge, ``items.jsonl``, bootstrap CIs, ``results.json``, report
  and PNG plots. Split into setup (until the first job is sent), the job loop (responses,
  scoring, judging, lines written) and finish (compaction, results, report);
* ``raw``: the same requests (built by the eval runner, with the same images) sent by one
  ``LLMEngine.complete_many`` call with a fresh cache, budget and ledger, as ``omr eval`` builds it;
* ideal: ``items × latency / concurrency``.

Images: the engine downscales each image to ``image_max_side`` (1024) and keeps the last 64 data
URLs in a process-wide memo (``openmedreason.llm.images``). Two scenarios, each timed as above:

* ``shared``: the memo is emptied before each timed run, as in a fresh ``omr eval`` process; the
  bench has 4 items per image (50 images for 200 items), so each image is encoded once per run;
* ``distinct``: the memo is switched off (size 0) for the timed runs, so every request encodes its
  image, as for a benchmark whose items all have their own image (the usual case). The bundled
  corpus has only about 90 distinct real images, hence the switch instead of more images.

Then the resume case: ``evaluate`` again over the last eval's folder (0 calls expected).
One warm-up eval (2 × concurrency items) runs first, so imports and first connections are not
timed. Prints, per scenario, items/s, the ratios to ideal and to raw, client CPU ms per item;
then the resume. Run: ``python bench/bench_eval.py [--scenarios shared,distinct]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODEL = "bench-vlm"
ENV = {"OMR_LLM_API_KEY": "sk-bench-not-a-real-key"}
# a scripted reply in the evaluation protocol's format (not model output)
REPLY = (
    "<think>\nPerception: The image shows a filling defect inside the contrast-opacified pulmonary artery.\n\n"
    "Interpretation and medical knowledge: An intraluminal filling defect in an opacified pulmonary artery is the "
    "defining sign of acute pulmonary embolism.\n\nAnswer justification: therefore the answer is B.\n</think>\n<answer>B</answer>"
)


def build_bench(cache: Path, n: int) -> Path:
    """The dataset folder with ``n`` test items and an offline rubric (built once, then reused)."""
    root = cache / f"items{n}"
    ds = root / "run" / "dataset"
    if (ds / "rubric" / "manifest.json").exists():
        return ds
    from dataset_factory import make_dataset, make_run_with_instances, write_instances
    from eval_bench_fixture import CASES, trace

    from openmedreason.bench.rubric import fill_dataset
    from openmedreason.records import Instance
    from openmedreason.run.executor import step_outputs
    from openmedreason.run.store import iter_records

    shutil.rmtree(root, ignore_errors=True)
    run = make_run_with_instances(root, n)
    insts = list(iter_records(step_outputs(run, "c2_verify"), Instance))
    new = []
    for j, inst in enumerate(insts):
        c = CASES[j % len(CASES)]
        k = "ABCDE".index(inst.answer)
        new.append(inst.model_copy(update={"reasoning": trace(c[7], c[8], inst.answer, inst.options[k])}))
    for f in (run / "c2_verify").glob("*.parquet"):
        f.unlink()
    write_instances(run, new)
    ds = make_dataset(root, run=run, build={"test_fraction": 1.0})
    fill_dataset(ds)
    return ds


def image_memo(size: int | None) -> None:
    """Empty the engine's data-URL memo and set its size (None: the package default)."""
    from openmedreason.llm import images

    if not hasattr(images, "_bench_default_max"):
        images._bench_default_max = images._URLS_MAX
    images._URLS.clear()
    images._URLS_MAX = images._bench_default_max if size is None else size


def counting_runner(base_url: str, out: Path):  # noqa: ANN201
    """The runner ``omr eval`` makes for an endpoint model, counting the calls it makes."""
    from openmedreason.evaluate.runners import OpenAIRunner

    class Counting(OpenAIRunner):
        calls = 0

        def generate(self, jobs, protocol):  # noqa: ANN001, ANN202
            gens = super().generate(jobs, protocol)
            type(self).calls += sum(g.calls for g in gens)
            return gens

    Counting.calls = 0
    return Counting(MODEL, out, llm_sections={}, base_url=base_url, env=ENV)


def run_eval(bench: Path, out: Path, base_url: str, limit: int | None = None) -> dict:
    from openmedreason.evaluate.run import evaluate

    marks: list[float] = []
    runner = counting_runner(base_url, out)
    c0, t0 = time.process_time(), time.perf_counter()
    evaluate(bench, MODEL, out, base_url=base_url, judge="offline", env=ENV, runner=runner, limit=limit,
                   progress=lambda done, total: marks.append(time.perf_counter()))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "wall": wall,
        "cpu": cpu,
        "setup": marks[0] - t0,
        "loop": marks[-1] - marks[0],
        "finish": t0 + wall - marks[-1],
        "calls": type(runner).calls,
        "concurrency": runner.engine.config.concurrency,
    }


def run_raw(bench: Path, out: Path, base_url: str) -> dict:
    """The same requests through one ``complete_many`` (engine built as ``omr eval`` builds it)."""
    from openmedreason.bench.loaders import load_items
    from openmedreason.evaluate.runners import Job, OpenAIRunner, Protocol
    from openmedreason.llm import engine_for_step, resolve_llm_config

    items = load_items(bench)
    cfg = resolve_llm_config("eval", {}, ENV, model=MODEL, base_url=base_url)
    engine = engine_for_step("eval", {}, out, config=cfg, env=ENV)
    reqs = OpenAIRunner(MODEL, out, engine=engine).requests([Job(it) for it in items], Protocol())
    c0, t0 = time.process_time(), time.perf_counter()
    results = engine.complete_many(reqs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    engine.close()
    return {"wall": wall, "cpu": cpu, "calls": sum(r.calls for r in results), "ok": sum(r.ok for r in results)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per call (s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "omr_bench_eval")
    ap.add_argument("--scenarios", default="shared,distinct", help="image scenarios to time (see above)")
    args = ap.parse_args()
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    if not scenarios or set(scenarios) - {"shared", "distinct"}:
        ap.error("--scenarios: shared and/or distinct")

    t = time.perf_counter()
    bench = build_bench(args.cache, args.items)
    print(f"bench: {bench} ({time.perf_counter() - t:.1f} s to build or find)")

    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "llm_fake_server.py"), "--latency", str(args.latency), "--content", REPLY],
        stdout=subprocess.PIPE,
        text=True,
    )
    measured: dict[str, tuple[list[dict], list[dict]]] = {}
    try:
        port = int(server.stdout.readline().split()[1])  # type: ignore[union-attr]
        base_url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            warm = run_eval(bench, tmp / "warm", base_url, limit=32)
            conc = warm["concurrency"]
            last = None
            for sc in scenarios:
                evals, raws = [], []
                for r in range(args.repeats):
                    order = ("eval", "raw") if r % 2 == 0 else ("raw", "eval")
                    for what in order:
                        image_memo(0 if sc == "distinct" else None)
                        if what == "eval":
                            last = tmp / f"eval-{sc}-{r}"
                            evals.append(run_eval(bench, last, base_url))
                        else:
                            raws.append(run_raw(bench, tmp / f"raw-{sc}-{r}", base_url))
                measured[sc] = (evals, raws)
            image_memo(None)
            resume = run_eval(bench, last, base_url)
    finally:
        server.terminate()
        server.wait(10)

    n = args.items
    ideal = n * args.latency / conc
    med = lambda rows, k: statistics.median(x[k] for x in rows)  # noqa: E731
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {n} items, latency {args.latency * 1000:.0f} ms, "
          f"concurrency {conc} (engine default), judge offline, {args.repeats} repeats (medians)")
    for sc, (evals, raws) in measured.items():
        e_wall, r_wall = med(evals, "wall"), med(raws, "wall")
        print(f"\n[{sc}] images: " + ("4 items per image, each image encoded once per run" if sc == "shared"
                                       else "every request encodes its image (memo off)"))
        print(f"calls per run: eval {[x['calls'] for x in evals]}, raw {[x['calls'] for x in raws]} (ok {[x['ok'] for x in raws]})")
        print(f"{'':<10}{'wall s':>9}{'items/s':>10}{'/ ideal':>10}{'CPU ms/item':>13}")
        print(f"{'ideal':<10}{ideal:>9.2f}{n / ideal:>10.1f}{1:>10.3f}{'':>13}")
        print(f"{'raw':<10}{r_wall:>9.2f}{n / r_wall:>10.1f}{r_wall / ideal:>10.3f}{med(raws, 'cpu') / n * 1000:>13.2f}")
        print(f"{'eval':<10}{e_wall:>9.2f}{n / e_wall:>10.1f}{e_wall / ideal:>10.3f}{med(evals, 'cpu') / n * 1000:>13.2f}")
        print(f"eval phases (median s): setup {med(evals, 'setup'):.2f}, job loop {med(evals, 'loop'):.2f}, "
              f"finish {med(evals, 'finish'):.2f}")
        print(f"[{sc}] eval / raw engine: wall {e_wall / r_wall:.3f}, job loop only {med(evals, 'loop') / r_wall:.3f}; "
              f"eval / ideal {e_wall / ideal:.3f}; raw / ideal {r_wall / ideal:.3f}")
    print(f"\nresume over a finished folder: {resume['calls']} calls, {resume['wall']:.2f} s wall, "
          f"{resume['cpu'] / n * 1000:.2f} ms CPU per item")
    return 0


if __name__ == "__main__":
    sys.exit(main())
