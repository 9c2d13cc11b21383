"""Inter-rater agreement on review verdicts (pure functions).

- percent agreement: share of items whose raters all gave the same category;
- Cohen's kappa: two raters on the same items, chance agreement from each rater's own marginals;
- Fleiss' kappa: any number of raters, the same number of ratings per item.
Kappa is NaN when chance agreement is 1 (every rating in one category): it is undefined there.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def percent_agreement(items: Sequence[Sequence[str]]) -> float:
    """Share of items (with two or more ratings) on which every rater agrees; NaN with no such item."""
    rated = [r for r in items if len(r) >= 2]
    if not rated:
        return math.nan
    return sum(len(set(r)) == 1 for r in rated) / len(rated)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' categories for the same items (``a[i]`` and ``b[i]`` rate item i)."""
    if len(a) != len(b):
        raise ValueError(f"Cohen's kappa needs paired ratings, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    return math.nan if expected == 1 else (observed - expected) / (1 - expected)


def _fleiss(n: int, sum_squares: Iterable[int], totals: Iterable[int], items: int) -> float:
    """Fleiss' kappa of ``items`` items of ``n`` ratings each, from each item's sum of squared category
    counts (in item order: their mean is summed in that order) and each category's total count."""
    p_bar = sum((s - n) / (n * (n - 1)) for s in sum_squares) / items
    p_e = sum((c / (items * n)) ** 2 for c in totals)
    return math.nan if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def fleiss_kappa(items: Sequence[Sequence[str]]) -> float:
    """Fleiss' kappa; every item must carry the same number (>= 2) of ratings."""
    if not items:
        return math.nan
    n = len(items[0])
    if n < 2 or any(len(r) != n for r in items):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings on every item")
    totals: Counter = Counter()
    sum_squares = []
    for ratings in items:
        counts = Counter(ratings)
        totals.update(counts)
        sum_squares.append(sum(c * c for c in counts.values()))
    return _fleiss(n, sum_squares, totals.values(), len(items))


def fleiss_of_rejects(raters: np.ndarray, rejects: np.ndarray) -> float:
    """:func:`summarize`'s ``fleiss`` for items rated accept or reject, item i by ``raters[i]`` raters of
    whom ``rejects[i]`` rejected (in the items' order): two integer columns instead of every item's
    ratings, the same number to the last bit."""
    multi = raters >= 2
    if not multi.any():
        return math.nan
    n = Counter(map(int, raters[multi])).most_common(1)[0][0]  # ties: the first seen, as in summarize
    same = raters == n
    r = rejects[same].astype(np.int64)
    return _fleiss(n, map(int, r * r + (n - r) * (n - r)), (int(r.sum()), int((n - r).sum())), int(same.sum()))


def summarize(votes: Mapping[str, Mapping[str, str]]) -> dict:
    """Agreement figures for ``{item: {rater: category}}``: percent agreement over items with two or
    more raters, Cohen's kappa per pair of raters on their shared items, and Fleiss' kappa over the
    items with the most common number (>= 2) of raters."""
    multi = {item: r for item, r in votes.items() if len(r) >= 2}
    out: dict = {
        "items": len(votes),
        "items_multi": len(multi),
        "percent_agreement": percent_agreement([list(r.values()) for r in multi.values()]),
        "cohen": [],
        "fleiss": math.nan,
        "fleiss_items": 0,
        "fleiss_raters": 0,
    }
    raters = sorted({rater for r in multi.values() for rater in r})
    for x, y in itertools.combinations(raters, 2):
        shared = [r for r in multi.values() if x in r and y in r]
        if shared:
            out["cohen"].append(
                {
                    "raters": (x, y),
                    "items": len(shared),
                    "kappa": cohen_kappa([r[x] for r in shared], [r[y] for r in shared]),
                }
            )
    if multi:
        n = Counter(len(r) for r in multi.values()).most_common(1)[0][0]
        same = [list(r.values()) for r in multi.values() if len(r) == n]
        out.update(fleiss=fleiss_kappa(same), fleiss_items=len(same), fleiss_raters=n)
    return out
