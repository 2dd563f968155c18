"""Benchmark: image near-duplicate pair search (``build.dedup.near_pairs`` / ``cross_pairs``) ÷ the
all-pairs scan it replaced (``_brute_near_pairs`` / ``_brute_cross_pairs``), measured in the same run.

Data: U distinct 64-bit hashes, uniform at random, of which 5 % get a planted near copy at a
distance drawn from 0..10 (so there are true pairs at every distance around the thresholds); a
"skewed" set where a fifth of the hashes come from 20 tight families (each family shares 54 bits
and varies the low 10, as near-blank figures do), so block values collide heavily. Thresholds are
the build defaults: 8 (``split_image_hamming``, the pair search of the build) and 6
(``image_hamming``, the decontamination cross search).

Prints, per case, the time of ours and of the scan (both consume every pair), their ratio, the pair
count and whether both found the same pairs (compared where both ran); at U = 1M ours alone, with
the scan extrapolated quadratically from its measured 100k time (marked "extrapolated").
``--quick`` skips the 100k scans (about 1 min saved) and extrapolates them from 20k/50k instead.
Run: ``python bench/bench_phash_pairs.py [--quick]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from openmedreason.build import dedup


def planted(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, size=n - n // 20, dtype=np.uint64)
    src = base[rng.integers(len(base), size=n // 20)]
    flips = np.zeros(len(src), dtype=np.uint64)
    for k, d in enumerate(rng.integers(0, 11, size=len(src))):
        for b in rng.choice(64, size=int(d), replace=False):
            flips[k] |= np.uint64(1 << int(b))
    h = np.unique(np.concatenate([base, src ^ flips]))  # distinct values, as the build passes them
    rng.shuffle(h)
    return h


def skewed(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fam = rng.integers(0, 2**64, size=20, dtype=np.uint64)
    k = n // 5
    tight = fam[rng.integers(20, size=k)] ^ rng.integers(0, 1 << 10, size=k, dtype=np.uint64)
    h = np.unique(np.concatenate([planted(n - k, seed + 1), tight]))
    rng.shuffle(h)
    return h


def timed(gen) -> tuple[float, list]:  # noqa: ANN001
    t = time.perf_counter()
    out = list(gen)
    return time.perf_counter() - t, out


def same(a: list, b: list) -> bool:
    return sorted(a) == sorted(b)


def row(case: str, ours: float, scan: float | None, n_pairs: int, check: str, note: str = "") -> None:
    scan_s = f"{scan:9.2f}" if scan is not None else "        -"
    ratio = f"{scan / ours:9.0f}x" if scan is not None else "         -"
    print(f"{case:<34} {ours:9.3f} {scan_s} {ratio} {n_pairs:>9} {check:>6}  {note}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="extrapolate the 100k scans from 20k/50k")
    args = ap.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'case':<34} {'ours s':>9} {'scan s':>9} {'scan/ours':>10} {'pairs':>9} {'same':>6}")
    scan_t: dict[int, float] = {}
    for n in (20_000, 50_000, 100_000):
        h = planted(n, n)
        t_ours, p_ours = timed(dedup.near_pairs(h, 8))
        note = ""
        if n == 100_000 and args.quick:
            # the scan is quadratic: fit c * U^2 on the 20k and 50k runs
            c = (scan_t[20_000] / 20_000**2 + scan_t[50_000] / 50_000**2) / 2
            scan_t[n], check, note = c * n * n, "-", "scan extrapolated from 20k/50k"
        else:
            scan_t[n], p_scan = timed(dedup._brute_near_pairs(h, 8))
            check = str(same(p_ours, p_scan))
        row(f"near_pairs U={n:,} t=8", t_ours, scan_t[n], len(p_ours), check, note)
        if n != 50_000:
            t6, p6 = timed(dedup.near_pairs(h, 6))
            row(f"near_pairs U={n:,} t=6", t6, scan_t[n], len(p6), "-", "scan time of t=8 (same work)")

    h = skewed(20_000, 7)
    t_ours, p_ours = timed(dedup.near_pairs(h, 8))
    t_scan, p_scan = timed(dedup._brute_near_pairs(h, 8))
    row(f"near_pairs skewed U={len(h):,} t=8", t_ours, t_scan, len(p_ours), str(same(p_ours, p_scan)))

    left, right = planted(100_000, 11), planted(20_000, 12)
    right[: len(right) // 10] = left[: len(right) // 10] ^ np.uint64(0b1011)  # 10% contaminated
    t_ours, p_ours = timed(dedup.cross_pairs(left, right, 6))
    if args.quick:
        t_scan, check, note = scan_t[20_000] * 10, "-", "scan extrapolated (2e9 pairs at the 20k rate)"
    else:
        t_scan, p_scan = timed(dedup._brute_cross_pairs(left, right, 6))
        check, note = str(same(p_ours, p_scan)), ""
    row("cross_pairs 100,000 x 20,000 t=6", t_ours, t_scan, len(p_ours), check, note)

    big = planted(1_000_000, 13)
    scan_1m = scan_t[100_000] * 100
    for t in (6, 8):
        t_ours, p_ours = timed(dedup.near_pairs(big, t))
        note = "scan extrapolated: 100 x its 100k time"
        row(f"near_pairs U={len(big):,} t={t}", t_ours, scan_1m, len(p_ours), "-", note)
    bench_h = planted(50_000, 14)
    bench_h[:1000] = big[:1000] ^ np.uint64(0b111)  # 1,000 contaminated at distance 3
    t_ours, p_ours = timed(dedup.cross_pairs(big, bench_h, 6))
    row("cross_pairs 1M x 50,000 t=6", t_ours, scan_1m / 10, len(p_ours), "-", "scan extrapolated: 10 x its 100k time")


if __name__ == "__main__":
    main()
