"""Benchmark: ``openmedreason.bench.answers.extract_answer`` per reply ÷ one compiled regex, same texts.

The baseline is the least any extractor can do: a single precompiled
``re.search(r"<answer>\\s*([A-E])\\s*</answer>")`` over the reply (it answers only the dataset's own
format). ``extract_answer`` runs every stage it needs (NFKC normalisation, reasoning-block
stripping, answer tag, ``\\boxed``, "answer is", letter formats, option text) with the item's
letters and option texts, as evaluation and the GRPO rewards call it.

Text sets (timed separately, the same texts for both):

* ``corpus``: the labelled replies of ``tests/fixtures/answers_corpus.jsonl`` (short replies in
  every format the extractor handles, most under 600 characters);
* ``think8k``: long reasoning-model replies, a ``<think>`` block of about 8,000 characters of
  sentences that name option letters and option texts, then ``<answer>X</answer>``;
* ``think8k-open``: the same block left unclosed (a reply cut off by the token limit: truncated);
* ``plain8k``: about 8,000 characters of reasoning with no tags, ending "The answer is X." (a model
  that ignores the format: the later stages read the whole text).

Timing: ``--rounds`` rounds (default 21); a round times one pass over the set with each function,
in alternating order; per set the median pass time of each, divided by the number of texts.
Prints µs per reply for both, the ratio, and what a 200 ms model call is in replies.
Run: ``python bench/bench_answers.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import time
from pathlib import Path

from openmedreason.bench.answers import extract_answer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fixtures" / "answers_corpus.jsonl"
BASELINE = re.compile(r"<answer>\s*([A-E])\s*</answer>")

_OPTIONS = ["Pleural effusion", "Pneumothorax", "Lobar consolidation", "Cardiomegaly", "Pulmonary oedema"]
_SENTENCES = [
    "The radiograph is a frontal projection of the chest with adequate inspiration and no rotation.",
    "Option {l}, {o}, would produce a different distribution of the opacity than what is seen here.",
    "I compare the left and right hemithorax and look for asymmetry in lucency and vascular markings.",
    "The costophrenic angles are sharp, which argues against a large collection of fluid.",
    "If this were {o} (option {l}), I would expect the cardiac silhouette or the fissures to change.",
    "The trachea is central and the mediastinum is not displaced to either side.",
    "Let me reconsider: the finding could also fit {o}, but the margins are too well defined for that.",
    "There is no air bronchogram and the hila look normal in size and density.",
]


def corpus() -> list[tuple[str, str, list[str] | None]]:
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["text"], r.get("letters") or "ABCDE", r.get("options")) for r in rows]


def _reasoning(rng: random.Random, chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < chars:
        k = rng.randrange(5)
        s = rng.choice(_SENTENCES).format(l="ABCDE"[k], o=_OPTIONS[k].lower())
        parts.append(s)
        size += len(s) + 1
        if rng.random() < 0.15:
            parts.append("\n\n")
    return " ".join(parts)


def long_replies(n: int, chars: int, kind: str, seed: int = 0) -> list[tuple[str, str, list[str] | None]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        body = _reasoning(rng, chars)
        letter = rng.choice("ABCDE")
        if kind == "think":
            text = f"<think>\n{body}\n</think>\n<answer>{letter}</answer>"
        elif kind == "think-open":
            text = f"<think>\n{body}"
        else:
            text = f"{body}\n\nThe answer is {letter}."
        out.append((text, "ABCDE", list(_OPTIONS)))
    return out


def _pass_ours(texts: list[tuple[str, str, list[str] | None]]) -> float:
    t = time.perf_counter()
    for text, letters, options in texts:
        extract_answer(text, letters, options)
    return time.perf_counter() - t


def _pass_base(texts: list[tuple[str, str, list[str] | None]]) -> float:
    search = BASELINE.search
    t = time.perf_counter()
    for text, _letters, _options in texts:
        search(text)
    return time.perf_counter() - t


def measure(texts: list[tuple[str, str, list[str] | None]], rounds: int) -> tuple[float, float]:
    """(median µs per reply of ours, of the baseline)."""
    _pass_ours(texts), _pass_base(texts)  # warm-up (regex compile caches, imports)
    ours, base = [], []
    for r in range(rounds):
        if r % 2:
            base.append(_pass_base(texts))
            ours.append(_pass_ours(texts))
        else:
            ours.append(_pass_ours(texts))
            base.append(_pass_base(texts))
    n = len(texts)
    return statistics.median(ours) / n * 1e6, statistics.median(base) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--long", type=int, default=100, help="replies per long set")
    ap.add_argument("--chars", type=int, default=8000, help="reasoning length of the long replies")
    args = ap.parse_args()

    sets = {
        "corpus": corpus(),
        "think8k": long_replies(args.long, args.chars, "think", seed=1),
        "think8k-open": long_replies(args.long, args.chars, "think-open", seed=2),
        "plain8k": long_replies(args.long, args.chars, "plain", seed=3),
    }
    print(f"python {platform.python_version()}, {platform.machine()}, rounds {args.rounds}")
    print(f"{'set':<14}{'n':>5}{'mean chars':>12}{'extract µs':>13}{'regex µs':>11}{'ratio':>9}{'per 200 ms call':>18}")
    worst = 0.0
    for name, texts in sets.items():
        ours, base = measure(texts, args.rounds)
        worst = max(worst, ours)
        mean_chars = statistics.mean(len(t[0]) for t in texts)
        # replies extracted in the time of one 200 ms model call: how cheap it is next to a call
        print(f"{name:<14}{len(texts):>5}{mean_chars:>12.0f}{ours:>13.1f}{base:>11.2f}{ours / base:>9.1f}{0.2e6 / ours:>18,.0f}")
    print(f"slowest set: {worst:.1f} µs per reply = {worst / 0.2e6:.2e} of a 200 ms model call")


if __name__ == "__main__":
    main()
