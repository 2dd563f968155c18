"""PKR trace scores from per-unit judge verdicts (METHOD §7).

For one response and one axis *a* (perception, knowledge, rationale), over the units of *a* the
judge did not fail on:

* ``presence_a``    = mean(p / 2)                           (p ∈ {0, 1, 2})
* ``correctness_a`` = share of c = +1 among units with p ≥ 1 (c ∈ {+1, −1, 0}; 0 counts as not +1)
* ``score_a``       = presence_a × correctness_a, and 0 when no unit was engaged (no p ≥ 1)
* ``trace``         = mean of score_a over the axes that have units (×100 only in reports)

Edge cases, all explicit in the result instead of silently changing the denominator:

* a unit whose judgement has ``error`` set, or no ``p``, or no judgement at all, is a *judge
  error*: left out of every mean and counted (``n_errors``); an axis whose units all failed has
  no score and is left out of the trace (listed in ``ItemScore.axes_failed``);
* ``c is None`` (the offline lexical judge) means correctness is unavailable: correctness is the
  share of +1 among engaged units whose ``c`` is known; when none is known, correctness and score
  are ``None`` (score stays 0 when nothing was engaged) and the item's ``trace`` is ``None`` —
  ``presence_trace`` (mean presence over the axes) is still given;
* an axis without units is skipped (not a zero).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from openmedreason.bench.items import AXES, BenchItem, UnitJudgement

__all__ = ["AxisScore", "ItemScore", "aggregate", "score_item"]


@dataclass(frozen=True)
class AxisScore:
    """One axis of one response. ``presence_sum`` is Σ p/2 over judged units (for pooling)."""

    axis: str
    n_units: int
    n_judged: int
    n_errors: int
    n_engaged: int
    n_c_known: int
    n_correct: int
    presence_sum: float
    presence: float | None
    correctness: float | None
    score: float | None


@dataclass(frozen=True)
class ItemScore:
    """PKR scores of one response to one item (``axes`` holds only axes with units)."""

    item_id: str | None
    axes: dict[str, AxisScore]
    trace: float | None
    presence_trace: float | None
    n_units: int
    n_errors: int
    axes_failed: tuple[str, ...] = field(default=())

    def score(self, axis: str) -> float | None:
        a = self.axes.get(axis)
        return a.score if a else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemScore:
        axes = {k: AxisScore(**v) for k, v in data["axes"].items()}
        return cls(**{**dict(data), "axes": axes, "axes_failed": tuple(data.get("axes_failed", ()))})


def _unit_counts(axes_with_units: Mapping[str, int] | BenchItem) -> tuple[dict[str, int], dict[str, set[str]] | None]:
    if isinstance(axes_with_units, BenchItem):
        ids = {a: {u.unit_id for u in axes_with_units.units(a)} for a in AXES}
        return {a: len(v) for a, v in ids.items()}, ids
    counts = {a: int(axes_with_units.get(a, 0) or 0) for a in AXES}
    unknown = set(axes_with_units) - set(AXES)
    if unknown:
        raise ValueError(f"unknown axes {sorted(unknown)}; expected {AXES}")
    return counts, None


def score_item(judgements: Iterable[UnitJudgement], axes_with_units: Mapping[str, int] | BenchItem, *, item_id: str | None = None) -> ItemScore:
    """Score one response from the judge's verdicts on the item's rubric units.

    ``axes_with_units`` is the item itself (unit ids are then checked) or ``{axis: n_units}``.
    Units without a judgement count as judge errors; a judgement for an unknown unit, or two for
    the same unit, is a ``ValueError`` (a bug upstream, not a judge failure)."""
    counts, ids = _unit_counts(axes_with_units)
    if item_id is None and isinstance(axes_with_units, BenchItem):
        item_id = axes_with_units.id
    by_axis: dict[str, list[UnitJudgement]] = {a: [] for a in AXES}
    seen: set[tuple[str, str]] = set()
    for j in judgements:
        key = (j.axis, j.unit_id)
        if key in seen:
            raise ValueError(f"two judgements for unit {j.unit_id!r} ({j.axis})")
        seen.add(key)
        if ids is not None and j.unit_id not in ids[j.axis]:
            raise ValueError(f"judgement for unit {j.unit_id!r} that the item has not on axis {j.axis}")
        by_axis[j.axis].append(j)

    axes: dict[str, AxisScore] = {}
    failed: list[str] = []
    for a in AXES:
        n_units = counts[a]
        js = by_axis[a]
        if len(js) > n_units:
            raise ValueError(f"{len(js)} judgements on {a} but the item has {n_units} units")
        if n_units == 0:
            continue
        ok = [j for j in js if j.error is None and j.p is not None]
        n_errors = n_units - len(ok)  # failed verdicts + units never judged
        engaged = [j for j in ok if j.p >= 1]
        known = [j for j in engaged if j.c is not None]
        n_correct = sum(1 for j in known if j.c == 1)
        p_sum = sum(j.p / 2 for j in ok)
        presence = p_sum / len(ok) if ok else None
        if not ok:
            correctness = score = None
            failed.append(a)
        elif not engaged:
            correctness, score = None, 0.0
        elif not known:
            correctness = score = None
        else:
            correctness = n_correct / len(known)
            score = presence * correctness
        axes[a] = AxisScore(a, n_units, len(ok), n_errors, len(engaged), len(known), n_correct, p_sum, presence, correctness, score)

    scored = [s for s in axes.values() if s.n_judged]
    trace = None
    if scored and all(s.score is not None for s in scored):
        trace = sum(s.score for s in scored) / len(scored)  # type: ignore[misc]
    presence_trace = sum(s.presence for s in scored) / len(scored) if scored else None  # type: ignore[misc]
    return ItemScore(
        item_id=item_id,
        axes=axes,
        trace=trace,
        presence_trace=presence_trace,
        n_units=sum(counts.values()),
        n_errors=sum(s.n_errors for s in axes.values()),
        axes_failed=tuple(failed),
    )


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def aggregate(item_scores: Iterable[ItemScore]) -> dict[str, Any]:
    """Benchmark-level PKR numbers.

    Per axis: per-example means of presence, correctness and score (over the items where each is
    defined, with those counts), corpus-level presence and correctness pooled over units, and the
    unit / engaged / error counts. Overall: ``trace_mean`` (mean of the items' traces),
    ``trace_of_axis_means`` (mean of the per-axis score means: the published tables' Trace),
    ``presence_trace_mean`` and totals. Values are fractions (×100 in reports)."""
    items = list(item_scores)
    out_axes: dict[str, Any] = {}
    for a in AXES:
        rows = [s.axes[a] for s in items if a in s.axes]
        pres = [r.presence for r in rows if r.presence is not None]
        corr = [r.correctness for r in rows if r.correctness is not None]
        score = [r.score for r in rows if r.score is not None]
        n_judged = sum(r.n_judged for r in rows)
        n_known = sum(r.n_c_known for r in rows)
        out_axes[a] = {
            "n_items": len(rows),
            "presence": _mean(pres),
            "correctness": _mean(corr),
            "score": _mean(score),
            "n_items_presence": len(pres),
            "n_items_correctness": len(corr),
            "n_items_score": len(score),
            "presence_pooled": (sum(r.presence_sum for r in rows) / n_judged) if n_judged else None,
            "correctness_pooled": (sum(r.n_correct for r in rows) / n_known) if n_known else None,
            "n_units": sum(r.n_units for r in rows),
            "n_judged": n_judged,
            "n_engaged": sum(r.n_engaged for r in rows),
            "n_c_known": n_known,
            "n_errors": sum(r.n_errors for r in rows),
        }
    traces = [s.trace for s in items if s.trace is not None]
    ptraces = [s.presence_trace for s in items if s.presence_trace is not None]
    axis_means = [v["score"] for v in out_axes.values() if v["score"] is not None]
    return {
        "n_items": len(items),
        "n_items_with_trace": len(traces),
        "trace_mean": _mean(traces),
        "trace_of_axis_means": _mean(axis_means) if axis_means else None,
        "presence_trace_mean": _mean(ptraces),
        "axes": out_axes,
        "n_units": sum(v["n_units"] for v in out_axes.values()),
        "n_engaged": sum(v["n_engaged"] for v in out_axes.values()),
        "n_errors": sum(v["n_errors"] for v in out_axes.values()),
        "n_items_with_errors": sum(1 for s in items if s.n_errors),
        "axes_failed": sum(len(s.axes_failed) for s in items),
    }
