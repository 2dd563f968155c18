"""Pairwise preference between two models' reasoning on the same items (METHOD §7, our protocol).

The paper reports that its model's traces are preferred in 86.1% of pairwise comparisons but does
not publish the protocol. Ours: an LLM judge sees the image, the question with its options, the
correct option and both responses, **twice**: A shown first, then B shown first. A win (or a
loss) counts only when both presentation orders prefer the same response; any disagreement, or a
tie in either order, is a tie. Reported: wins, losses, ties, the win rate over decided pairs
(wins / (wins + losses)), the tie rate, the position-consistency rate (the share of items where
both orders gave the same underlying preference, ties included), and a cluster-bootstrap
interval on the win rate (clusters = source articles). Items whose judge calls failed are
counted as errors and left out of every rate.

There is no offline pairwise judge: lexical overlap cannot say which reasoning is better.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Sequence

from pydantic import BaseModel

from openmedreason.bench.items import BenchItem
from openmedreason.bench.stats import bootstrap_ci
from openmedreason.evaluate.judge import delimit, question_block, response_for_judge

PROMPT = "pairwise"


class PairVerdict(BaseModel):
    verdict: Literal["first", "second", "tie"]
    reason: str


def _ci(values: Sequence[float], clusters: Sequence[str], n_boot: int, seed: int) -> tuple[float | None, float | None, float | None]:
    """(mean, lo, hi) of ``values`` by :func:`openmedreason.bench.stats.bootstrap_ci` (clusters resampled)."""
    if not values:
        return None, None, None
    return bootstrap_ci(list(values), list(clusters), n_boot=n_boot, seed=seed)


def _request(item: BenchItem, first: str, second: str, seed: int) -> Any:
    from openmedreason.llm import LLMRequest, Message
    from openmedreason.prompts import load

    tpl = load(PROMPT)
    system, user = tpl.render(
        question=question_block(item),
        reference=item.answer,
        first=delimit("first response", response_for_judge(first)),
        second=delimit("second response", response_for_judge(second)),
    )
    image = item.image_bytes()
    return LLMRequest(
        step="pairwise", template=tpl.name, template_version=tpl.version,
        messages=[Message.system(system), Message.user(user, images=[image] if image is not None else [])],
        response_model=PairVerdict, overrides={"temperature": 0.0, "seed": seed}, record_id=item.id,
    )


#: the preferred model behind a verdict: with A shown first (``_PREF_AB``), with B shown first (``_PREF_BA``)
_PREF_AB = {"first": "A", "second": "B", "tie": "tie"}
_PREF_BA = {"first": "B", "second": "A", "tie": "tie"}


def outcome(ab: str | None, ba: str | None) -> str:
    """The pair's outcome for A from the two orders' verdicts (``ab``: A shown first; ``ba``: B
    shown first): ``win`` / ``loss`` only when both orders agree, else ``tie``; ``error`` when a
    verdict is missing."""
    if ab is None or ba is None:
        return "error"
    pref_ab, pref_ba = _PREF_AB[ab], _PREF_BA[ba]
    if pref_ab == pref_ba == "A":
        return "win"
    if pref_ab == pref_ba == "B":
        return "loss"
    return "tie"


def _consistent(ab: str, ba: str) -> bool:
    return _PREF_AB[ab] == _PREF_BA[ba]


def compare_pairs(
    items: Sequence[BenchItem],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    engine: Any,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Judge A against B on every item in both presentation orders (2 cached calls per item).

    Returns ``{"n", "wins", "losses", "ties", "errors", "decided", "win_rate", "win_rate_ci",
    "tie_rate", "position_consistency", "judge", "items": [per-item records]}``; ``win_rate`` is
    A's share of decided pairs, its interval a 95% cluster bootstrap (``n_boot`` resamples).
    """
    if engine is None:
        raise ValueError(
            "pairwise preference needs an LLM judge (configure [llm.judge] or OMR_LLM_BASE_URL / OMR_LLM_MODEL); "
            "there is no offline pairwise judge"
        )
    if not (len(items) == len(responses_a) == len(responses_b)):
        raise ValueError(f"lengths differ: {len(items)} items, {len(responses_a)} A responses, {len(responses_b)} B responses")
    requests = []
    for it, a, b in zip(items, responses_a, responses_b):
        requests += [_request(it, a, b, seed), _request(it, b, a, seed)]
    results = engine.complete_many(requests) if requests else []
    engine.flush()
    records = []
    counts: Counter = Counter()
    consistent = 0
    models: set[str] = set()
    for k, it in enumerate(items):
        r_ab, r_ba = results[2 * k], results[2 * k + 1]
        ab = r_ab.parsed.verdict if r_ab.ok and r_ab.parsed is not None else None
        ba = r_ba.parsed.verdict if r_ba.ok and r_ba.parsed is not None else None
        models.update(m for m in (r_ab.model, r_ba.model) if m)
        out = outcome(ab, ba)
        counts[out] += 1
        rec: dict[str, Any] = {
            "id": it.id, "cluster": it.cluster_key, "a_first": ab, "b_first": ba, "outcome": out,
            "consistent": None if out == "error" else _consistent(ab, ba),  # type: ignore[arg-type]
            "reasons": [r.parsed.reason if r.ok and r.parsed is not None else None for r in (r_ab, r_ba)],
        }
        if out == "error":
            rec["errors"] = [r.reason for r in (r_ab, r_ba) if not (r.ok and r.parsed is not None)]
        consistent += bool(rec["consistent"])
        records.append(rec)
    judged = len(items) - counts["error"]
    decided = counts["win"] + counts["loss"]
    values = [1.0 if r["outcome"] == "win" else 0.0 for r in records if r["outcome"] in ("win", "loss")]
    clusters = [r["cluster"] for r in records if r["outcome"] in ("win", "loss")]
    mean, lo, hi = _ci(values, clusters, n_boot, seed)
    from openmedreason.prompts import load

    return {
        "n": len(items),
        "judged": judged,
        "wins": counts["win"],
        "losses": counts["loss"],
        "ties": counts["tie"],
        "errors": counts["error"],
        "decided": decided,
        "win_rate": mean,
        "win_rate_ci": [lo, hi] if lo is not None else None,
        "tie_rate": counts["tie"] / judged if judged else None,
        "position_consistency": consistent / judged if judged else None,
        "n_boot": n_boot,
        "seed": seed,
        "judge": {"model": engine.config.model, "models_reported": sorted(models), "prompt": load(PROMPT).id,
                  "temperature": 0.0, "orders": "both (A first, B first); a win needs both"},
        "items": records,
    }
