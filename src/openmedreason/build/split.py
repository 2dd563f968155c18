"""Grouped, stratified, seeded train/test split.

Groups: every article is a node; two articles are joined (union-find) when one has an image within
``split_image_hamming`` pHash bits of an image of the other. A group (connected component) goes
wholly to one split, so no article and no near-duplicate image is in both.

Assignment: per stratum (family × modality group) the test target is ``n_test × stratum share``.
Groups are visited in a seeded random order (a permutation of the groups sorted by their smallest
article id, so the result depends only on the data and the seed); a group joins the test split
when that lowers the L1 distance between the test counts and the targets, summed over strata,
and the test split is not yet full (a group more than twice the remaining room is skipped).
Everything else is train. When no group fits (tiny runs) the smallest group becomes the test
split, so both splits exist whenever there are two groups. The achieved size can differ from
the target by the size of the groups (reported in ``build.json``).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Sequence


@dataclass
class SplitPlan:
    test_groups: set[int]
    target: int
    test_items: int
    train_items: int
    targets: dict[Hashable, float] = field(default_factory=dict)
    achieved: dict[Hashable, int] = field(default_factory=dict)


def target_size(n_items: int, test_size: int | None, test_fraction: float) -> int:
    """Requested test size in items (``test_size`` wins; a fraction is rounded, at least 1 item
    when the fraction is positive and there are at least 2 items)."""
    if test_size is not None:
        return min(test_size, n_items)
    t = round(n_items * test_fraction)
    if t == 0 and test_fraction > 0 and n_items >= 2:
        t = 1
    return min(t, n_items)


def assign(
    group_strata: Sequence[Counter],
    group_keys: Sequence[str],
    n_test: int,
    seed: int,
) -> SplitPlan:
    """Pick test groups. ``group_strata[g]`` counts the items of group ``g`` per stratum;
    ``group_keys[g]`` is a stable key (its smallest article id) that fixes the visiting order."""
    total: Counter = Counter()
    for c in group_strata:
        total.update(c)
    n = sum(total.values())
    targets = {s: n_test * k / n for s, k in total.items()} if n else {}
    order = sorted(range(len(group_keys)), key=lambda g: group_keys[g])
    random.Random(seed).shuffle(order)
    cur: Counter = Counter()
    taken = 0
    chosen: set[int] = set()
    for g in order:
        if taken >= n_test:
            break
        c = group_strata[g]
        size = sum(c.values())
        remaining = n_test - taken
        if size == 0 or size > 2 * remaining:
            # it would overshoot the requested size by more than it fills: leave it to train
            continue
        gain = sum(abs(targets[s] - cur[s]) - abs(targets[s] - cur[s] - k) for s, k in c.items())
        if gain > 0:
            chosen.add(g)
            cur.update(c)
            taken += size
    if not chosen and n_test > 0 and len(order) >= 2:
        # every group is bigger than twice the target (tiny runs): the smallest group is the test split
        g = min(order, key=lambda g: sum(group_strata[g].values()))
        chosen.add(g)
        cur.update(group_strata[g])
        taken = sum(group_strata[g].values())
    return SplitPlan(
        test_groups=chosen,
        target=n_test,
        test_items=taken,
        train_items=n - taken,
        targets=targets,
        achieved=dict(cur),
    )
