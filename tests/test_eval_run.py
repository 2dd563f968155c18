"""``evaluate`` end to end against a loopback fake VLM endpoint.

Every reply of the "model" and of the LLM judge here is scripted by the test through
``tests/llm_fake_server.py``: it is not model output. The tests check what the evaluation does
with such replies: extraction, strict scoring, truncation and refusal counts, PKR judging,
results.json against items.jsonl, the manifest, resume without repeated calls.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eval_bench_fixture import make_bench
from llm_fake_server import Fail, FakeOpenAIServer, Reply, request_text
from openmedreason.bench.items import AXES, UnitJudgement
from openmedreason.bench.loaders import load_items

FAST = {"timeout_s": 5.0, "max_retries": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, "concurrency": 4, "connection_pools": 1}


def _eval_cfg(**extra):
    return {"eval": {**FAST, **extra}}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_bench(tmp_path_factory.mktemp("bench"), 8)


@pytest.fixture(scope="module")
def items(bench):
    return load_items(bench)


def lines_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines() if x.strip()]


def stem_of(item) -> str:
    return item.question.split("\n")[0]


def scripted_responder(items, script):
    """Answer each eval request by the item whose stem it contains (``script[index]``)."""
    by_stem = {stem_of(it): k for k, it in enumerate(items)}

    def respond(body):
        text = request_text(body)
        for stem, k in by_stem.items():
            if stem in text:
                return script[k]
        return Reply(content="unexpected request")

    return respond


# the scripted replies: (behaviour, expected correct, expected invalid)
def replies_for(items):
    g = [it.answer for it in items]
    wrong1 = "B" if g[1] != "B" else "C"
    return [
        (Reply(content=f"<think>\nThe image shows a frontal projection of the chest.\n</think>\n<answer>{g[0]}</answer>"), True, False),
        (Reply(content=f"<think>\nA filling defect is seen.\n</think>\n<answer>{wrong1}</answer>"), False, False),
        # hedged between the gold letter and another: invalid, never scored correct
        (Reply(content="<think>\nFragmented cells.\n</think>\n<answer>B or C</answer>"), False, True),
        # cut at the token limit inside the reasoning
        (Reply(content="<think>\nThe smear shows many small mature lymphocytes and", finish_reason="length"), False, True),
        (Reply(content=f"The optic disc is visible, so the answer is {g[4]}."), True, False),
        (Reply(refusal="I can't help with medical images."), False, True),
        (Reply(content="<think>\nSix nuclear lobes.\n</think>\n<answer>Hypersegmented nucleus</answer>"), True, False),
        (Reply(content="<think>\nLarge binucleate cells.\n</think>\n<answer>A, C</answer>"), False, True),
    ]


def test_endpoint_end_to_end_results_match_items(bench, items, tmp_path):
    from openmedreason.bench.score import aggregate, score_item
    from openmedreason.evaluate.run import evaluate

    script = replies_for(items)
    with FakeOpenAIServer(responder=scripted_responder(items, [s[0] for s in script])) as server:
        res = evaluate(bench, "medvlm", tmp_path / "ev", base_url=server.base_url, config=_eval_cfg(),
                       judge="offline", env={"OMR_LLM_API_KEY": "sk-secret-eval"}, chunk_size=3)
        assert server.auth_seen == {"Bearer sk-secret-eval"}
        calls = server.chat_calls
        body = server.requests[0]
    out = tmp_path / "ev"
    lines = lines_of(out)
    assert calls == len(items) == len(lines) == 8
    by_id = {ln["id"]: ln for ln in lines}
    for it, (_, correct, invalid) in zip(items, script):
        ln = by_id[it.id]
        assert ln["correct"] is correct, (it.id, ln["response"], ln["method"])
        assert (ln["extracted"] is None) is invalid, (it.id, ln["method"])
        assert len(ln["prompt_hash"]) == 16 and ln["gold"] == it.answer
        if ln["extracted"] is None:
            assert ln["correct"] is False  # an invalid answer is never scored as a letter
    # results.json recomputed from items.jsonl
    saved = json.loads((out / "results.json").read_text())
    assert saved["accuracy"]["overall"]["mean"] == pytest.approx(sum(ln["correct"] for ln in lines) / 8) == pytest.approx(3 / 8)
    lo, hi = saved["accuracy"]["overall"]["lo"], saved["accuracy"]["overall"]["hi"]
    assert 0.0 <= lo <= 3 / 8 <= hi <= 1.0 and hi > lo
    assert saved["closed"]["n_invalid"] == 4 and saved["closed"]["invalid_rate"] == pytest.approx(0.5)
    assert saved["closed"]["invalid_reasons"]["hedged"] == 1 and saved["closed"]["invalid_reasons"]["multi_letter"] == 1
    assert saved["truncated"] == 1 and by_id[items[3].id]["truncated"] and by_id[items[3].id]["finish_reason"] == "length"
    assert saved["refusals"] == 1 and by_id[items[5].id]["refusal"]
    assert saved["errors"]["n"] == 0 and saved["missing"]["n"] == 0
    assert "strict" in saved["scoring"]["closed"]
    cats = saved["accuracy"]["by_category"]
    for cat in {it.category for it in items}:
        mine = [by_id[it.id]["correct"] for it in items if it.category == cat]
        assert cats[cat]["n"] == len(mine) and cats[cat]["mean"] == pytest.approx(sum(mine) / len(mine))
    # PKR per axis recomputed from the unit judgements in items.jsonl
    scores = []
    for it in items:
        js = [UnitJudgement.model_validate(u) for u in by_id[it.id]["units"]]
        assert {(j.axis, j.unit_id) for j in js} == {(a, u.unit_id) for a in AXES for u in it.units(a)}
        assert all(j.c is None for j in js)  # offline judge: correctness unavailable
        scores.append(score_item(js, it))
        assert by_id[it.id]["pkr"] == json.loads(json.dumps(scores[-1].to_dict()))
    assert saved["pkr"]["aggregate"] == json.loads(json.dumps(aggregate(scores)))
    assert saved["pkr"]["n_judged"] == 8
    # the request: protocol system prompt, image part, lettered options, greedy
    assert "<answer>" in body["messages"][0]["content"]
    parts = body["messages"][1]["content"]
    assert any(p["type"] == "image_url" for p in parts)
    assert re.search(r"\nA\. .+\nB\. ", next(p["text"] for p in parts if p["type"] == "text"))
    assert body["temperature"] == 0.0
    # manifest: the server-reported model, base_url without its query, versions, hash
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["server_models"] == ["medvlm-2026-01-01"]
    assert man["model"]["base_url"] == server.base_url
    for f in ("manifest.json", "results.json", "items.jsonl", "report.md"):
        assert "sk-secret-eval" not in (out / f).read_text()
    assert man["judge"]["name"] == "offline-lexical" and man["prompts"]["eval_system"]["id"].startswith("eval_system@")
    assert len(man["bench"]["content_sha256"]) == 64 and "openmedreason" in man["package_versions"]
    assert man["status"] == "complete"
    report = (out / "report.md").read_text()
    assert "correctness is **unavailable**" in report and "medvlm-2026-01-01" in report
    assert (out / "pkr_axes.png").stat().st_size > 1000 and (out / "accuracy_by_category.png").stat().st_size > 1000
    assert res["accuracy"]["overall"]["mean"] == saved["accuracy"]["overall"]["mean"]


def test_resume_after_crash_makes_no_repeated_calls(bench, items, tmp_path, monkeypatch):
    """A crash while judging the second chunk: the rerun keeps the first chunk, re-judges the
    second from its stored responses and only generates the rest. With the cache off, only the
    resume logic can avoid repeated calls."""
    import openmedreason.evaluate.run as run

    out = tmp_path / "ev"
    real = run._judge_lines
    seen = {"n": 0}

    def crashing(*a, **k):
        seen["n"] += 1
        if seen["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    script = [Reply(content=f"<think>\nlooked\n</think>\n<answer>{it.answer}</answer>") for it in items]
    with FakeOpenAIServer(responder=scripted_responder(items, script)) as server:
        monkeypatch.setattr(run, "_judge_lines", crashing)
        with pytest.raises(KeyboardInterrupt):
            run.evaluate(bench, "medvlm", out, base_url=server.base_url, config=_eval_cfg(), judge="offline", env={},
                         no_cache=True, chunk_size=3)
        assert server.chat_calls == 6
        partial = {ln["id"]: ln for ln in lines_of(out)}  # the last line of an item wins
        assert len(partial) == 6 and sum(1 for ln in partial.values() if ln.get("judge_pending")) == 3
        monkeypatch.setattr(run, "_judge_lines", real)
        res = run.evaluate(bench, "medvlm", out, base_url=server.base_url, config=_eval_cfg(), judge="offline", env={},
                           no_cache=True, chunk_size=3)
        assert server.chat_calls == 8  # 6 before the crash + the 2 items never generated
    lines = lines_of(out)
    assert [ln["id"] for ln in lines] == [it.id for it in items]  # compacted: one line per item, in order
    assert all(ln["units"] and not ln.get("judge_pending") for ln in lines)
    assert res["accuracy"]["overall"]["mean"] == 1.0
    man = json.loads((out / "manifest.json").read_text())
    assert man["resume"] == {"lines_kept": 6, "generated": 2, "rejudged": 3}
    # a third run has nothing left to do
    with FakeOpenAIServer() as server:
        run.evaluate(bench, "medvlm", out, base_url=server.base_url, config=_eval_cfg(), judge="offline", env={}, no_cache=True)
        assert server.chat_calls == 0


def test_failed_request_counts_wrong_and_is_retried(bench, items, tmp_path):
    from openmedreason.evaluate.run import evaluate

    out = tmp_path / "ev"
    script = [Reply(content=f"<answer>{it.answer}</answer>") for it in items]
    script[2] = Fail(500, "overloaded")
    with FakeOpenAIServer(responder=scripted_responder(items, script)) as server:
        res = evaluate(bench, "medvlm", out, base_url=server.base_url, config=_eval_cfg(max_retries=0), judge="none", env={})
        assert res["errors"]["n"] == 1 and res["errors"]["ids"] == [items[2].id]
        assert res["accuracy"]["overall"]["mean"] == pytest.approx(7 / 8)  # fixed denominator
        assert res["closed"]["n_invalid"] == 0  # no response is not an invalid answer
        script[2] = Reply(content=f"<answer>{items[2].answer}</answer>")
        before = server.chat_calls
        res = evaluate(bench, "medvlm", out, base_url=server.base_url, config=_eval_cfg(max_retries=0), judge="none", env={})
        assert server.chat_calls == before + 1
    assert res["errors"]["n"] == 0 and res["accuracy"]["overall"]["mean"] == 1.0


def test_unreachable_endpoint_stops_early(bench, tmp_path):
    import socket

    from openmedreason.evaluate.run import EvalError, evaluate

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(EvalError, match="answered none"):
        evaluate(bench, "medvlm", tmp_path / "ev", base_url=f"http://127.0.0.1:{port}/v1", config=_eval_cfg(max_retries=0),
                 judge="none", env={}, chunk_size=2)
    assert len(lines_of(tmp_path / "ev")) == 2  # written as errors: a rerun retries them


def test_resume_with_other_settings_is_refused(bench, tmp_path):
    from openmedreason.evaluate.run import EvalError, evaluate

    out = tmp_path / "ev"
    evaluate(bench, "builtin:blind", out, judge="none", env={}, limit=2)
    with pytest.raises(EvalError, match="other settings"):
        evaluate(bench, "builtin:reference", out, judge="none", env={}, limit=2)


def test_sampling_protocol_and_stop_string(bench, items, tmp_path):
    from openmedreason.evaluate.run import evaluate

    # the server consumed the stop string: the reply ends inside an open <answer>
    script = [Reply(content=f"<think>\nlooked\n</think>\n<answer>{it.answer}") for it in items]
    script[0] = Reply(content=f"<think>\nlooked\n</think>\n<answer>{'A' if items[0].answer != 'A' else 'B'}")
    with FakeOpenAIServer(responder=scripted_responder(items, script)) as server:
        res = evaluate(bench, "medvlm", tmp_path / "ev", base_url=server.base_url, config=_eval_cfg(), judge="none",
                       env={}, samples=3, seed=7, limit=4)
        bodies = list(server.requests)
    assert len(bodies) == 12
    assert {b["temperature"] for b in bodies} == {1.2} and {b["top_p"] for b in bodies} == {0.95}
    assert all(b["stop"] == ["</answer>"] for b in bodies) and {b["seed"] for b in bodies} == {7, 8, 9}
    lines = lines_of(tmp_path / "ev")
    assert len(lines) == 12 and all(ln["stop_appended"] and ln["response"].endswith("</answer>") for ln in lines)
    assert res["samples"] == 3 and res["stop_appended"] == 12
    assert res["accuracy"]["overall"]["mean"] == pytest.approx(3 / 4)
    assert res["sampling"]["pass_at_k"]["mean"] == pytest.approx(3 / 4) and res["sampling"]["maj_at_k"]["mean"] == pytest.approx(3 / 4)


def test_reference_oracle_scores_everything(bench, items, tmp_path):
    from openmedreason.evaluate.run import evaluate

    res = evaluate(bench, "builtin:reference", tmp_path / "ref", judge="offline", env={}, judge_check=3)
    assert res["accuracy"]["overall"]["mean"] == 1.0 and res["closed"]["n_invalid"] == 0
    assert set(res["closed"]["methods"]) == {"answer_tag"}
    pkr = res["pkr"]
    # the reference trace contains every unit's claim verbatim: the lexical judge finds them all
    assert pkr["n_judged"] == len(items) and pkr["ci"]["perception"]["presence"]["mean"] == pytest.approx(100.0)
    assert pkr["ci"]["trace"]["mean"] is None and pkr["aggregate"]["axes"]["perception"]["correctness"] is None
    assert res["judge_check"]["sample"] == 3 and res["judge_check"]["retest"]["all"]["p_agreement"] == 1.0
    report = (tmp_path / "ref" / "report.md").read_text()
    assert "is not a model" in report and "Judge check" in report


def test_blind_baseline_is_labelled_and_never_sees_the_image(bench, items, tmp_path):
    from openmedreason.evaluate.run import evaluate

    res = evaluate(bench, "builtin:blind", tmp_path / "blind", judge="none", env={})
    lines = lines_of(tmp_path / "blind")
    assert all("image was not used" in ln["response"] and ln["extracted"] in "ABCD" for ln in lines)
    assert res["accuracy"]["overall"]["mean"] == pytest.approx(sum(ln["correct"] for ln in lines) / len(lines))
    assert res["pkr"] is None or res["pkr"].get("n_judged") == 0
    man = json.loads((tmp_path / "blind" / "manifest.json").read_text())
    assert "not a model" in man["model"]["note"] and man["judge"]["name"] is None


def judge_responder(items, eval_script):
    """Eval requests: the scripted answers. Judge requests: every unit fully present and correct
    (p=2, c=1), ids read back from the rubric the request shows."""
    eval_resp = scripted_responder(items, eval_script)

    def respond(body):
        text = request_text(body)
        if "Rubric units:" in text:
            block = text.split("Rubric units:", 1)[1]
            ids = re.findall(r'"id": "([PKR]\d+)"', block)
            return Reply(json={"units": [{"unit_id": i, "p": 2, "c": 1, "note": "scripted"} for i in ids]})
        return eval_resp(body)

    return respond


def test_llm_judge_per_axis_and_judge_check(bench, items, tmp_path):
    from openmedreason.evaluate.run import evaluate

    script = [Reply(content=f"<think>\nlooked\n</think>\n<answer>{it.answer}</answer>") for it in items]
    with FakeOpenAIServer(responder=judge_responder(items, script)) as server:
        cfg = {"eval": FAST, "judge": {**FAST, "base_url": server.base_url, "model": "judge-model"}}
        res = evaluate(bench, "medvlm", tmp_path / "ev", base_url=server.base_url, config=cfg, judge="auto", env={},
                       limit=4, judge_check=2)
        judge_bodies = [b for b in server.requests if b["model"] == "judge-model"]
    # per_axis: three calls per response (each item has P, K and R units), perception with the image
    first_run = judge_bodies[:12]
    assert len(first_run) == 12
    with_image = [b for b in first_run if isinstance(b["messages"][-1]["content"], list)
                  and any(p.get("type") == "image_url" for p in b["messages"][-1]["content"])]
    assert len(with_image) == 4
    pkr = res["pkr"]
    for axis in AXES:
        assert pkr["ci"][axis]["score"]["mean"] == pytest.approx(100.0)
        assert pkr["aggregate"]["axes"][axis]["correctness"] == pytest.approx(1.0)
    assert pkr["ci"]["trace"]["mean"] == pytest.approx(100.0) and pkr["aggregate"]["trace_of_axis_means"] == pytest.approx(1.0)
    assert res["scoring"]["pkr_judge"]["name"] == "llm:judge-model:per_axis"
    chk = res["judge_check"]
    assert chk["sample"] == 2 and chk["retest"]["all"]["p_agreement"] == 1.0 and chk["modes"]["all"]["c_agreement"] == 1.0
    man = json.loads((tmp_path / "ev" / "manifest.json").read_text())
    assert man["judge"]["mode"] == "per_axis" and man["judge"]["model_config"]["model"] == "judge-model"
