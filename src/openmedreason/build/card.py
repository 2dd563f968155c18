"""Dataset card (``DATASET/README.md``), recomputed from the Parquet files and ``build.json``.

Every number is counted from the data each time :func:`write_card` runs, so re-running it after
``omr rubric`` filled the test split refreshes the rubric counts. The run's ``funnel.json`` and
``manifest.json`` (next to the dataset folder, or at ``build.json``'s ``run_dir``) add the
pipeline funnel and the generation settings when present.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from openmedreason.build import hf

#: columns the card reads (never the image bytes)
_CARD_COLUMNS = [
    "id",
    "article_id",
    "pmcid",
    "doi",
    "title",
    "license",
    "category",
    "family",
    "modality_group",
    "modality",
    "answer",
    "engine",
    "models",
    "image_phash",
    "perception",
    "knowledge",
    "rationale",
]


def _size_category(n: int) -> str:
    for limit, name in ((1000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def collect_stats(dataset_dir: Path) -> dict[str, Any]:
    """Counts per split from the Parquet files (streamed, images not read)."""
    st: dict[str, Any] = {
        "rows": Counter(),
        "category": defaultdict(Counter),  # (category, family) -> split -> n
        "family": defaultdict(Counter),
        "modality": defaultdict(Counter),  # (group, modality)
        "answer": defaultdict(Counter),
        "license_rows": Counter(),
        "license_articles": defaultdict(set),
        "engine": Counter(),
        "models": Counter(),
        "articles": defaultdict(set),
        "images": defaultdict(set),
        "units": defaultdict(Counter),  # split -> axis -> units
        "items_with_rubric": Counter(),
        "attribution": {},
    }
    for split in hf.SPLITS:
        for r in hf.read_rows(dataset_dir, split, columns=_CARD_COLUMNS):
            st["rows"][split] += 1
            st["category"][(r["category"], r["family"])][split] += 1
            st["family"][r["family"]][split] += 1
            st["modality"][(r["modality_group"] or "unknown", r["modality"] or "-")][split] += 1
            st["answer"][r["answer"]][split] += 1
            lic = r["license"] or "unknown"
            st["license_rows"][lic] += 1
            st["license_articles"][lic].add(r["article_id"])
            st["engine"][r["engine"] or "unknown"] += 1
            for model in r["models"] or []:
                st["models"][model] += 1
            st["articles"][split].add(r["article_id"])
            st["images"][split].add(r["image_phash"])
            n_units = 0
            for axis in hf.AXES:
                k = len(r[axis] or [])
                st["units"][split][axis] += k
                n_units += k
            st["items_with_rubric"][split] += n_units > 0
            a = st["attribution"].setdefault(
                r["article_id"], {"title": r["title"], "doi": r["doi"], "pmcid": r["pmcid"], "license": lic, "rows": 0}
            )
            a["rows"] += 1
    return st


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") if text is not None else ""


def _run_dir(dataset_dir: Path, build: dict[str, Any]) -> Path | None:
    for cand in (dataset_dir.parent, Path(build.get("run_dir", "") or "/nonexistent")):
        if (cand / "funnel.json").exists() or (cand / "manifest.json").exists():
            return cand
    return None


def _source_link(a: dict[str, Any]) -> str:
    parts = []
    if a.get("pmcid"):
        parts.append(f"[{a['pmcid']}](https://pmc.ncbi.nlm.nih.gov/articles/{a['pmcid']}/)")
    if a.get("doi"):
        parts.append(f"[doi:{a['doi']}](https://doi.org/{a['doi']})")
    return ", ".join(parts) or "-"


def render_card(dataset_dir: Path) -> str:
    """The card's Markdown text (front matter + body)."""
    dataset_dir = Path(dataset_dir)
    build = json.loads((dataset_dir / "build.json").read_text()) if (dataset_dir / "build.json").exists() else {}
    st = collect_stats(dataset_dir)
    run = _run_dir(dataset_dir, build)
    funnel = json.loads((run / "funnel.json").read_text()) if run and (run / "funnel.json").exists() else None
    manifest = json.loads((run / "manifest.json").read_text()) if run and (run / "manifest.json").exists() else None
    n_train, n_test = st["rows"]["train"], st["rows"]["test"]
    total = n_train + n_test

    licenses = sorted(st["license_rows"])
    splits = ("train", "test")
    front = [
        "---",
        "license: other",
        f"license_name: {'-'.join(licenses) if len(licenses) == 1 else 'mixed-open-access'}",
        "license_details: per-row `license` column (normalised licence of the source article); see Licences below",
        "language:",
        "- en",
        "task_categories:",
        "- visual-question-answering",
        "- question-answering",
        "tags:",
        "- medical",
        "- multiple-choice",
        "- reasoning",
        "size_categories:",
        f"- {_size_category(total)}",
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for s in splits:
        if hf.split_files(dataset_dir, s):  # an empty split has no file to point at
            front += [f"  - split: {s}", f"    path: data/{s}-*"]
    front += ["---", ""]
    body: list[str] = ["# OpenMedReason-style medical VQA with reasoning traces", ""]
    body += [
        "Multiple-choice questions about figures of open-access biomedical articles, each with a reasoning trace "
        "`<think>…</think>\\n<answer>X</answer>` grounded in the article text. Built with "
        f"openmedreason {build.get('versions', {}).get('openmedreason', '')}.",
        "",
        "Load it with `datasets.load_dataset(\"parquet\", data_dir=\"data\")` (the `image` column decodes to a PIL image).",
        "",
        "## Sizes",
        "",
    ]
    body += _table(
        ["split", "rows", "articles", "distinct images"],
        [[s, st["rows"][s], len(st["articles"][s]), len(st["images"][s])] for s in splits]
        + [["total", total, len(st["articles"]["train"] | st["articles"]["test"]), len(st["images"]["train"] | st["images"]["test"])]],
    )
    shared = st["articles"]["train"] & st["articles"]["test"]
    body += ["", f"Articles in both splits: {len(shared)} (the split is grouped by article and near-duplicate image)."]
    if build.get("split"):
        sp = build["split"]
        body += [
            f"Test target: {sp.get('test_target')} items, stratified by family × modality group over "
            f"{sp.get('groups')} article groups (seed {build.get('seed')}).",
        ]

    body += ["", "## Pipeline", ""]
    if funnel:
        body += ["Curation funnel of the run (`funnel.json`):", ""]
        body += _table(
            ["step", "in", "kept", "rejected", "reasons"],
            [
                [name, s["in"], s["kept"], sum(s["rejected"].values()), ", ".join(f"{k}: {v}" for k, v in sorted(s["rejected"].items())) or "-"]
                for name, s in funnel.get("steps", {}).items()
            ],
        )
        body += [""]
    if build.get("steps"):
        body += ["Build funnel (`build.json`; rejected rows are listed in `rejected.parquet`):", ""]
        body += _table(
            ["step", "in", "kept", "rejected", "reasons"],
            [
                [name, s["in"], s["kept"], sum(s["rejected"].values()), ", ".join(f"{k}: {v}" for k, v in sorted(s["rejected"].items())) or "-"]
                for name, s in build["steps"].items()
            ],
        )
        dec = build.get("decontam", {})
        bench = dec.get("benchmarks") or {}
        body += [
            "",
            "Decontamination against: "
            + (", ".join(f"{k} ({v} items)" for k, v in sorted(bench.items())) if bench else "no registered benchmark")
            + ".",
        ]

    body += ["", "## Categories", ""]
    body += _table(
        ["category", "family", "train", "test"],
        [[c, f, n["train"], n["test"]] for (c, f), n in sorted(st["category"].items(), key=lambda kv: (str(kv[0][1]), str(kv[0][0])))],
    )
    body += ["", "### Families", ""]
    body += _table(["family", "train", "test"], [[f, n["train"], n["test"]] for f, n in sorted(st["family"].items(), key=lambda kv: str(kv[0]))])
    body += ["", "## Modalities", ""]
    body += _table(
        ["modality group", "modality", "train", "test"],
        [[g, mo, n["train"], n["test"]] for (g, mo), n in sorted(st["modality"].items())],
    )
    body += ["", "## Answer letters", ""]
    body += _table(
        ["answer", "train", "test", "share"],
        [[a, n["train"], n["test"], f"{(n['train'] + n['test']) / total:.1%}" if total else "-"] for a, n in sorted(st["answer"].items())],
    )
    body += ["", "## Licences", ""]
    body += _table(
        ["license", "rows", "articles"],
        [[lic, st["license_rows"][lic], len(st["license_articles"][lic])] for lic in licenses],
    )
    body += [
        "",
        "Each row keeps the licence of its source article; reuse must follow it (attribution below).",
        "",
        "## Generation",
        "",
    ]
    body += _table(["engine", "rows"], [[e, k] for e, k in sorted(st["engine"].items())])
    body += [""]
    if st["models"]:
        body += _table(["model (server-reported)", "rows"], [[_md(mo), k] for mo, k in sorted(st["models"].items())])
    else:
        body += ["Models: none (offline engine: heuristic generation, no language model)."]
    gen = build.get("generation") or []
    if gen:
        templates: Counter = Counter()
        for g in gen:
            if g.get("template"):
                templates[(g["step"], g["template"])] += g["instances"]
        if templates:
            body += ["", "Prompt templates (step, `name@version`, instances read by the build):", ""]
            body += _table(["step", "template", "instances"], [[s, t, k] for (s, t), k in sorted(templates.items())])
    if manifest:
        body += [
            "",
            f"Run: engine `{manifest.get('engine')}`, seed {manifest.get('seed')}, config hash `{manifest.get('config_hash')}`, "
            f"openmedreason {manifest.get('version')}.",
        ]
        steps = manifest.get("steps") or []
        if steps:
            body += ["", "Step versions:", ""]
            body += _table(["step", "version"], [[s.get("name"), s.get("version")] for s in steps])

    units = st["units"]
    if any(sum(units[s].values()) for s in splits):
        body += ["", "## Rubric (PKR units)", ""]
        body += _table(
            ["split", "items with units", *hf.AXES],
            [[s, st["items_with_rubric"][s], *(units[s][a] for a in hf.AXES)] for s in splits],
        )

    body += ["", "## Columns", ""]
    body += [
        "`image` (embedded bytes, `Image` feature), `question` (stem, then `A. …` lines), `reasoning`, `answer` (letter), "
        "`perception` / `knowledge` / `rationale` (rubric units; empty on train and until `omr rubric` fills the test split), "
        "and `id`, `article_id`, `pmcid`, `doi`, `license`, `figure_id`, `panel`, `title`, `category`, `family`, "
        "`modality_group`, `modality`, `style`, `image_scope`, `answer_format`, `engine`, `models`, `stem`, `options`, "
        "`image_phash`."
    ]

    body += ["", "## Attribution", "", f"Source articles ({len(st['attribution'])}):", ""]
    body += _table(
        ["article", "title", "source", "license", "rows"],
        [
            [_md(aid), _md(a["title"] or "-"), _source_link(a), a["license"], a["rows"]]
            for aid, a in sorted(st["attribution"].items())
        ],
    )
    return "\n".join(front + body) + "\n"


def write_card(dataset_dir: Path) -> Path:
    """Write ``DATASET/README.md`` from the current Parquet files and ``build.json``; returns its path."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / "README.md"
    tmp = path.with_name("README.md.tmp")
    tmp.write_text(render_card(dataset_dir))
    tmp.replace(path)
    return path
