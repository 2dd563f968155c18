"""The run report: numbers equal the Parquet contents, plots are valid PNGs, report.md has the tables.

The panel-level part of the run is the real pipeline on a bundled article; the question-level
steps (b2_mcq, c1_trace, c2_verify) are written here from those real panels, with chosen
categories and answer letters, plus a consistent funnel.json and a usage.json from the ledger.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

import openmedreason.llm.types  # noqa: F401  registers the llm.* reject reasons used below
from openmedreason import report as rpt
from openmedreason.config import RunConfig
from openmedreason.llm.budget import UsageLedger, write_usage_summary
from openmedreason.records import Instance, Panel, Question
from openmedreason.run import pipeline
from openmedreason.run.executor import step_outputs
from openmedreason.run.steps import Rejected
from openmedreason.run.store import iter_records, records_table, rejected_table, write_atomic
from openmedreason.taxonomy import BINARY_OPTIONS, BY_KEY

ROOT = Path(__file__).resolve().parents[1]
ARTICLE = ROOT / "examples" / "corpus" / "articles" / "elife-43154"

# (panel index, category, style, image scope, n options (2 = binary), answer, engine)
SPECS = [
    (0, "findings", "short", "panel", 4, "A", "offline"),
    (0, "anatomy", "short", "panel", 4, "B", "llm"),
    (0, "diagnosis", "long", "full", 5, "E", "llm"),
    (0, "normal_abnormal", "short", "panel", 2, "B", "llm"),
    (1, "findings", "short", "panel", 4, "C", "llm"),
    (1, "mechanism", "short", "full", 4, "D", "llm"),
    (1, "differential", "long", "panel", 5, "A", "llm"),
    (1, "normal_abnormal", "long", "panel", 2, "A", "offline"),
    (1, "diagnosis", "short", "panel", 2, "B", "llm"),
    (2, "management", "long", "full", 4, "A", "llm"),
    (2, "counting", "short", "panel", 4, "A", "llm"),
    (2, "diagnostic_test", "long", "panel", 5, "C", "llm"),
    (2, "findings", "short", "panel", 4, "B", "offline"),
    (2, "hereditary", "long", "panel", 4, "A", "llm"),
]
# kept by c2 = the first 14; c1 rejects one more, c2 rejects two more
EXTRA_C2_REJECTED = [(0, "symptom", "long", "panel", 4, "A", "llm"), (1, "severity", "short", "panel", 4, "A", "llm")]
EXTRA_C1_REJECTED = [(2, "surgery", "long", "panel", 4, "D", "llm")]


def _panels(run: Path) -> list[Panel]:
    panels = list(iter_records(step_outputs(run, "a1_pixels"), Panel))
    assert len(panels) >= 3
    # modality: secondary when known, else the group, else unknown; one licence changed on the copy
    return [
        panels[0].model_copy(update={"modality": "CT", "modality_group": "Radiology"}),
        panels[1].model_copy(update={"modality": None, "modality_group": "Microscopy"}),
        panels[2].model_copy(update={"license": "cc0"}),
    ]


def _question(panels: list[Panel], i: int, spec: tuple, model: type[Question] = Question) -> Question:
    p, cat, style, scope, k, answer, engine = spec
    if k == 2:
        fmt = "normal_abnormal" if cat == "normal_abnormal" else "yes_no"
        options = list(BINARY_OPTIONS[fmt])
    else:
        fmt, options = "standard", [f"option {j}" for j in range(k)]
    extra = {"reasoning": f"<think>because</think>\n<answer>{answer}</answer>"} if model is Instance else {}
    return model(
        id=f"{panels[p].id}|{cat}|{style}|{i}",
        panel=panels[p],
        category=cat,
        family=BY_KEY[cat].family,
        style=style,
        image_scope=scope,
        answer_format=fmt,
        stem="Which option is right?",
        options=options,
        answer=answer,
        engine=engine,
        **extra,
    )


def _write_synthetic_steps(run: Path) -> None:
    panels = _panels(run)
    specs = SPECS + EXTRA_C2_REJECTED + EXTRA_C1_REJECTED
    questions = [_question(panels, i, s) for i, s in enumerate(specs)]
    traces = [_question(panels, i, s, Instance) for i, s in enumerate(specs)]
    n_kept, n_c2 = len(SPECS), len(SPECS) + len(EXTRA_C2_REJECTED)
    for step in ("b2_mcq", "c1_trace", "c2_verify"):
        (run / step).mkdir()
    write_atomic(records_table(questions, Question), run / "b2_mcq" / "kept-00000-0000.parquet")
    write_atomic(records_table(traces[:n_c2], Instance), run / "c1_trace" / "kept-00000-0000.parquet")
    write_atomic(
        rejected_table([Rejected(t, "llm.invalid_output") for t in traces[n_c2:]], Instance, "c1_trace"),
        run / "c1_trace" / "rejected-00000-0000.parquet",
    )
    # c2's kept instances in two parts (the report streams every part)
    write_atomic(records_table(traces[:9], Instance), run / "c2_verify" / "kept-00000-0000.parquet")
    write_atomic(records_table(traces[9:n_kept], Instance), run / "c2_verify" / "kept-00001-0000.parquet")
    write_atomic(
        rejected_table([Rejected(t, "llm.refusal") for t in traces[n_kept:n_c2]], Instance, "c2_verify"),
        run / "c2_verify" / "rejected-00000-0000.parquet",
    )
    fun = json.loads((run / "funnel.json").read_text())
    steps = fun["steps"]
    # written out of pipeline order on purpose: the report sorts them
    fun["steps"] = {
        "c2_verify": {"in": n_c2, "kept": n_kept, "rejected": {"llm.refusal": n_c2 - n_kept}, "shards_done": 1},
        "ingest": steps["ingest"],
        "b2_mcq": {"in": len(specs), "kept": len(specs), "rejected": {}, "shards_done": 1},
        "a1_pixels": steps["a1_pixels"],
        "c1_trace": {"in": len(specs), "kept": n_c2, "rejected": {"llm.invalid_output": len(specs) - n_c2}, "shards_done": 1},
    }
    (run / "funnel.json").write_text(json.dumps(fun))
    ledger = UsageLedger(run)
    ledger.add("b2_mcq", "model-a", requests=17, ok=17, calls=18, retries=1, prompt_tokens=17000, completion_tokens=3400, cost_usd=0.05)
    ledger.add("c1_trace", "model-a", requests=17, ok=16, calls=10, cache_hits=7, prompt_tokens=9000, completion_tokens=5000, cost_usd=0.04, reason="llm.invalid_output")
    ledger.add("c2_verify", "model-b", requests=12, ok=12, batch_requests=12, prompt_tokens=6000, completion_tokens=600, cost_usd=0.01)
    ledger.add("c2_verify", "model-c", requests=4, ok=4, calls=4, prompt_tokens=2000, completion_tokens=200, cost_usd=0.002)
    ledger.flush()
    write_usage_summary(run)


@pytest.fixture(scope="module")
def panel_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "panels"
    pipeline.run([ARTICLE], run, RunConfig(), upto="a1_pixels")  # panel-level part only
    return run


@pytest.fixture(scope="module")
def full_run(panel_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "full"
    shutil.copytree(panel_run, run)
    _write_synthetic_steps(run)
    return run


# ------------------------------------------------------------------------------ parquet truth
def _rows(run: Path, step: str, kind: str = "kept", columns: list[str] | None = None) -> list[dict]:
    out: list[dict] = []
    for p in sorted((run / step).glob(f"{kind}-*.parquet")):
        out += pq.read_table(p, columns=columns).to_pylist()
    return out


def _parquet_funnel(run: Path, step: str) -> dict:
    kept = len(_rows(run, step, columns=["id"]))
    rejected = Counter(r["reject_reason"] for r in _rows(run, step, "rejected", ["reject_reason"]))
    return {"in": kept + sum(rejected.values()), "kept": kept, "rejected": dict(rejected)}


def test_funnel_equals_parquet_and_is_in_pipeline_order(full_run):
    rep = rpt.build_report(full_run)
    assert rep["steps"] == ["ingest", "a1_pixels", "b2_mcq", "c1_trace", "c2_verify"]
    assert rep["final_step"] == "c2_verify" and rep["scope"] == "instances"
    fun = json.loads((full_run / "funnel.json").read_text())["steps"]
    for step in rep["steps"]:
        got = rep["funnel"][step]
        truth = _parquet_funnel(full_run, step)
        assert {k: got[k] for k in ("in", "kept", "rejected")} == truth, step
        assert {k: fun[step][k] for k in ("in", "kept", "rejected")} == truth, step
        assert got["rejected_total"] == got["in"] - got["kept"]
    oy = rep["overall_yield"]
    assert oy["in"] == fun["ingest"]["in"] and oy["kept"] == len(SPECS)
    assert oy["yield_pct"] == round(100 * len(SPECS) / fun["ingest"]["in"], 2)
    assert oy["panel_step"] == "a1_pixels" and oy["per_kept_panel"] == round(len(SPECS) / fun["a1_pixels"]["kept"], 4)
    s = rep["summary"]
    man = json.loads((full_run / "manifest.json").read_text())
    assert (s["version"], s["config_hash"], s["status"], s["started"]) == (man["version"], man["config_hash"], "complete", man["started"])
    assert s["engine"] == man["engine"] == "offline"  # the engine the run resolved, not "auto"


def test_instance_counts_equal_parquet(full_run):
    inst = rpt.build_report(full_run)["instances"]
    rows = _rows(full_run, "c2_verify")
    assert inst["total"] == len(rows) == len(SPECS)
    cats = Counter(r["category"] for r in rows)
    assert {k: v for k, v in inst["categories"].items() if v} == dict(cats)
    assert len(inst["categories"]) == 19 and inst["categories"]["safety"] == 0
    assert {k: v for k, v in inst["families"].items() if v} == dict(Counter(r["family"] for r in rows))
    mods = Counter(r["panel"]["modality"] or r["panel"]["modality_group"] or "unknown" for r in rows)
    assert inst["modalities"] == dict(mods) and set(mods) == {"CT", "Microscopy", "unknown"}
    assert inst["styles"] == dict(Counter(r["style"] for r in rows))
    assert inst["image_scopes"] == dict(Counter(r["image_scope"] for r in rows))
    assert inst["engines"] == dict(Counter(r["engine"] for r in rows)) == {"llm": 11, "offline": 3}
    assert inst["licenses"] == dict(Counter(r["panel"]["license"] for r in rows)) == {"cc-by": 9, "cc0": 5}
    assert inst["answer_formats"] == dict(Counter(r["answer_format"] for r in rows))
    assert sum(inst["style_shares"].values()) == pytest.approx(100, abs=0.02)
    assert inst["published_shares"]["hereditary"] == round(100 * 54 / 194_270, 2)


def test_answer_letters_and_deviation_from_uniform(full_run):
    letters = rpt.build_report(full_run)["instances"]["letters"]
    rows = _rows(full_run, "c2_verify", columns=["answer", "options"])
    std = [r for r in rows if len(r["options"]) in (4, 5)]
    binary = [r for r in rows if len(r["options"]) == 2]
    assert letters["overall"]["counts"] == {l: n for l, n in sorted(Counter(r["answer"] for r in rows).items())}
    assert letters["standard"]["n"] == len(std) == 11 and letters["binary"]["n"] == len(binary) == 3
    assert letters["standard"]["counts"] == {"A": 5, "B": 2, "C": 2, "D": 1, "E": 1}
    # uniform share of a letter = mean over questions of 1/k where the letter is one of the k options
    n4, n5 = sum(len(r["options"]) == 4 for r in std), sum(len(r["options"]) == 5 for r in std)
    uni_a = 100 * (n4 / 4 + n5 / 5) / len(std)
    uni_e = 100 * (n5 / 5) / len(std)
    assert letters["standard"]["uniform_pct"]["A"] == round(uni_a, 2)
    assert letters["standard"]["uniform_pct"]["E"] == round(uni_e, 2)
    assert letters["standard"]["deviation_pts"]["A"] == round(100 * 5 / 11 - uni_a, 2)
    assert letters["overall"]["deviation_pts"]["B"] == round(100 * (4 - (8 / 4 + 3 / 5 + 3 / 2)) / 14, 2) == -0.71
    assert letters["binary"]["counts"] == {"A": 1, "B": 2}
    assert letters["binary"]["deviation_pts"] == {"A": round(100 / 3 - 50, 2), "B": round(200 / 3 - 50, 2)}
    assert letters["binary"]["max_abs_deviation_pts"] == round(200 / 3 - 50, 2)
    assert sum(letters["overall"]["uniform_pct"].values()) == pytest.approx(100, abs=0.05)


def test_panels_usage_and_calls_per_instance(full_run):
    rep = rpt.build_report(full_run)
    panels = rep["panels"]
    rows = _rows(full_run, "a1_pixels", columns=["license"])
    assert panels["step"] == "a1_pixels" and panels["total"] == len(rows)
    assert panels["licenses"] == dict(Counter(r["license"] for r in rows))
    usage = rep["usage"]
    assert list(usage["steps"]) == ["b2_mcq", "c1_trace", "c2_verify"]
    assert set(usage["steps"]["c2_verify"]["models"]) == {"model-b", "model-c"}
    assert usage["steps"]["c2_verify"]["total"]["paid_calls"] == 16  # 4 HTTP calls + 12 Batch API requests
    assert usage["total"]["requests"] == 50 and usage["total"]["cost_usd"] == pytest.approx(0.102)
    per = rep["per_instance"]
    n = len(SPECS)
    assert per["instances"] == n and per["llm_steps"] == ["b2_mcq", "c1_trace", "c2_verify"]
    assert per["requests_per_instance"] == round(50 / n, 4)
    assert per["paid_calls_per_instance"] == round((18 + 10 + 12 + 4) / n, 4)
    assert per["tokens_per_instance"] == round((17000 + 3400 + 9000 + 5000 + 6000 + 600 + 2000 + 200) / n, 4)
    # one call per step for every record entering an LLM step: 17 (b2) + 17 (c1) + 16 (c2)
    assert per["one_call_per_record"] == 50
    assert per["one_call_per_record_per_instance"] == round(50 / n, 4)
    assert per["requests_vs_one_call_per_record"] == 1.0


def test_write_report_markdown_and_plots(full_run):
    path = rpt.write_report(full_run)
    assert path == full_run / "report.md"
    md = path.read_text()
    for name in ("funnel", "categories", "modalities"):
        png = full_run / "report" / f"{name}.png"
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
        assert f"![{name}](report/{name}.png)" in md
    for heading in ("## Run summary", "## Funnel", "### Reject reasons", "### Per category", "### Per family", "### Per modality",
                    "### Answer letters", "## Licences", "## LLM usage and cost", "### Per accepted instance"):
        assert heading in md, heading
    assert "| step | in | kept | rejected | kept % |" in md
    assert "| c2_verify | 16 | 14 | 2 | 87.50 |" in md
    assert "| c2_verify | `llm.refusal` | 2 |" in md
    assert "| Hereditary / future risk | Risk | 1 | 7.14 | 0.03 |" in md
    assert "| c2_verify | model-b | 12 | 12 | 0 |" in md
    assert "| **total** |  | 50 | 44 | 7 |" in md
    assert "one call per step for every record" in md
    assert "panel-level steps only" not in md
    # tables are well formed: every row of a table has its header's column count
    table: list[str] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            widths = {len(l.replace("\\|", "").split("|")) for l in table}
            assert len(widths) == 1, table
            table = []


def test_panel_level_run_says_so(panel_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(panel_run, run)
    (run / "report").mkdir()
    (run / "report" / "categories.png").write_bytes(b"stale")
    rep = rpt.build_report(run)
    assert rep["scope"] == "panels" and rep["instances"] is None and rep["per_instance"] is None and rep["usage"] is None
    assert rep["final_step"] == "a1_pixels"
    md = rpt.write_report(run).read_text()
    assert "panel-level steps only" in md and "### Per category" not in md and "No usage.json" in md
    assert (run / "report" / "funnel.png").is_file() and (run / "report" / "modalities.png").is_file()
    assert not (run / "report" / "categories.png").exists()
    # without funnel.json the counts come from the Parquet parts and agree with it
    funnel = rep["funnel"]
    (run / "funnel.json").unlink()
    again = rpt.build_report(run)
    assert again["funnel_source"] == "parquet"
    assert {s: {k: f[k] for k in ("in", "kept", "rejected")} for s, f in again["funnel"].items()} == {
        s: {k: f[k] for k in ("in", "kept", "rejected")} for s, f in funnel.items()
    }


def test_report_streams_parquet(full_run, monkeypatch):
    """No whole-table reads: parts are streamed batch by batch."""

    def boom(*a, **k):
        raise AssertionError("the report must stream Parquet parts, not load whole tables")

    monkeypatch.setattr(pq, "read_table", boom)
    monkeypatch.setattr(pq.ParquetFile, "read", boom)
    monkeypatch.setattr(rpt, "BATCH_ROWS", 2)
    rep = rpt.build_report(full_run)
    assert rep["instances"]["total"] == len(SPECS)


def test_order_steps_keeps_unknown_steps_in_place():
    assert rpt.order_steps(["c2_verify", "ingest", "mine", "a1_pixels"]) == ["ingest", "mine", "a1_pixels", "c2_verify"]
    assert rpt.order_steps(["b2_mcq", "a2_text", "b1_tasks"]) == ["a2_text", "b1_tasks", "b2_mcq"]
