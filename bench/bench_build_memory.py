"""Peak memory and throughput of ``build_dataset`` on synthetic runs of 10k and 100k instances.

Not a test: ``python bench/bench_build_memory.py [--sizes 10000 100000] [--images 800] [--work DIR]``.

Synthetic data: a pool of ``--images`` distinct images (2×2 mosaics of the bundled corpus images
with flips, 160×160 JPEG, pairwise pHash distance > 10, so none is a near-duplicate), one image
per article, instances dealt round-robin over the articles (10k: ~12 questions per image, 100k:
~125, which exercises the LSH path of question dedup). Question stems are random word draws, so
nothing is a duplicate and every instance is written with its image bytes (the full write load).
Each build runs in a fresh child process that reports its own peak RSS (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_pool(out: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image, ImageOps

    from dataset_factory import real_images
    from openmedreason.build.dedup import phash_file

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    srcs = []
    for p in real_images():
        with Image.open(p) as im:
            srcs.append(im.convert("RGB").resize((80, 80)))
    pool: list[Path] = []
    hashes: list[int] = []
    tries = 0
    while len(pool) < n and tries < n * 20:
        tries += 1
        canvas = Image.new("RGB", (160, 160))
        for q in range(4):
            tile = rng.choice(srcs)
            if rng.random() < 0.5:
                tile = ImageOps.mirror(tile)
            if rng.random() < 0.5:
                tile = ImageOps.flip(tile)
            canvas.paste(tile, ((q % 2) * 80, (q // 2) * 80))
        path = out / f"img{len(pool):05d}.jpg"
        canvas.save(path, quality=85)
        h = phash_file(path)
        if all((h ^ o).bit_count() > 10 for o in hashes):
            pool.append(path)
            hashes.append(h)
    return pool


def make_run(run: Path, n: int, pool: list[Path], chunk: int = 5000) -> None:
    from dataset_factory import make_instance, write_instances
    from openmedreason.taxonomy import BY_KEY

    rng = random.Random(1)
    cats = list(BY_KEY)
    batch, part = [], 0
    for j in range(n):
        k = j % len(pool)
        art = f"PMC{100000 + k}"
        batch.append(
            make_instance(
                iid=f"{art}|F1|-|{j}",
                article_id=art,
                image=pool[k],
                category=cats[j % len(cats)],
                rng=rng,
                modality_group=("Radiology", "Microscopy", "Visible light photography")[k % 3],
            )
        )
        if len(batch) >= chunk:
            write_instances(run, batch, shard=part, batch=0)
            batch, part = [], part + 1
    if batch:
        write_instances(run, batch, shard=part, batch=0)


def child(run: str, registry: str) -> None:
    from openmedreason.build.config import BuildConfig
    from openmedreason.build.dataset import build_dataset

    t = time.time()
    res = build_dataset(Path(run), build_config=BuildConfig(test_size=1000), registry=Path(registry))
    secs = time.time() - t
    print(
        json.dumps(
            {
                "seconds": round(secs, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "train": res.train,
                "test": res.test,
                "rejected": res.rejected,
                "parquet_mb": round(sum(p.stat().st_size for fs in res.files.values() for p in fs) / 2**20, 1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--work", type=Path, default=Path("/tmp/omr_bench_build"))
    ap.add_argument("--child", nargs=2, metavar=("RUN", "REGISTRY"))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    shutil.rmtree(args.work, ignore_errors=True)
    t = time.time()
    pool = make_pool(args.work / "pool", args.images)
    print(f"image pool: {len(pool)} distinct images ({time.time() - t:.1f}s)")
    results = {}
    for n in args.sizes:
        run = args.work / f"run{n}"
        t = time.time()
        make_run(run, n, pool)
        print(f"{n} instances written ({time.time() - t:.1f}s)")
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(run), str(args.work / "registry")],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["instances_per_s"] = round(n / r["seconds"], 1)
        results[n] = r
        print(n, json.dumps(r))
        shutil.rmtree(run / "dataset", ignore_errors=True)
    sizes = sorted(results)
    if len(sizes) >= 2:
        a, b = results[sizes[0]], results[sizes[-1]]
        print(
            f"peak RSS {sizes[0]}: {a['peak_rss_mb']} MB, {sizes[-1]}: {b['peak_rss_mb']} MB, "
            f"ratio {b['peak_rss_mb'] / a['peak_rss_mb']:.2f} for {sizes[-1] / sizes[0]:.0f}x the instances"
        )


if __name__ == "__main__":
    main()
