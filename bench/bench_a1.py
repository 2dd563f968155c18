"""Benchmark: A1 pixel checks (default preset) on a file ÷ a plain Pillow decode of the same file.

For every real image in ``examples/corpus/medical/images``, the figure files of
``examples/corpus/articles/*/`` and scikit-image's bundled ``retina.jpg``, ``ihc.png`` and
``cell.png`` it times, in the same run and interleaved:

* ``decode`` - ``Image.open(path).load()`` (full decode in the file's own mode);
* ``a1``     - :func:`openmedreason.quality.pixels.measure` with the default preset: header
  checks, decode (colour JPEGs straight to luma, see the module docstring), white margin,
  contrast, blur effect, edge width, blockiness, JPEG quality.

Each time is the median of ``--repeats`` runs (after a warm-up). Prints per-image times and the
ratio, the median ratio over images that run every check (those rejected from the header as too
small or too elongated never decode pixels, so their ratio is tiny), and a final line
``A1/decode ratio: median X.XX`` over all images. Run: ``python bench/bench_a1.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from openmedreason.quality.pixels import get_preset, measure  # noqa: E402

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif"}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    preset = get_preset("default")
    files = image_files()
    rows = []
    t_start = time.perf_counter()
    for p in files:
        _decode(p)
        chk = measure(p, preset)  # warm-up (and the verdict)
        td: list[float] = []
        ta: list[float] = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _decode(p)
            t1 = time.perf_counter()
            measure(p, preset)
            t2 = time.perf_counter()
            td.append(t1 - t0)
            ta.append(t2 - t1)
        d, a = statistics.median(td), statistics.median(ta)
        rows.append((p, chk, d, a, a / d))
    print(f"{'image':52s} {'size':>11s} {'verdict':18s} {'decode ms':>9s} {'A1 ms':>8s} {'ratio':>6s}")
    for p, chk, d, a, r in rows:
        name = f"{p.parent.name[:14]}/{p.name}"[-52:]
        size = f"{chk.width}x{chk.height}"
        verdict = "keep" if chk.keep else (chk.reason or "?").removeprefix("a1.")
        print(f"{name:52s} {size:>11s} {verdict:18s} {d * 1e3:9.2f} {a * 1e3:8.2f} {r:6.2f}")
    full = [r for _, chk, _, _, r in rows if chk.reason not in ("a1.too_small", "a1.aspect_ratio")]
    by_fmt: dict[str, list[float]] = {}
    for _, chk, _, _, r in rows:
        if chk.reason not in ("a1.too_small", "a1.aspect_ratio"):
            by_fmt.setdefault(chk.format or "?", []).append(r)
    tot_d = sum(d for *_, d, _, _ in rows)
    tot_a = sum(a for *_, a, _ in rows)
    print()
    for fmt, rs in sorted(by_fmt.items()):
        print(f"{fmt:5s} images with every check: {len(rs):3d}, median ratio {statistics.median(rs):.2f}")
    print(f"images with every check (decoded): {len(full)}, median ratio {statistics.median(full):.2f}")
    print(f"total time, all images: A1 {tot_a * 1e3:.1f} ms / decode {tot_d * 1e3:.1f} ms = {tot_a / tot_d:.2f}")
    print(f"benchmark wall time: {time.perf_counter() - t_start:.1f} s")
    print(f"A1/decode ratio: median {statistics.median(r for *_, r in rows):.2f} over {len(rows)} images")


if __name__ == "__main__":
    main()
