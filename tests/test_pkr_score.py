"""PKR score math (``openmedreason.bench.score``) against hand-worked examples (METHOD §7)."""

from __future__ import annotations

import json

import pytest

from openmedreason.bench.items import BenchItem, RubricUnit, UnitJudgement
from openmedreason.bench.score import ItemScore, aggregate, score_item


def J(uid: str, axis: str, p=None, c=None, error=None) -> UnitJudgement:
    return UnitJudgement(unit_id=uid, axis=axis, p=p, c=c, error=error)


def ex1() -> ItemScore:
    # perception: p=2,c=+1 | p=1,c=-1 | p=0  -> presence (1 + .5 + 0)/3 = .5; engaged 2, one +1 -> correctness .5; score .25
    # knowledge:  p=2,c=+1 | p=2,c=0         -> presence 1; correctness 1/2 = .5 (c=0 is not +1); score .5
    # rationale: no units -> skipped;  trace = (.25 + .5)/2 = .375
    js = [J("P1", "perception", 2, 1), J("P2", "perception", 1, -1), J("P3", "perception", 0, None),
          J("K1", "knowledge", 2, 1), J("K2", "knowledge", 2, 0)]
    return score_item(js, {"perception": 3, "knowledge": 2, "rationale": 0}, item_id="ex1")


def ex2() -> ItemScore:
    # perception: two units never engaged -> presence 0, correctness None, score 0
    # knowledge: p=2,c=+1 -> 1;  trace = (0 + 1)/2 = .5
    js = [J("P1", "perception", 0), J("P2", "perception", 0), J("K1", "knowledge", 2, 1)]
    return score_item(js, {"perception": 2, "knowledge": 1}, item_id="ex2")


def ex3() -> ItemScore:
    # perception: error | p=2,c=+1 | p=0 -> judged 2: presence (1 + 0)/2 = .5, correctness 1/1, score .5, 1 error
    # knowledge: 2 units, one judged p=1,c=-1, one never judged -> presence .5, correctness 0, score 0, 1 error
    # rationale: its only unit failed -> no score, left out of the trace
    # trace = (.5 + 0)/2 = .25; errors 3
    js = [J("P1", "perception", error="timeout"), J("P2", "perception", 2, 1), J("P3", "perception", 0),
          J("K1", "knowledge", 1, -1), J("R1", "rationale", error="bad json")]
    return score_item(js, {"perception": 3, "knowledge": 2, "rationale": 1}, item_id="ex3")


def test_hand_worked_item_scores():
    s = ex1()
    p, k = s.axes["perception"], s.axes["knowledge"]
    assert (p.presence, p.correctness, p.score) == (0.5, 0.5, 0.25)
    assert (k.presence, k.correctness, k.score) == (1.0, 0.5, 0.5)
    assert "rationale" not in s.axes and s.score("rationale") is None
    assert s.trace == pytest.approx(0.375) and s.presence_trace == pytest.approx(0.75)
    assert (s.n_units, s.n_errors, p.n_engaged, p.n_correct) == (5, 0, 2, 1)


def test_never_engaged_axis_scores_zero():
    s = ex2()
    p = s.axes["perception"]
    assert (p.presence, p.correctness, p.score, p.n_engaged) == (0.0, None, 0.0, 0)
    assert s.trace == pytest.approx(0.5)


def test_judge_errors_are_excluded_and_counted():
    s = ex3()
    p, k, r = s.axes["perception"], s.axes["knowledge"], s.axes["rationale"]
    assert (p.presence, p.correctness, p.score, p.n_errors, p.n_judged) == (0.5, 1.0, 0.5, 1, 2)
    assert (k.presence, k.correctness, k.score, k.n_errors) == (0.5, 0.0, 0.0, 1)
    assert (r.presence, r.score, r.n_errors) == (None, None, 1)
    assert s.axes_failed == ("rationale",) and s.n_errors == 3
    assert s.trace == pytest.approx(0.25)
    # a judgement without p (and no error) is a failure too
    t = score_item([J("P1", "perception", None, 1)], {"perception": 1})
    assert t.n_errors == 1 and t.trace is None and t.axes_failed == ("perception",)


def test_offline_judge_without_correctness():
    # perception p=2, p=1 with c=None -> presence .75, correctness and score unavailable
    # knowledge p=0 -> score 0 (nothing engaged); trace unavailable; presence_trace (.75 + 0)/2
    s = score_item([J("P1", "perception", 2), J("P2", "perception", 1), J("K1", "knowledge", 0)], {"perception": 2, "knowledge": 1})
    assert (s.axes["perception"].presence, s.axes["perception"].correctness, s.axes["perception"].score) == (0.75, None, None)
    assert s.axes["knowledge"].score == 0.0
    assert s.trace is None and s.presence_trace == pytest.approx(0.375)
    # mixed: correctness over the engaged units whose c is known (here 1 of 2 known, and it is +1)
    m = score_item([J("P1", "perception", 2, 1), J("P2", "perception", 2, None)], {"perception": 2})
    assert m.axes["perception"].correctness == 1.0 and m.axes["perception"].n_c_known == 1


def test_aggregate_hand_worked():
    agg = aggregate([ex1(), ex2(), ex3()])
    P, K, R = agg["axes"]["perception"], agg["axes"]["knowledge"], agg["axes"]["rationale"]
    # per-example means: presence (.5 + 0 + .5)/3; correctness (.5 + 1)/2 (ex2 undefined); score (.25 + 0 + .5)/3
    assert P["presence"] == pytest.approx(1 / 3) and P["correctness"] == pytest.approx(0.75) and P["score"] == pytest.approx(0.25)
    assert (P["n_items"], P["n_items_correctness"]) == (3, 2)
    # pooled: Σp/2 = 1.5 + 0 + 1 over 3 + 2 + 2 judged units; +1 = 1 + 0 + 1 over 2 + 0 + 1 known engaged units
    assert P["presence_pooled"] == pytest.approx(2.5 / 7) and P["correctness_pooled"] == pytest.approx(2 / 3)
    assert (P["n_units"], P["n_engaged"], P["n_errors"]) == (8, 3, 1)
    # knowledge: score (.5 + 1 + 0)/3; pooled presence (2 + 1 + .5)/4; pooled correctness (1 + 1 + 0)/(2 + 1 + 1)
    assert K["score"] == pytest.approx(0.5) and K["presence_pooled"] == pytest.approx(0.875) and K["correctness_pooled"] == pytest.approx(0.5)
    assert (R["n_items"], R["score"], R["presence"], R["n_errors"]) == (1, None, None, 1)
    assert agg["trace_mean"] == pytest.approx((0.375 + 0.5 + 0.25) / 3)
    assert agg["trace_of_axis_means"] == pytest.approx((0.25 + 0.5) / 2)
    assert (agg["n_items"], agg["n_errors"], agg["n_items_with_errors"], agg["axes_failed"]) == (3, 3, 1, 1)
    json.dumps(agg)  # results.json-ready
    assert aggregate([])["trace_mean"] is None


def test_published_trace_column_is_the_mean_of_its_axes():
    # OMR-Bench PKR table of the project page (method_details.md §9.2): P, K, R, Trace (×100)
    rows = {"gpt-5-mini": (61.9, 70.8, 80.2, 70.9), "gemini-3-flash": (64.6, 69.6, 77.3, 70.5),
            "Qwen2.5-VL-7B": (34.3, 34.5, 43.5, 37.4), "+ OpenMedReason": (65.2, 85.0, 83.1, 77.8)}
    for name, (p, k, r, trace) in rows.items():
        # each printed value is rounded to 0.1, so the mean of the printed axes is within 0.1 of Trace
        assert abs((p + k + r) / 3 - trace) <= 0.1, name
        assert abs(0.5 * (p + k + r) - trace) > 10, name  # the "½ Σ" of the page text is a typo
        # score_item on a response whose axes score exactly p, k, r (1000 units per axis, all
        # clearly present, the first p·10 of them correct) reproduces the Trace column
        js, counts = [], {}
        for axis, value in (("perception", p), ("knowledge", k), ("rationale", r)):
            n_right = round(value * 10)
            js += [J(f"{axis[0]}{i}", axis, 2, 1 if i < n_right else -1) for i in range(1000)]
            counts[axis] = 1000
        s = score_item(js, counts)
        assert [round(s.axes[a].score * 100, 1) for a in ("perception", "knowledge", "rationale")] == [p, k, r]
        assert abs(s.trace * 100 - trace) <= 0.1, name


def unit(uid: str) -> RubricUnit:
    return RubricUnit(unit_id=uid, topic="optic disc", claim="The optic disc lies at the left of the image.",
                      presence_question="Does the response discuss the optic disc?",
                      correctness_question="Does the response correctly state that the optic disc lies at the left?",
                      source_quote="the optic disc at the left")


def test_score_against_an_item_checks_unit_ids():
    item = BenchItem(id="it1", benchmark="omr-bench", question="q", options=["a", "b"], answer="A",
                     perception=[unit("P1"), unit("P2")], knowledge=[unit("K1")])
    s = score_item([J("P1", "perception", 2, 1), J("K1", "knowledge", 1, 1)], item)
    assert s.item_id == "it1" and s.axes["perception"].n_errors == 1  # P2 never judged
    assert s.axes["perception"].presence == 1.0 and s.axes["knowledge"].score == 0.5
    with pytest.raises(ValueError, match="has not"):
        score_item([J("P9", "perception", 2, 1)], item)
    with pytest.raises(ValueError, match="two judgements"):
        score_item([J("P1", "perception", 2, 1), J("P1", "perception", 1, 1)], item)
    with pytest.raises(ValueError, match="judgements on knowledge"):
        score_item([J("K1", "knowledge", 1), J("K2", "knowledge", 1)], {"knowledge": 1})
    with pytest.raises(ValueError, match="unknown axes"):
        score_item([], {"observation": 2})


def test_item_score_round_trips_through_json():
    s = ex3()
    back = ItemScore.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
