"""Benchmark: our full JATS ingest of a file ÷ a bare ``lxml.etree.parse`` of the same file.

For every article XML in ``examples/corpus/articles`` and ``tests/fixtures/jats`` it times, in the
same run and interleaved:

* ``lxml``   - ``etree.parse(path, parser)`` with the same safe parser settings we use;
* ``ingest`` - :func:`openmedreason.ingest.jats.ingest_jats_file` (parse, metadata, figures,
  citing paragraphs, caption splitting, panel routing, Panel records, image lookup *with*
  Pillow header reads where several files share a stem);
* ``nohdr``  - the same ingest with ``read_image_headers=False`` (image lookup without header
  reads), to separate their cost.

Each figure is the median of ``--repeats`` runs (default 41) after warm-up. Prints per-file
ratios and a final ``ingest/lxml ratio: median X.XX`` (median over files of the per-file
ratios). Run: ``python bench/bench_ingest.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from openmedreason.ingest.jats import ingest_jats_file, make_parser  # noqa: E402


def article_files() -> list[Path]:
    files = sorted((ROOT / "examples" / "corpus" / "articles").glob("*/*.xml"))
    files += sorted((ROOT / "tests" / "fixtures" / "jats").glob("*.nxml"))
    return files


def _time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=41)
    args = ap.parse_args(argv)
    files = article_files()
    if not files:
        print("no article files found", file=sys.stderr)
        return 1
    parser = make_parser()

    def raw(p: Path) -> None:
        etree.parse(str(p), parser)

    ratios: list[float] = []
    ratios_nohdr: list[float] = []
    print(f"{'file':58} {'KB':>6} {'lxml ms':>8} {'ingest ms':>9} {'nohdr ms':>8} {'ratio':>6} {'nohdr':>6} {'recs':>5}")
    for p in files:
        n = len(ingest_jats_file(p))
        for _ in range(3):  # warm-up: page cache, imports, regex caches
            raw(p)
            ingest_jats_file(p)
        # interleave the three measurements so that drift hits them alike
        t_raw, t_ing, t_noh = [], [], []
        for _ in range(args.repeats):
            t_raw.append(_time(lambda p=p: raw(p), 1))
            t_ing.append(_time(lambda p=p: ingest_jats_file(p), 1))
            t_noh.append(_time(lambda p=p: ingest_jats_file(p, read_image_headers=False), 1))
        a, b, c = statistics.median(t_raw), statistics.median(t_ing), statistics.median(t_noh)
        ratios.append(b / a)
        ratios_nohdr.append(c / a)
        rel = p.relative_to(ROOT)
        print(f"{str(rel)[:58]:58} {p.stat().st_size / 1024:6.0f} {a * 1e3:8.2f} {b * 1e3:9.2f} {c * 1e3:8.2f} "
              f"{b / a:6.2f} {c / a:6.2f} {n:5d}")
    print(f"ingest (no image header reads)/lxml ratio: median {statistics.median(ratios_nohdr):.2f}")
    print(f"ingest/lxml ratio: median {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
