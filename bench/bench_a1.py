"""Benchmark: A1 pixel checks (default preset) on a file ÷ a plain Pillow decode of the same file.

For every real image in ``examples/corpus/medical/images``, the figure files of
``examples/corpus/articles/*/`` and scikit-image's bundled ``retina.jpg``, ``ihc.png`` and
``cell.png`` it times, in the same run:

* ``decode`` - ``Image.open(path).load()`` (full decode in the file's own mode: the baseline);
* ``a1``     - :func:`openmedreason.quality.pixels.measure` with the default preset, as the
  pipeline step calls it (``full=False``): header checks, decode (colour JPEGs straight to luma,
  see the module docstring), white margin, contrast, blur effect, edge width, blockiness, JPEG
  quality.

Timing: ``--repeats`` rounds (default 15) split over ``--processes`` fresh Python processes
(default 5, run one after the other). Each process runs one warm-up round, then its rounds; a
round visits every image and times the two back to back, decode first in even rounds and A1
first in odd rounds (so neither always runs on caches the other left). Rounds interleave the
images, so a burst of load on the machine touches every image a little instead of one image a
lot; several processes average out the memory layout of one process, which was seen to move the
plain decode time of the same files by 10 % from one process to the next. Per image: the median
decode time and the median A1 time over all rounds, and their ratio.

Prints per-image times and ratios, the median ratio per format and over the images that run
every check (those rejected from the header as too small or too elongated never decode pixels,
so their ratio is tiny), absolute times of a few representative images, the total-time ratio,
and as the last line ``A1/decode ratio: median X.XX over N images`` (all images).
Run: ``python bench/bench_a1.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from openmedreason.quality.pixels import get_preset, measure  # noqa: E402

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif"}

# a few representative files for absolute times (shown when present)
REPRESENTATIVE = (
    "elife-46793/fig3.jpg",  # 600x861 eLife chart JPEG (the typical figure)
    "elife-52882/fig2-figsupp2.jpg",  # 600x524 simple chart JPEG (cheap to decode)
    "medical/images/12941_2020_358_Fig1_HTML.jpg",  # 898x898 chest radiograph
    "medical/images/copd_exacerbation_xray.jpg",  # 2957x2729 radiograph
    "medical/images/retina.jpg",  # 1411x1411 fundus photograph
    "pone.0178565/g001.png",  # 485x600 RGB PNG chart
    "pone.0056489/pone.0056489.t001.tif",  # 4103x4151 gray TIFF table
    "bjmbr-2004-37-04-459/1414-431X-bjmbr-37-04-459-477-g5500t01.gif",  # 400x305 GIF table
)


def image_files() -> list[Path]:
    files = sorted((ROOT / "examples" / "corpus" / "medical" / "images").iterdir())
    files += sorted(p for p in (ROOT / "examples" / "corpus" / "articles").glob("*/*") if p.suffix.lower() in IMAGE_EXT)
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        files += [data / n for n in ("retina.jpg", "ihc.png", "cell.png") if (data / n).exists()]
    except ImportError:  # pragma: no cover
        pass
    return [f for f in files if f.suffix.lower() in IMAGE_EXT]


def _decode(p: Path) -> None:
    with Image.open(p) as im:
        im.load()


def _label(p: Path) -> str:
    return f"{p.parent.name[:14]}/{p.name}"[-52:]


def _worker(rounds: int) -> None:
    """Time ``rounds`` rounds in this process; print one JSON object (per image: verdict, times)."""
    preset = get_preset("default")
    files = image_files()
    out: dict[str, dict[str, object]] = {}
    for p in files:  # warm-up round (and the verdicts)
        _decode(p)
        chk = measure(p, preset)
        out[str(p)] = {"check": chk.model_dump(exclude={"metrics"}), "decode": [], "a1": []}
    for r in range(rounds):
        for p in files:
            rec = out[str(p)]
            if r % 2 == 0:
                t0 = time.perf_counter()
                _decode(p)
                t1 = time.perf_counter()
                measure(p, preset)
                t2 = time.perf_counter()
                rec["decode"].append(t1 - t0)  # type: ignore[union-attr]
                rec["a1"].append(t2 - t1)  # type: ignore[union-attr]
            else:
                t0 = time.perf_counter()
                measure(p, preset)
                t1 = time.perf_counter()
                _decode(p)
                t2 = time.perf_counter()
                rec["a1"].append(t1 - t0)  # type: ignore[union-attr]
                rec["decode"].append(t2 - t1)  # type: ignore[union-attr]
    json.dump(out, sys.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds over all images, in total")
    ap.add_argument("--processes", type=int, default=5, help="fresh processes the rounds are split over")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    t_start = time.perf_counter()
    n_proc = max(1, args.processes)
    per_proc = max(1, math.ceil(args.repeats / n_proc))
    merged: dict[str, dict[str, object]] = {}
    for _ in range(n_proc):
        res = subprocess.run(
            [sys.executable, __file__, "--worker", str(per_proc)], check=True, capture_output=True, text=True
        )
        for path, rec in json.loads(res.stdout).items():
            m = merged.setdefault(path, {"check": rec["check"], "decode": [], "a1": []})
            m["decode"] += rec["decode"]  # type: ignore[operator]
            m["a1"] += rec["a1"]  # type: ignore[operator]
    from openmedreason.quality.pixels import ImageCheck

    rows = []
    for p in image_files():
        rec = merged[str(p)]
        chk = ImageCheck(**rec["check"])  # type: ignore[arg-type]
        d, a = statistics.median(rec["decode"]), statistics.median(rec["a1"])  # type: ignore[arg-type]
        rows.append((p, chk, d, a, a / d))

    print(f"{'image':52s} {'size':>11s} {'verdict':18s} {'decode ms':>9s} {'A1 ms':>8s} {'ratio':>6s}")
    for p, chk, d, a, r in rows:
        size = f"{chk.width}x{chk.height}"
        verdict = "keep" if chk.keep else (chk.reason or "?").removeprefix("a1.")
        print(f"{_label(p):52s} {size:>11s} {verdict:18s} {d * 1e3:9.2f} {a * 1e3:8.2f} {r:6.2f}")
    header_only = ("a1.too_small", "a1.aspect_ratio")
    full = [r for _, chk, _, _, r in rows if chk.reason not in header_only]
    by_fmt: dict[str, list[float]] = {}
    for _, chk, _, _, r in rows:
        if chk.reason not in header_only:
            by_fmt.setdefault(chk.format or "?", []).append(r)
    tot_d = sum(d for *_, d, _, _ in rows)
    tot_a = sum(a for *_, a, _ in rows)
    print()
    print("representative images (median ms):")
    for p, chk, d, a, r in rows:
        if any(p.as_posix().endswith(s) for s in REPRESENTATIVE):
            size = f"{chk.width}x{chk.height}"
            print(f"  {_label(p):52s} {size:>9s} {chk.format:4s}  decode {d * 1e3:6.2f}  A1 {a * 1e3:6.2f}  x{r:.2f}")
    print()
    for fmt, rs in sorted(by_fmt.items()):
        print(f"{fmt:5s} images with every check: {len(rs):3d}, median ratio {statistics.median(rs):.2f}")
    print(f"images with every check (decoded): {len(full)}, median ratio {statistics.median(full):.2f}")
    print(f"total time, all images: A1 {tot_a * 1e3:.1f} ms / decode {tot_d * 1e3:.1f} ms = {tot_a / tot_d:.2f}")
    wall = time.perf_counter() - t_start
    print(f"benchmark wall time: {wall:.1f} s ({per_proc * n_proc} rounds in {n_proc} processes)")
    print(f"A1/decode ratio: median {statistics.median(r for *_, r in rows):.2f} over {len(rows)} images")


if __name__ == "__main__":
    main()
