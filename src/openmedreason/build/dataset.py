"""``build_dataset``: verified instances of a run → ``RUN/dataset/`` (contract D).

Two streaming passes over ``RUN/c2_verify/kept-*.parquet``:

1. read every instance once and keep only small per-row metadata: id, article, stratum, the
   index of its distinct image (pHash computed once per image file), the MinHash signature of its
   question, and decontamination matches of its article and stem;
2. decide (in memory, on that metadata): input checks → dedup → decontamination → split;
3. read the instances again in the same order and write each one, with its image bytes
   embedded, to its split's Parquet shards or to ``rejected.parquet``.

Memory is bounded by the per-row metadata (a few hundred bytes per instance) plus one Parquet row
group of images; see ``bench/bench_build_memory.py``. Output is deterministic: the same input and
seed give byte-identical Parquet files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openmedreason.build import hf
from openmedreason.build.config import BuildConfig
from openmedreason.build.decontam import CONTAMINATED, DecontamIndex, Match, Registry
from openmedreason.build.dedup import (
    DUP_ID,
    DUP_IMAGE,
    DUP_QUESTION,
    IMAGE_MISSING,
    UnionFind,
    hamming,
    jaccard,
    minhash,
    minhash_object,
    near_pairs,
    phash_file,
    phash_hex,
    question_words,
)
from openmedreason.records import Instance

INPUT_STEP = "c2_verify"
#: build funnel steps and the reasons each can give, in order
BUILD_STEPS = {
    "build.input": (DUP_ID, IMAGE_MISSING),
    "build.dedup": (DUP_IMAGE, DUP_QUESTION),
    "build.decontam": (CONTAMINATED,),
    "build.split": (),
}
_STEP_OF = {code: step for step, codes in BUILD_STEPS.items() for code in codes}

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("kept_id", pa.string()),
        pa.field("benchmark", pa.string()),
        pa.field("article_id", pa.string()),
        pa.field("step", pa.string()),
    ]
)


@dataclass
class BuildResult:
    """What :func:`build_dataset` wrote."""

    dataset_dir: Path
    train: int
    test: int
    rejected: dict[str, int]
    files: dict[str, list[Path]]
    build: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def card(self) -> Path:
        return self.dataset_dir / "README.md"


def input_files(run_dir: Path) -> list[Path]:
    from openmedreason.run.executor import step_outputs

    return step_outputs(Path(run_dir), INPUT_STEP)


def iter_instances(run_dir: Path) -> Iterator[Instance]:
    """The run's verified instances, streamed in a stable order (C2 kept parts, sorted)."""
    from openmedreason.run.store import iter_records

    yield from iter_records(input_files(run_dir), Instance)  # type: ignore[misc]


def input_fingerprint(paths: list[Path]) -> str:
    return hf.files_sha256(paths).hexdigest()[:16]


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("openmedreason", "pyarrow", "imagehash", "datasketch", "numpy", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _resolve_image(path: str | None, run_dir: Path) -> Path | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = run_dir / p
    return p if p.is_file() else None


def instance_models(inst: Instance) -> list[str]:
    """Server-reported models that made the instance (its and its panel's provenance)."""
    return sorted({p.model for p in [*inst.panel.provenance, *inst.provenance] if p.model})


def instance_row(inst: Instance, image_bytes: bytes, image_name: str, phash: int) -> dict[str, Any]:
    """One dataset row (contract D) for a verified instance."""
    p = inst.panel
    return {
        "image": {"bytes": image_bytes, "path": image_name},
        "question": inst.question_text(),
        "reasoning": inst.reasoning,
        "answer": inst.answer,
        "perception": [],
        "knowledge": [],
        "rationale": [],
        "id": inst.id,
        "article_id": p.article_id,
        "pmcid": p.pmcid,
        "doi": p.doi,
        "license": p.license,
        "figure_id": p.figure_id,
        "panel": p.panel,
        "title": p.title,
        "category": inst.category,
        "family": inst.family,
        "modality_group": p.modality_group,
        "modality": p.modality,
        "style": inst.style,
        "image_scope": inst.image_scope,
        "answer_format": inst.answer_format,
        "engine": inst.engine,
        "models": instance_models(inst),
        "stem": inst.stem,
        "options": list(inst.options),
        "image_phash": phash_hex(phash),
    }


def _load_run_config(run_dir: Path):  # noqa: ANN202
    from openmedreason.config import RunConfig

    man = run_dir / "manifest.json"
    if man.exists():
        try:
            return RunConfig.model_validate(json.loads(man.read_text()).get("config") or {})
        except (ValueError, TypeError):
            pass
    return RunConfig()


class _Meta:
    """Per-instance metadata of pass 1 (small: ints, short strings, one signature row)."""

    def __init__(self, num_perm: int) -> None:
        self.ids: list[str] = []
        self.article: list[int] = []
        self.stratum: list[int] = []
        self.image: list[int] = []  # distinct-image index, -1 = missing
        self.reason: list[str | None] = []
        self.articles: list[str] = []
        self._article_ix: dict[str, int] = {}
        self.strata: list[tuple[str, str]] = []
        self._stratum_ix: dict[tuple[str, str], int] = {}
        self.image_hash: list[int] = []
        self.image_ix: dict[str, int] = {}
        self.detail: dict[int, str] = {}
        self.kept_id: dict[int, str] = {}
        self.benchmark: dict[int, str] = {}
        self.matches: dict[int, Match] = {}
        self.num_perm = num_perm
        self._sig_chunks: list[np.ndarray] = []
        self._sig_cur: np.ndarray | None = None
        self._sig_fill = 0

    def intern_article(self, a: str) -> int:
        k = self._article_ix.get(a)
        if k is None:
            k = self._article_ix[a] = len(self.articles)
            self.articles.append(a)
        return k

    def intern_stratum(self, s: tuple[str, str]) -> int:
        k = self._stratum_ix.get(s)
        if k is None:
            k = self._stratum_ix[s] = len(self.strata)
            self.strata.append(s)
        return k

    def add_signature(self, sig: np.ndarray) -> None:
        if self._sig_cur is None or self._sig_fill == len(self._sig_cur):
            self._sig_cur = np.zeros((4096, self.num_perm), dtype=sig.dtype)
            self._sig_chunks.append(self._sig_cur)
            self._sig_fill = 0
        self._sig_cur[self._sig_fill] = sig
        self._sig_fill += 1

    def signature(self, i: int) -> np.ndarray:
        return self._sig_chunks[i // 4096][i % 4096]

    def reject(self, i: int, code: str, detail: str | None = None, kept_id: str | None = None, benchmark: str | None = None) -> None:
        self.reason[i] = code
        if detail:
            self.detail[i] = detail
        if kept_id:
            self.kept_id[i] = kept_id
        if benchmark:
            self.benchmark[i] = benchmark


def _question_dups(rows: list[int], m: _Meta, threshold: float, lsh_from: int = 48) -> Iterator[tuple[int, tuple[int, float]]]:
    """Rows (in the given order) that duplicate an earlier kept row: ``(row, (kept row, Jaccard))``.
    Small clusters compare every pair; big ones query a MinHash LSH of the kept rows."""
    kept: list[int] = []
    lsh = None
    for r in rows:
        sig = m.signature(r)
        if lsh is None and len(kept) >= lsh_from:
            from datasketch import MinHashLSH

            lsh = MinHashLSH(threshold=threshold, num_perm=m.num_perm)
            for k in kept:
                lsh.insert(k, minhash_object(m.signature(k)), check_duplication=False)
        cands = kept if lsh is None else sorted(lsh.query(minhash_object(sig)))
        best = None
        for k in cands:
            j = jaccard(sig, m.signature(k))
            if j >= threshold and (best is None or (m.ids[k], k) < (m.ids[best[0]], best[0])):
                best = (k, j)
        if best is None:
            kept.append(r)
            if lsh is not None:
                lsh.insert(r, minhash_object(sig), check_duplication=False)
        else:
            yield r, best


def build_dataset(
    run_dir: Path | str,
    config: Any | None = None,
    *,
    out: Path | str | None = None,
    build_config: BuildConfig | None = None,
    registry: Registry | Path | str | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> BuildResult:
    """Build ``RUN/dataset/`` (or ``out``) from the run's verified instances.

    ``config`` is the run's :class:`~openmedreason.config.RunConfig` (None: the one recorded in
    ``RUN/manifest.json``, else defaults); its ``[build]`` table becomes the
    :class:`BuildConfig` unless ``build_config`` is given. ``registry`` overrides the
    decontamination registry directory. Writes Parquet shards, ``rejected.parquet``,
    ``build.json`` and the card; replaces an earlier build atomically (by directory rename).
    """
    run_dir = Path(run_dir)
    run_cfg = config if config is not None else _load_run_config(run_dir)
    bc = build_config or BuildConfig.from_run(run_cfg)
    seed = bc.resolved_seed(getattr(run_cfg, "seed", 0) or 0)
    out = Path(out) if out is not None else run_dir / "dataset"
    if not (run_dir / INPUT_STEP).is_dir():
        raise FileNotFoundError(f"{run_dir} has no {INPUT_STEP}/ output: run the pipeline first (omr run)")
    parts = input_files(run_dir)
    say = progress or (lambda stage, n: None)

    # decontamination index (registry-sized, independent of the number of instances)
    reg = registry if isinstance(registry, Registry) else Registry(registry if registry is not None else bc.registry_dir())
    names = reg.names() if bc.decontam_benchmarks is None else list(bc.decontam_benchmarks)
    index: DecontamIndex | None = None
    if names:
        index = reg.index(
            names,
            num_perm=bc.num_perm,
            image_hamming=bc.image_hamming,
            question_threshold=bc.decontam_question_threshold,
            min_tokens=bc.decontam_min_tokens,
        )

    # ---------------------------------------------------------------- pass 1: metadata
    m = _Meta(bc.num_perm)
    seen: dict[str, int] = {}
    generation: Counter = Counter()  # (step, engine, model, template) over kept-or-not instances
    for i, inst in enumerate(iter_instances(run_dir)):
        m.ids.append(inst.id)
        m.reason.append(None)
        m.article.append(m.intern_article(inst.panel.article_id))
        m.stratum.append(m.intern_stratum((inst.family, inst.panel.modality_group or "unknown")))
        m.add_signature(minhash(question_words(inst.stem, inst.options), bc.num_perm))
        m.image.append(-1)
        for pv in [*inst.panel.provenance, *inst.provenance]:
            generation[(pv.step, pv.engine, pv.model or "", pv.template or "")] += 1
        if inst.id in seen:
            m.reject(i, DUP_ID, f"same id as input row {seen[inst.id]}", kept_id=inst.id)
            continue
        seen[inst.id] = i
        path = _resolve_image(inst.image_path, run_dir)
        if path is None:
            m.reject(i, IMAGE_MISSING, f"no image file at {inst.image_path!r}")
            continue
        key = str(path)
        k = m.image_ix.get(key)
        if k is None:
            try:
                h = phash_file(path)
            except Exception as exc:  # undecodable file
                h = -1
                m.detail[i] = f"{type(exc).__name__}: {exc}"
            k = m.image_ix[key] = len(m.image_hash)
            m.image_hash.append(h)
        if m.image_hash[k] < 0:
            m.reject(i, IMAGE_MISSING, m.detail.get(i) or f"cannot decode {key}")
            continue
        m.image[i] = k
        if index is not None:
            hit = index.match_article(inst.panel.article_id, inst.panel.pmcid) or index.match_question(inst.stem)
            if hit is not None:
                m.matches[i] = hit
        if (i + 1) % 5000 == 0:
            say("read", i + 1)
    n = len(m.ids)
    seen.clear()
    say("read", n)

    # ---------------------------------------------------------------- image clusters
    live_imgs = sorted({m.image[i] for i in range(n) if m.reason[i] is None})
    vals = sorted({m.image_hash[k] for k in live_imgs})
    val_ix = {v: j for j, v in enumerate(vals)}
    uf_dup, uf_split = UnionFind(len(vals)), UnionFind(len(vals))
    for a, b, d in near_pairs(vals, bc.split_image_hamming):
        uf_split.union(a, b)
        if d <= bc.image_hamming:
            uf_dup.union(a, b)

    def val_of(i: int) -> int:
        return val_ix[m.image_hash[m.image[i]]]

    # ---------------------------------------------------------------- dedup: images across articles
    best: dict[int, tuple[str, str, int]] = {}  # dedup cluster -> (article, id, row) kept
    for i in range(n):
        if m.reason[i] is None:
            c = uf_dup.find(val_of(i))
            cand = (m.articles[m.article[i]], m.ids[i], i)
            if c not in best or cand < best[c]:
                best[c] = cand
    for i in range(n):
        if m.reason[i] is None:
            art, kid, krow = best[uf_dup.find(val_of(i))]
            if art != m.articles[m.article[i]]:
                d = hamming(m.image_hash[m.image[i]], m.image_hash[m.image[krow]])
                m.reject(i, DUP_IMAGE, f"near-duplicate of the image of {kid} (article {art}, pHash distance {d})", kept_id=kid)

    # ---------------------------------------------------------------- dedup: questions per image cluster
    by_cluster: dict[int, list[int]] = {}
    for i in range(n):
        if m.reason[i] is None:
            by_cluster.setdefault(uf_dup.find(val_of(i)), []).append(i)
    for rows in by_cluster.values():
        if len(rows) < 2:
            continue
        rows.sort(key=lambda r: m.ids[r])
        for r, (k, j) in _question_dups(rows, m, bc.question_threshold):
            m.reject(r, DUP_QUESTION, f"question Jaccard {j:.2f} with {m.ids[k]} on the same image cluster", kept_id=m.ids[k])
    del by_cluster, best

    # ---------------------------------------------------------------- decontamination
    image_hits: dict[int, Match] = {}
    if index is not None and len(index.phashes):
        image_hits = index.match_images(np.asarray(vals, dtype=np.uint64))
    for i in range(n):
        if m.reason[i] is not None:
            continue
        hit = m.matches.get(i)
        if hit is None or hit.how != "article":
            hit = image_hits.get(val_of(i)) or hit
        if hit is not None:
            m.reject(i, CONTAMINATED, hit.detail(), benchmark=hit.benchmark)
    m.matches.clear()

    # ---------------------------------------------------------------- split
    # link articles through every image that passed the input checks (also those rejected as
    # duplicates or contaminated: the article keeping a figure and the one that republished it
    # stay in one split even when the copy itself was dropped)
    uf_art = UnionFind(len(m.articles))
    first_article: dict[int, int] = {}
    for i in range(n):
        if m.image[i] >= 0 and m.reason[i] not in (DUP_ID, IMAGE_MISSING):
            c = uf_split.find(val_of(i))
            a = m.article[i]
            if c in first_article:
                uf_art.union(a, first_article[c])
            else:
                first_article[c] = a
    group_ix: dict[int, int] = {}
    group_strata: list[Counter] = []
    group_keys: list[str] = []
    row_group: dict[int, int] = {}
    for i in range(n):
        if m.reason[i] is None:
            root = uf_art.find(m.article[i])
            g = group_ix.get(root)
            if g is None:
                g = group_ix[root] = len(group_strata)
                group_strata.append(Counter())
                group_keys.append(m.articles[m.article[i]])
            group_strata[g][m.stratum[i]] += 1
            group_keys[g] = min(group_keys[g], m.articles[m.article[i]])
            row_group[i] = g
    n_live = len(row_group)
    from openmedreason.build.split import assign, target_size

    n_test = target_size(n_live, bc.test_size, bc.test_fraction)
    plan = assign(group_strata, group_keys, n_test, seed)
    is_test = {i for i, g in row_group.items() if g in plan.test_groups}

    # ---------------------------------------------------------------- funnel
    counts = Counter(r for r in m.reason if r is not None)
    steps: dict[str, Any] = {}
    remaining = n
    for step, codes in BUILD_STEPS.items():
        rej = {c: counts[c] for c in codes if counts[c]}
        kept = remaining - sum(rej.values())
        steps[step] = {"in": remaining, "kept": kept, "rejected": rej}
        remaining = kept
    steps["build.split"].update(train=n_live - len(is_test), test=len(is_test))

    # ---------------------------------------------------------------- pass 2: write
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "data").mkdir(parents=True)
    writers = {
        s: hf.SplitWriter(tmp / "data", s, k, rows_per_file=bc.rows_per_file, row_group_rows=bc.row_group_rows)
        for s, k in (("train", n_live - len(is_test)), ("test", len(is_test)))
    }
    rej_rows: list[dict] = []
    with pq.ParquetWriter(tmp / "rejected.parquet", REJECTED_SCHEMA, compression="zstd") as rw:
        for i, inst in enumerate(iter_instances(run_dir)):
            code = m.reason[i]
            if code is not None:
                rej_rows.append(
                    {
                        "id": inst.id,
                        "reason": code,
                        "detail": m.detail.get(i),
                        "kept_id": m.kept_id.get(i),
                        "benchmark": m.benchmark.get(i),
                        "article_id": inst.panel.article_id,
                        "step": _STEP_OF[code],
                    }
                )
                if len(rej_rows) >= 4096:
                    rw.write_table(pa.Table.from_pylist(rej_rows, schema=REJECTED_SCHEMA))
                    rej_rows = []
                continue
            path = _resolve_image(inst.image_path, run_dir)
            assert path is not None
            row = instance_row(inst, path.read_bytes(), path.name, m.image_hash[m.image[i]])
            writers["test" if i in is_test else "train"].write(row)
            if (i + 1) % 5000 == 0:
                say("write", i + 1)
        if rej_rows:
            rw.write_table(pa.Table.from_pylist(rej_rows, schema=REJECTED_SCHEMA))
    files = {s: [p.name for p in w.close()] for s, w in writers.items()}
    say("write", n)

    strata = {
        f"{m.strata[s][0]} × {m.strata[s][1]}": {
            "total": sum(gs.get(s, 0) for gs in group_strata),
            "test": plan.achieved.get(s, 0),
            "target": round(plan.targets.get(s, 0.0), 2),
        }
        for s in sorted(plan.targets, key=lambda s: m.strata[s])
    }
    build = {
        "format": "openmedreason-dataset/1",
        "run_dir": str(run_dir.resolve()),
        "input": {"step": INPUT_STEP, "files": len(parts), "instances": n, "fingerprint": input_fingerprint(parts)},
        "config": bc.model_dump(mode="json"),
        "seed": seed,
        "steps": steps,
        "split": {
            "train": n_live - len(is_test),
            "test": len(is_test),
            "test_target": n_test,
            "groups": len(group_strata),
            "test_groups": len(plan.test_groups),
            "strata": strata,
        },
        "images": {"distinct_files": len(m.image_hash), "distinct_hashes": len(vals)},
        "decontam": {
            "registry": str(reg.root),
            "benchmarks": {name: reg.info(name).get("items") for name in names},
            "items": len(index) if index is not None else 0,
        },
        "files": files,
        "generation": [
            {"step": k[0], "engine": k[1], "model": k[2] or None, "template": k[3] or None, "instances": v}
            for k, v in sorted(generation.items())
        ],
        "versions": _versions(),
    }
    (tmp / "build.json").write_text(json.dumps(build, indent=2, ensure_ascii=False) + "\n")

    # swap the new build in
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)

    from openmedreason.build.card import write_card

    write_card(out)
    return BuildResult(
        dataset_dir=out,
        train=build["split"]["train"],
        test=build["split"]["test"],
        rejected=dict(counts),
        files={s: [out / "data" / f for f in fs] for s, fs in files.items()},
        build=build,
    )
