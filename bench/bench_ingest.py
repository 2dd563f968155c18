"""Benchmark: our full JATS ingest of a file ÷ a bare ``lxml.etree.parse`` of the same file.

For every article XML in ``examples/corpus/articles`` and ``tests/fixtures/jats`` it times, in the
same run and interleaved:

* ``lxml``   - ``etree.parse(path, parser)`` with a plain safe parser,
  ``XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)``: the
  baseline of the headline ratio;
* ``lxml=``  - ``etree.parse(path, make_parser())``: the baseline with our exact parser flags
  (today the same settings: :func:`~openmedreason.ingest.jats.make_parser` only spells out
  defaults, ``dtd_validation=False, attribute_defaults=False, recover=False``; the column is there
  so that a change of flags shows up);
* ``ingest`` - :func:`openmedreason.ingest.jats.ingest_jats_file` (parse, metadata, figures,
  citing paragraphs, caption splitting, panel routing, Panel records, image lookup *with*
  Pillow header reads where several files share a stem);
* ``nohdr``  - the same ingest with ``read_image_headers=False`` (image lookup without header
  reads), to separate their cost.

Each figure is the median of ``--repeats`` runs (default 41) after warm-up. Per file it prints the
absolute times (ms), the throughput of the bare parse and of the ingest (MB/s, MB = 10**6 bytes)
and the ratios; then totals over the corpus and the summary lines. The headline is the last line,
``ingest/lxml ratio: median X.XX`` (median over files of ingest ÷ plain safe parse); the goal is
≤ 1.5. Run: ``python bench/bench_ingest.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import lxml
from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from openmedreason.ingest.jats import ingest_jats_file, make_parser  # noqa: E402


def article_files() -> list[Path]:
    files = sorted((ROOT / "examples" / "corpus" / "articles").glob("*/*.xml"))
    files += sorted((ROOT / "tests" / "fixtures" / "jats").glob("*.nxml"))
    return files


def safe_parser() -> etree.XMLParser:
    """The headline baseline: a plain safe parser (no DTD, no entity expansion, no network)."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)


def _time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _mbs(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=41)
    args = ap.parse_args(argv)
    files = article_files()
    if not files:
        print("no article files found", file=sys.stderr)
        return 1
    plain = safe_parser()
    ours = make_parser()

    def raw(p: Path) -> None:
        etree.parse(str(p), plain)

    def raw_ours(p: Path) -> None:
        etree.parse(str(p), ours)

    print(f"python {platform.python_version()}, lxml {lxml.__version__}, "
          f"libxml2 {'.'.join(map(str, etree.LIBXML_VERSION))}, {args.repeats} repeats, medians")
    ratios: list[float] = []
    ratios_same: list[float] = []
    ratios_nohdr: list[float] = []
    tot_bytes = 0
    tot_raw = tot_ing = 0.0
    print(f"{'file':44} {'KB':>5} {'lxml ms':>8} {'lxml= ms':>8} {'ingest ms':>9} {'nohdr ms':>8} "
          f"{'lxml MB/s':>9} {'ingest MB/s':>11} {'ratio':>6} {'ratio=':>6} {'nohdr':>6} {'recs':>5}")
    for p in files:
        size = p.stat().st_size
        n = len(ingest_jats_file(p))
        for _ in range(3):  # warm-up: page cache, imports, regex caches
            raw(p)
            raw_ours(p)
            ingest_jats_file(p)
        # interleave the measurements so that drift hits them alike
        t_raw, t_same, t_ing, t_noh = [], [], [], []
        for _ in range(args.repeats):
            t_raw.append(_time(lambda p=p: raw(p), 1))
            t_same.append(_time(lambda p=p: raw_ours(p), 1))
            t_ing.append(_time(lambda p=p: ingest_jats_file(p), 1))
            t_noh.append(_time(lambda p=p: ingest_jats_file(p, read_image_headers=False), 1))
        a, s, b, c = (statistics.median(t) for t in (t_raw, t_same, t_ing, t_noh))
        ratios.append(b / a)
        ratios_same.append(b / s)
        ratios_nohdr.append(c / a)
        tot_bytes += size
        tot_raw += a
        tot_ing += b
        rel = str(p.relative_to(ROOT))
        name = rel if len(rel) <= 44 else "…" + rel[-43:]
        print(f"{name:44} {size / 1024:5.0f} {a * 1e3:8.3f} {s * 1e3:8.3f} {b * 1e3:9.3f} {c * 1e3:8.3f} "
              f"{_mbs(size, a):9.1f} {_mbs(size, b):11.1f} {b / a:6.2f} {b / s:6.2f} {c / a:6.2f} {n:5d}")
    k = len(files)
    print(f"{'all files (sum of medians)':44} {tot_bytes / 1024:5.0f} {tot_raw * 1e3:8.3f} {'':8} {tot_ing * 1e3:9.3f} "
          f"{'':8} {_mbs(tot_bytes, tot_raw):9.1f} {_mbs(tot_bytes, tot_ing):11.1f} {tot_ing / tot_raw:6.2f}")
    print(f"per article: lxml {tot_raw / k * 1e3:.3f} ms, ingest {tot_ing / k * 1e3:.3f} ms (mean of {k} medians); "
          f"throughput lxml {_mbs(tot_bytes, tot_raw):.1f} MB/s, ingest {_mbs(tot_bytes, tot_ing):.1f} MB/s")
    print(f"ingest/lxml ratio with our exact parser flags as baseline: median {statistics.median(ratios_same):.2f}")
    print(f"ingest (no image header reads)/lxml ratio: median {statistics.median(ratios_nohdr):.2f}")
    print(f"ingest/lxml ratio: median {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
