"""Benchmark: ``openmedreason.build.export.core.export_dataset`` per format ÷ a pyarrow read-and-rewrite
of the same dataset, same run.

Dataset: ``--rows`` rows (default 2,000) built by the pipeline's build step from synthetic verified
instances (``tests/dataset_factory.make_dataset``: real images of the bundled corpus embedded in
the Parquet, about 90 distinct images shared by the rows of an article; train and test splits,
test fraction 0.25). Built once and reused from ``--cache`` (default ``/tmp/omr_bench_export``).

Measured, each in a fresh Python process (so that each peak RSS is its own; imports happen before
the clock starts), ``--repeats`` times (default 3, medians):

* ``baseline``: ``pyarrow.parquet.ParquetFile(f).iter_batches(64)`` over every split file, each
  batch written with one ``pyarrow.parquet.ParquetWriter`` (zstd, as the exports and the build
  write) to one output file: the same rows, images included, i.e. the I/O, decompression and
  compression any export pays at least;
* each of the 8 formats alone: ``export_dataset(ds, fmt, out, split="all")`` with the default
  options (images embedded where the format allows, else written as files);
* ``all``: the 8 formats in one ``export_dataset`` call (one read of the source feeds all).

Prints per case seconds, rows/s, the ratio to the baseline, the peak RSS of the process and its
RSS just before the timed part, the output size and the spread of the repeats.
Run: ``python bench/bench_export.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def build(cache: Path, rows: int) -> Path:
    """The dataset folder with ``rows`` rows (built once, then reused)."""
    root = cache / f"rows{rows}"
    ds = root / "run" / "dataset"
    if (ds / "build.json").exists() and (ds / "README.md").exists():
        return ds
    sys.path.insert(0, str(ROOT / "tests"))
    from dataset_factory import make_dataset

    shutil.rmtree(root, ignore_errors=True)
    return make_dataset(root, rows)


def worker(case: str, ds: Path, out: Path) -> dict:
    """One timed case in this process; returns its figures."""
    import pyarrow.parquet as pq

    from openmedreason.build.export.core import export_dataset
    from openmedreason.build.export.source import split_files

    files = [f for s in ("train", "test") for f in split_files(ds, s)]
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    if case == "baseline":
        out.mkdir(parents=True, exist_ok=True)
        writer = None
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=64):
                if writer is None:
                    writer = pq.ParquetWriter(out / "all.parquet", batch.schema, compression="zstd")
                writer.write_batch(batch)
        writer.close()
        written = pq.ParquetFile(out / "all.parquet").metadata.num_rows
    else:
        manifests = export_dataset(ds, case, out, split="all")
        written = min(m["totals"]["written"] for m in manifests.values())
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "seconds": wall, "rows": rows, "written": written, "peak_rss_mb": peak,
            "rss_before_mb": rss0, "out_mb": _size_mb(out)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "omr_bench_export")
    ap.add_argument("--formats", default="all", help="comma-separated formats (default all 8)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.dataset, args.out)))
        return 0

    from openmedreason.build.export.core import resolve_formats

    t = time.perf_counter()
    ds = build(args.cache, args.rows)
    src_mb = _size_mb(ds / "data")
    print(f"dataset: {ds} ({src_mb:.0f} MB of Parquet; {time.perf_counter() - t:.1f} s to build or find)")
    formats = resolve_formats(args.formats)
    cases = ["baseline", *formats] + (["all"] if len(formats) > 1 else [])
    results: dict[str, list[dict]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        for r in range(args.repeats):
            # the baseline runs first and last in alternate repeats (disk cache and page cache drift)
            for case in cases if r % 2 == 0 else [*cases[1:], cases[0]]:
                out = Path(tmp) / f"{case}-{r}"
                proc = subprocess.run([sys.executable, __file__, "--worker", case, "--dataset", str(ds), "--out", str(out)],
                                      capture_output=True, text=True, check=False)
                if proc.returncode:
                    print(proc.stderr, file=sys.stderr)
                    return 1
                results[case].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                shutil.rmtree(out, ignore_errors=True)

    med = {c: {k: statistics.median(x[k] for x in rows) for k in ("seconds", "peak_rss_mb", "rss_before_mb", "out_mb")}
           for c, rows in results.items()}
    rows = results["baseline"][0]["rows"]
    base = med["baseline"]["seconds"]
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {rows} rows, {args.repeats} repeats (medians)")
    print(f"{'case':<14}{'seconds':>9}{'rows/s':>9}{'/ base':>8}{'peak RSS MB':>13}{'RSS before':>12}{'out MB':>9}{'written':>9}{'s min-max':>13}")
    for c in cases:
        m = med[c]
        written = results[c][0]["written"]
        print(f"{c:<14}{m['seconds']:>9.2f}{rows / m['seconds']:>9.0f}{m['seconds'] / base:>8.2f}"
              f"{m['peak_rss_mb']:>13.0f}{m['rss_before_mb']:>12.0f}{m['out_mb']:>9.0f}{written:>9}"
              f"{min(x['seconds'] for x in results[c]):>7.2f}-{max(x['seconds'] for x in results[c]):.2f}")
    if "all" in med:
        total = sum(med[f]["seconds"] for f in formats)
        print(f"all 8 in one pass: {med['all']['seconds']:.2f} s = {med['all']['seconds'] / base:.2f} x baseline "
              f"(the 8 one at a time: {total:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
