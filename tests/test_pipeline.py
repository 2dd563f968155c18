"""The whole spine on the real bundled corpus: CLI, funnel, manifest, resume, kill, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from openmedreason.cli import app
from openmedreason.config import RunConfig
from openmedreason.run import pipeline

ROOT = Path(__file__).resolve().parents[1]
ARTICLES = ROOT / "examples" / "corpus" / "articles"
MEDICAL = ROOT / "examples" / "corpus" / "medical" / "metadata.jsonl"
SMALL = [ARTICLES / "elife-43154", ARTICLES / "pone.0178565", ARTICLES / "bjmbr-2004-37-04-459", ARTICLES / "elife-19405"]


def rows(run: Path, step: str, kind: str) -> list[dict]:
    out = []
    for p in sorted((run / step).glob(f"{kind}-*.parquet")):
        out += pq.read_table(p).to_pylist()
    return sorted(out, key=lambda r: r["id"])


def check_funnel(fun: dict) -> None:
    prev_kept = None
    for name, s in fun["steps"].items():
        assert s["in"] == s["kept"] + sum(s["rejected"].values()), name
        if prev_kept is not None:
            assert s["inputs"] == prev_kept, name  # what a step reads is what the previous one kept
        prev_kept = s["kept"]


def test_demo_command_runs_offline(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    fun = json.loads((tmp_path / "demo" / "funnel.json").read_text())
    check_funnel(fun)
    assert fun["steps"]["ingest"]["kept"] > 60  # 10 articles (60 figures, some compound) + 19 medical images
    assert fun["steps"]["a1_pixels"]["kept"] > 30
    assert "a1.too_small" in fun["steps"]["a1_pixels"]["rejected"]  # microaneurysms.png is 102x102
    man = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert man["status"] == "complete" and man["version"] and man["config_hash"]
    assert [s["name"] for s in man["steps"]] == list(pipeline.PIPELINE) and man["engine"] == "offline"
    # offline, from the bundled articles to verified instances with the exact trace format
    assert fun["steps"]["c2_verify"]["kept"] > 0
    for r in rows(tmp_path / "demo", "c2_verify", "kept"):
        assert r["engine"] == "offline" and r["reasoning"].startswith("<think>")
        assert r["reasoning"].endswith(f"</think>\n<answer>{r['answer']}</answer>")
    assert (tmp_path / "demo" / "report.md").exists() and (tmp_path / "demo" / "report" / "funnel.png").exists()
    # the licence travels with every record
    assert all(r["license"] in ("cc-by", "cc0", "cc-by-sa", "public-domain") for r in rows(tmp_path / "demo", "a1_pixels", "kept"))
    # then the dataset build, the rubric of the test split and the evaluation of two baselines
    from datasets import load_dataset

    demo = tmp_path / "demo"
    ds = load_dataset("parquet", data_dir=str(demo / "dataset" / "data"), cache_dir=str(tmp_path / "hf"))
    n_verified = fun["steps"]["c2_verify"]["kept"]
    assert set(ds) == {"train", "test"} and len(ds["train"]) + len(ds["test"]) <= n_verified
    assert ds["test"][0]["image"].size[0] > 0 and ds["test"][0]["perception"]  # units filled offline
    assert not set(ds["train"]["article_id"]) & set(ds["test"]["article_id"])
    assert (demo / "dataset" / "README.md").exists()
    ref = json.loads((demo / "eval" / "reference" / "results.json").read_text())
    blind = json.loads((demo / "eval" / "blind" / "results.json").read_text())
    assert ref["n_items"] == blind["n_items"] == len(ds["test"])
    assert ref["accuracy"]["overall"]["mean"] == 1.0  # the oracle replays the gold traces
    assert len((demo / "eval" / "blind" / "items.jsonl").read_text().splitlines()) == len(ds["test"])
    assert (demo / "eval" / "compare" / "compare.md").exists()


def test_ingest_command_writes_panels(tmp_path):
    res = CliRunner().invoke(app, ["ingest", str(ARTICLES / "elife-43154"), "--out", str(tmp_path / "ing")])
    assert res.exit_code == 0, res.output
    kept = rows(tmp_path / "ing", "ingest", "kept")
    assert kept and {"pmcid", "doi", "license", "figure_id", "caption", "citing_paragraphs", "image_path"} <= set(kept[0])
    assert not (tmp_path / "ing" / "a1_pixels").exists()


def test_bad_source_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["run", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "source not found" in res.output


def test_workers_and_rerun_give_the_same_result(tmp_path):
    cfg = RunConfig(shard_size=1)
    a = pipeline.run(SMALL, tmp_path / "a", cfg)
    b = pipeline.run(SMALL, tmp_path / "b", cfg, workers=2)
    assert a == b
    for step in ("ingest", "a1_pixels"):
        for kind in ("kept", "rejected"):
            assert rows(tmp_path / "a", step, kind) == rows(tmp_path / "b", step, kind)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*.parquet")}
    assert pipeline.run(SMALL, tmp_path / "a", cfg) == a
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*.parquet")} == before


def test_changed_a1_config_recomputes_only_a1(tmp_path):
    run = tmp_path / "r"
    pipeline.run(SMALL, run, RunConfig(shard_size=2))
    ingest_parts = {p: p.stat().st_mtime_ns for p in (run / "ingest").glob("*.parquet")}
    res = pipeline.run(SMALL, run, RunConfig(shard_size=2, steps={"a1_pixels": {"preset": "paper"}}))
    assert {p: p.stat().st_mtime_ns for p in (run / "ingest").glob("*.parquet")} == ingest_parts
    check_funnel(res)
    man = json.loads((run / "manifest.json").read_text())
    assert man["steps"][1]["config"]["preset"] == "paper"


def test_kill_and_resume_on_real_corpus(tmp_path):
    sources = [str(ARTICLES), str(MEDICAL)]
    clean = tmp_path / "clean"
    cmd = [sys.executable, "-m", "openmedreason.cli", "run", *sources, "--shard-size", "1", "--field-map", "medcorpus"]
    subprocess.run([*cmd, "--out", str(clean)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    for wait in (2, 5):
        proc = subprocess.Popen([*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            markers = list((killed / "a1_pixels" / "_markers").glob("*.done.json")) if killed.exists() else []
            if len(markers) >= wait:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run([*cmd, "--out", str(killed)], check=True, capture_output=True)
    assert json.loads((killed / "funnel.json").read_text()) == json.loads((clean / "funnel.json").read_text())
    for step in ("ingest", "a1_pixels"):
        for kind in ("kept", "rejected"):
            a, b = rows(killed, step, kind), rows(clean, step, kind)
            assert [r["id"] for r in a] == [r["id"] for r in b]
            assert len({r["id"] for r in a}) == len(a)


def test_cache_commands(tmp_path):
    from openmedreason.llm.cache import LLMCache

    run = tmp_path / "run"
    cache = LLMCache(run / "_llm" / "cache.sqlite")
    for i, step in enumerate(["a2_text", "a2_text", "b2_mcq"]):
        cache.put(f"k{i}", {"text": "scripted"}, step=step, template=step, model="m", prompt_tokens=10,
                  completion_tokens=5, cost_usd=0.001)
    cache.flush()
    res = CliRunner().invoke(app, ["cache", "stats", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["entries"] == 3
    res = CliRunner().invoke(app, ["cache", "clear", str(run), "--step", "a2_text"])
    assert res.exit_code == 0 and "removed 2" in res.output
    res = CliRunner().invoke(app, ["cache", "stats", str(tmp_path / "nothing")])
    assert res.exit_code == 2


def test_dry_run_estimates_llm_steps_without_calls(tmp_path, monkeypatch):
    """A toy LLM step (no endpoint exists here) estimates from the panels reaching it."""
    from openmedreason.llm import LLMConfig, estimate
    from openmedreason.records import Panel
    from openmedreason.run.steps import Step

    class ToyLLM(Step):
        name = "toy_llm"
        version = "1"
        output = Panel
        uses_llm = True

        def estimate(self, sample, total):
            cfg = LLMConfig(model="m", price_input_per_mtok=1.0, price_output_per_mtok=4.0)
            texts = [r.caption if isinstance(r, Panel) else r.question_text() for r in sample]
            chars = sum(map(len, texts)) / max(len(texts), 1)
            return estimate(cfg, n_calls=total, avg_prompt_chars=chars, images_per_call=1).as_dict()

        def process(self, batch):  # pragma: no cover - a dry run must never call it
            raise AssertionError("dry run processed records")

    real = pipeline.build_steps

    def with_llm(config, run_dir, upto=None, ctx=None):
        steps = real(config, run_dir, upto, ctx)
        return steps if upto else [*steps, ToyLLM().bind(steps[0].ctx)]

    monkeypatch.setattr(pipeline, "build_steps", with_llm)
    report = pipeline.dry_run([MEDICAL], tmp_path / "r", RunConfig(steps={"ingest": {"field_map": "medcorpus"}}))
    kept = list(report["free_steps"].values())[-1]["kept"]
    est = report["llm_steps"]["toy_llm"]
    assert kept > 0 and est["calls"] == kept and est["cost_usd"] > 0
    assert not (tmp_path / "r" / "toy_llm").exists()
