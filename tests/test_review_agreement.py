"""Agreement metrics against independent matrix implementations and published worked examples."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from vgmed_build.review.agreement import (
    cohen_kappa,
    fleiss_kappa,
    fleiss_of_rejects,
    percent_agreement,
    summarize,
)

CATS = ["accept", "edit", "reject"]


def cohen_matrix(a, b, cats):
    """Cohen's kappa from the confusion matrix (independent of the Counter version)."""
    idx = {c: i for i, c in enumerate(cats)}
    m = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b, strict=True):
        m[idx[x], idx[y]] += 1
    m /= m.sum()
    po = np.trace(m)
    pe = float(m.sum(axis=1) @ m.sum(axis=0))
    return (po - pe) / (1 - pe)


def fleiss_matrix(items, cats):
    """Fleiss' kappa from the item x category count matrix."""
    counts = np.array([[r.count(c) for c in cats] for r in items], dtype=float)
    n_items, n = counts.shape[0], counts[0].sum()
    p_j = counts.sum(axis=0) / (n_items * n)
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    return (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())


def test_cohen_matches_matrix_version_on_random_ratings():
    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(5, 60)
        a = [rng.choice(CATS) for _ in range(n)]
        b = [x if rng.random() < 0.6 else rng.choice(CATS) for x in a]
        if len(set(a) | set(b)) == 1:
            continue
        assert cohen_kappa(a, b) == pytest.approx(cohen_matrix(a, b, CATS), abs=1e-12)


def test_cohen_worked_example():
    # Wikipedia "Cohen's kappa": 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> kappa 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_edge_cases():
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))  # chance agreement 1: undefined
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


def test_fleiss_matches_matrix_version_on_random_ratings():
    rng = random.Random(11)
    for _ in range(50):
        n_raters = rng.randint(2, 6)
        items = []
        for _ in range(rng.randint(3, 40)):
            truth = rng.choice(CATS)
            items.append([truth if rng.random() < 0.7 else rng.choice(CATS) for _ in range(n_raters)])
        assert fleiss_kappa(items) == pytest.approx(fleiss_matrix(items, CATS), abs=1e-12)


def test_fleiss_worked_example():
    # Wikipedia "Fleiss' kappa": 10 subjects, 14 raters, 5 categories -> kappa 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    items = [[str(c) for c, k in enumerate(row) for _ in range(k)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_two_raters_differs_from_cohen_only_in_chance_model():
    a = ["accept", "accept", "reject", "edit", "reject", "accept"]
    b = ["accept", "reject", "reject", "edit", "accept", "accept"]
    # Fleiss pools the marginals (Scott's pi for two raters): check against the pooled formula.
    po = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    pooled = {c: (a.count(c) + b.count(c)) / (2 * len(a)) for c in CATS}
    pe = sum(p * p for p in pooled.values())
    assert fleiss_kappa([list(p) for p in zip(a, b, strict=True)]) == pytest.approx((po - pe) / (1 - pe))
    with pytest.raises(ValueError):
        fleiss_kappa([["a", "b"], ["a"]])


def test_percent_agreement_and_summary():
    votes = {
        "d1": {"r1": "accept", "r2": "accept"},
        "d2": {"r1": "reject", "r2": "accept"},
        "d3": {"r1": "reject", "r2": "reject", "r3": "reject"},
        "d4": {"r1": "accept"},
    }
    assert percent_agreement([list(v.values()) for v in votes.values()]) == pytest.approx(2 / 3)
    s = summarize(votes)
    assert s["items"] == 4 and s["items_multi"] == 3
    assert s["percent_agreement"] == pytest.approx(2 / 3)
    pair = next(c for c in s["cohen"] if c["raters"] == ("r1", "r2"))
    assert pair["items"] == 3
    assert pair["kappa"] == pytest.approx(
        cohen_kappa(["accept", "reject", "reject"], ["accept", "accept", "reject"])
    )
    assert s["fleiss_raters"] == 2 and s["fleiss_items"] == 2
    assert math.isnan(percent_agreement([["a"]]))


def test_fleiss_of_rejects_is_summarize_to_the_last_bit():
    """The release's two integer columns (raters, rejects per item) against summarize's votes: the same
    Fleiss' kappa bit for bit, with items of 0 to 4 raters, ties between rater counts, one category only."""
    rng = random.Random(7)
    for trial in range(300):
        votes, raters, rejects = {}, [], []
        p = rng.random()
        for i in range(rng.randint(0, 60)):
            r = [("reject" if rng.random() < p else "accept") for _ in range(rng.choice([0, 1, 2, 2, 3, 3, 4]))]
            votes[f"d{i:03d}"] = {f"r{j}": v for j, v in enumerate(r)}
            raters.append(len(r))
            rejects.append(r.count("reject"))
        want = summarize({k: v for k, v in votes.items() if v})["fleiss"]
        got = fleiss_of_rejects(np.array(raters, dtype=np.int32), np.array(rejects, dtype=np.int32))
        assert (math.isnan(want) and math.isnan(got)) or got == want, (trial, got, want)
        assert type(got) is float
