"""``omr compare`` and the ``omr eval`` / ``omr compare`` commands.

The pairwise judge's verdicts come from the loopback fake server and are scripted by the test
(not model output); the two evaluations compared are the built-in oracle and the text-only
baseline, neither of which is a model.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from eval_bench_fixture import make_bench
from llm_fake_server import FakeOpenAIServer, Reply, request_text
from openmedreason.cli import app


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from openmedreason.evaluate.run import evaluate

    root = tmp_path_factory.mktemp("cmp")
    bench = make_bench(root, 8)
    evaluate(bench, "builtin:reference", root / "ref", judge="offline", env={})
    evaluate(bench, "builtin:blind", root / "blind", judge="offline", env={})
    return root


def test_compare_paired_accuracy_and_pkr(two_runs, tmp_path):
    from openmedreason.evaluate.report import compare

    root = two_runs
    res = compare(root / "ref", root / "blind" / "results.json", tmp_path, judge="none", env={})
    blind = [json.loads(x) for x in (root / "blind" / "items.jsonl").read_text().splitlines()]
    acc_b = sum(ln["correct"] for ln in blind) / len(blind)
    assert res["n_common_items"] == 8 and res["same_bench_hash"]
    assert res["accuracy"]["a"] == 1.0 and res["accuracy"]["b"] == pytest.approx(acc_b)
    paired = res["accuracy"]["paired"]
    assert json.dumps(paired)  # serialisable
    assert res["pkr"]["perception"]["n"] == 8 and res["pkr"]["perception"]["a"] == pytest.approx(100.0)
    assert res["pkr"]["perception"]["b"] < res["pkr"]["perception"]["a"]
    assert res["pairwise"] is None
    md = (tmp_path / "compare.md").read_text()
    assert "B − A" in md and "Not run" in md
    assert json.loads((tmp_path / "compare.json").read_text())["n_common_items"] == 8


def test_compare_pairwise_with_judge_endpoint(two_runs, tmp_path):
    from openmedreason.evaluate.report import compare

    def respond(body):
        # scripted judge: prefers whichever response is not the text-only baseline
        text = request_text(body)
        first = text.split("BEGIN FIRST RESPONSE", 1)[1].split("END FIRST RESPONSE", 1)[0]
        return Reply(json={"verdict": "second" if "image was not used" in first else "first", "reason": "scripted"})

    with FakeOpenAIServer(responder=respond) as server:
        cfg = {"judge": {"base_url": server.base_url, "model": "judge-model", "max_retries": 0}}
        res = compare(two_runs / "ref", two_runs / "blind", tmp_path, judge="auto", config=cfg, env={})
        assert server.chat_calls == 16  # both orders for 8 items
    pw = res["pairwise"]
    assert pw["wins"] == 8 and pw["win_rate"] == 1.0 and pw["position_consistency"] == 1.0
    assert "Pairwise preference" in (tmp_path / "compare.md").read_text()


def test_cli_eval_and_compare(tmp_path, monkeypatch):
    for var in ("OMR_LLM_BASE_URL", "OMR_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    bench = make_bench(tmp_path, 4)
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "--bench", str(bench), "--model", "builtin:reference", "--out", str(tmp_path / "a"),
                            "--judge", "offline", "--judge-check", "2"])
    assert r.exit_code == 0, r.output
    assert re.search(r"accuracy 100\.0%", r.output) and "offline-lexical" in r.output
    for f in ("items.jsonl", "results.json", "manifest.json", "report.md", "pkr_axes.png", "accuracy_by_category.png"):
        assert (tmp_path / "a" / f).exists(), f
    r = runner.invoke(app, ["eval", "-b", str(bench), "-m", "builtin:blind", "-o", str(tmp_path / "b"), "--judge", "none", "--limit", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "results.json").read_text())["n_items"] == 3
    r = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c"), "--judge", "none"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["n_common_items"] == 3
    # errors are reported, not raised
    r = runner.invoke(app, ["eval", "--bench", str(tmp_path / "nope"), "--model", "builtin:blind", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "cannot load" in r.output
    r = runner.invoke(app, ["eval", "--bench", str(bench), "--model", "builtin:blind", "--out", str(tmp_path / "e"), "--judge", "best"])
    assert r.exit_code == 2
