"""Test helper: synthetic verified runs and real built datasets (contract D).

* :func:`make_run_with_instances` writes ``n`` verified :class:`Instance` records into
  ``RUN/c2_verify/kept-00000-0000.parquet`` exactly as the executor stores them, with real images
  (the bundled corpus images, copied into ``RUN/images/``), plus ``funnel.json`` and
  ``manifest.json``. Each article gets its own distinct image(s), and question stems are drawn
  from a word pool so that no two are near-duplicates: a build keeps every instance unless a test
  plants duplicates.
* :func:`make_dataset` builds a dataset folder from such a run with the real
  :func:`openmedreason.build.dataset.build_dataset` (empty decontamination registry in
  ``tmp_path`` unless one is given) and returns ``RUN/dataset``.

Other tests import these; keep the signatures stable.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Sequence

from openmedreason.records import Instance, Panel, Provenance
from openmedreason.taxonomy import BINARY_OPTIONS, BY_KEY, MODALITY_GROUPS

ROOT = Path(__file__).resolve().parents[1]
MEDICAL_IMAGES = ROOT / "examples" / "corpus" / "medical" / "images"
ARTICLE_DIR = ROOT / "examples" / "corpus" / "articles"

_WORDS = (
    "lesion opacity nodule margin enhancement signal density lobe cortex nucleus cytoplasm stain vessel wall "
    "lumen mucosa gland stroma infiltrate necrosis fibrosis calcification effusion consolidation edema atrophy "
    "hyperplasia dysplasia carcinoma lymphocyte neutrophil macrophage platelet erythrocyte artery vein duct "
    "bronchus alveolus pleura liver kidney spleen pancreas thyroid retina cornea skin dermis epidermis bone "
    "marrow cartilage tendon muscle nerve ganglion axon myelin tumour cyst abscess polyp ulcer hemorrhage "
    "thrombus embolus aneurysm stenosis dilation thickening thinning rupture fracture dislocation erosion "
    "sclerosis granuloma plaque vegetation papilla villus crypt follicle sinus septum capsule hilum apex base "
    "anterior posterior medial lateral superior inferior proximal distal central peripheral focal diffuse "
    "bilateral unilateral acute chronic early late mild moderate severe patchy linear nodular reticular"
).split()

_LICENSES = ("cc-by", "cc-by", "cc0", "cc-by-nc")
_IMAGE_CACHE: list[Path] | None = None


def real_images() -> list[Path]:
    """Distinct real images of the bundled corpus (medical images first, then article figures;
    pairwise pHash distance > 10, so none is a near-duplicate of another)."""
    global _IMAGE_CACHE
    if _IMAGE_CACHE is None:
        from openmedreason.build.dedup import phash_file

        cands = sorted(MEDICAL_IMAGES.iterdir()) + sorted(
            p for p in ARTICLE_DIR.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        chosen: list[Path] = []
        hashes: list[int] = []
        for p in cands:
            try:
                h = phash_file(p)
            except Exception:
                continue
            if all((h ^ o).bit_count() > 10 for o in hashes):
                chosen.append(p)
                hashes.append(h)
        _IMAGE_CACHE = chosen
    return list(_IMAGE_CACHE)


def _stem(rng: random.Random, category: str) -> str:
    words = rng.sample(_WORDS, 9)
    return f"In this {category} question, which {words[0]} {words[1]} best explains the {' '.join(words[2:9])}?"


def make_instance(
    *,
    iid: str,
    article_id: str,
    image: Path,
    category: str,
    rng: random.Random,
    modality_group: str | None = "Radiology",
    modality: str | None = "CT",
    license: str = "cc-by",
    engine: str = "offline",
    model: str | None = None,
    figure: str = "F1",
    panel: str | None = None,
    stem: str | None = None,
    options: Sequence[str] | None = None,
    answer: str | None = None,
) -> Instance:
    """One verified instance (C2 output) about ``image``."""
    fam = BY_KEY[category].family
    if options is None:
        if category == "normal_abnormal":
            options = list(BINARY_OPTIONS["normal_abnormal"])
        else:
            options = [" ".join(rng.sample(_WORDS, 2)) for _ in range(4)]
    letters = "ABCDE"[: len(options)]
    answer = answer or rng.choice(letters)
    pmcid = article_id if article_id.startswith("PMC") else None
    p = Panel(
        id=f"{article_id}|{figure}|{panel or '-'}",
        source=str(image),
        source_kind="jats",
        article_id=article_id,
        pmcid=pmcid,
        doi=f"10.5555/{article_id.lower()}",
        title=f"A study of {article_id}",
        journal="Journal of Synthetic Tests",
        year=2020,
        license=license,
        figure_id=figure,
        figure_label="Figure 1",
        caption="A synthetic caption.",
        panel=panel,
        image_path=str(image),
        full_image_path=str(image),
        image_width=512,
        image_height=512,
        context="Citing text.",
        modality_group=modality_group,
        modality=modality,
        provenance=[Provenance(step="a2_text", engine=engine, model=model, template=f"{engine}-a2_text@1")],
    )
    prov = [
        Provenance(step=s, engine=engine, model=model, template=f"{'' if engine == 'llm' else 'offline-'}{s}@1")
        for s in ("b1_tasks", "b2_mcq", "c1_trace", "c2_verify")
    ]
    return Instance(
        id=iid,
        panel=p,
        category=category,
        family=fam,
        style="short",
        image_scope="panel",
        answer_format="normal_abnormal" if category == "normal_abnormal" else "standard",
        stem=stem or _stem(rng, category),
        options=list(options),
        answer=answer,
        engine=engine,
        provenance=prov,
        reasoning=f"<think>Perception: the image shows it.\nAnswer justification: so {answer}.</think>\n<answer>{answer}</answer>",
    )


def write_instances(run_dir: Path, instances: Sequence[Instance], *, shard: int = 0, batch: int = 0) -> Path:
    """Store instances as the executor does: ``RUN/c2_verify/kept-SSSSS-BBBB.parquet``."""
    from openmedreason.run.store import records_table, write_atomic

    d = Path(run_dir) / "c2_verify"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"kept-{shard:05d}-{batch:04d}.parquet"
    write_atomic(records_table(instances, Instance), path)
    return path


def make_run_with_instances(
    tmp_path: Path,
    n: int,
    *,
    articles: int | None = None,
    name: str = "run",
    seed: int = 0,
    engine: str = "offline",
    model: str | None = None,
    pmcid: bool = True,
    extra: Sequence[Instance] = (),
) -> Path:
    """A run directory with ``n`` synthetic verified instances (plus ``extra`` ones appended).

    Instances are spread over ``articles`` articles (default ``max(1, n // 4)``, at most the number
    of distinct bundled images, about 90); each article owns one distinct real image, so the build
    sees no duplicate. Categories cycle through the taxonomy, modality groups and licences through
    a few values per article. Article ids are ``PMC<number>`` (``pmcid=False``: ``doi:…``)."""
    rng = random.Random(seed)
    imgs = real_images()
    n_articles = max(1, min(articles or max(1, n // 4), len(imgs)))
    run_dir = Path(tmp_path) / name
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    local: list[Path] = []
    for k in range(n_articles):
        dst = run_dir / "images" / f"a{k:03d}_{imgs[k].name}"
        if not dst.exists():
            shutil.copyfile(imgs[k], dst)
        local.append(dst)
    cats = list(BY_KEY)
    groups = list(MODALITY_GROUPS[:3])
    out: list[Instance] = []
    for j in range(n):
        k = j % n_articles
        art = f"PMC{1000 + k}" if pmcid else f"doi:10.5555/art{k}"
        out.append(
            make_instance(
                iid=f"{art}|F1|-|{cats[j % len(cats)]}|{j}",
                article_id=art,
                image=local[k],
                category=cats[j % len(cats)],
                rng=rng,
                modality_group=groups[k % len(groups)],
                modality=("CT", "histology", "photo")[k % 3],
                license=_LICENSES[k % len(_LICENSES)],
                engine=engine,
                model=model,
            )
        )
    out += list(extra)
    write_instances(run_dir, out)
    funnel = {
        "steps": {"c2_verify": {"in": len(out), "kept": len(out), "rejected": {}, "inputs": len(out)}},
        "complete": True,
    }
    (run_dir / "funnel.json").write_text(json.dumps(funnel, indent=2))
    manifest = {
        "package": "openmedreason",
        "version": "test",
        "config": {"seed": seed},
        "config_hash": "synthetic",
        "seed": seed,
        "engine": engine,
        "steps": [{"name": "c2_verify", "version": "1"}],
        "status": "complete",
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return run_dir


def make_dataset(
    tmp_path: Path,
    n: int = 40,
    *,
    run: Path | None = None,
    build: dict[str, Any] | None = None,
    registry: Path | None = None,
    **run_kwargs: Any,
) -> Path:
    """Build a real dataset folder (``RUN/dataset``) with :func:`build_dataset` and return it.

    ``run``: an existing run directory (default: :func:`make_run_with_instances` with ``n`` and
    ``run_kwargs``); ``build``: the ``[build]`` table (default test_fraction 0.25);
    ``registry``: decontamination registry directory (default an empty one under ``tmp_path``)."""
    from openmedreason.build.config import BuildConfig
    from openmedreason.build.dataset import build_dataset
    from openmedreason.config import RunConfig

    run = run or make_run_with_instances(tmp_path, n, **run_kwargs)
    table = {"test_fraction": 0.25, **(build or {})}
    cfg = RunConfig(seed=run_kwargs.get("seed", 0), build=table)
    reg = registry or (Path(tmp_path) / "decontam_registry")
    res = build_dataset(run, cfg, build_config=BuildConfig.from_run(cfg), registry=reg)
    return res.dataset_dir
