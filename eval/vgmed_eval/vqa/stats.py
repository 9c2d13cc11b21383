"""Paired comparison of two systems on the same questions (pure functions).

Baseline and VGRefine answer the *same* questions, so the right tests are paired: the exact McNemar
test on the discordant pairs and a paired bootstrap (resampling questions, not systems).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from math import comb

import numpy as np


@dataclass(frozen=True)
class McNemar:
    n: int
    only_a: int  # a right, b wrong
    only_b: int  # b right, a wrong
    p_value: float  # exact two-sided (binomial on the discordant pairs, p = 1/2)


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """Exact two-sided McNemar test: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired inputs differ in length: {len(correct_a)} vs {len(correct_b)}")
    only_a = sum(1 for a, b in zip(correct_a, correct_b, strict=True) if a and not b)
    only_b = sum(1 for a, b in zip(correct_a, correct_b, strict=True) if b and not a)
    m = only_a + only_b
    if m == 0:
        return McNemar(len(correct_a), 0, 0, 1.0)
    tail = sum(comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m
    return McNemar(len(correct_a), only_a, only_b, min(1.0, 2.0 * tail))


@dataclass(frozen=True)
class PairedBootstrap:
    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    ci_a: tuple[float, float]
    ci_b: tuple[float, float]
    ci_diff: tuple[float, float]
    level: float
    n_resamples: int


def paired_bootstrap(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedBootstrap:
    """Percentile bootstrap CIs of both means and of their difference, resampling question indices."""
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired inputs must be 1-D of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired bootstrap needs at least one question")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_resamples, a.size))
    ma, mb = a[idx].mean(axis=1), b[idx].mean(axis=1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100

    def ci(x: np.ndarray) -> tuple[float, float]:
        return float(np.percentile(x, lo)), float(np.percentile(x, hi))

    return PairedBootstrap(
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        diff=float(b.mean() - a.mean()),
        ci_a=ci(ma),
        ci_b=ci(mb),
        ci_diff=ci(mb - ma),
        level=level,
        n_resamples=n_resamples,
    )


def compare(
    rows_a: Sequence[dict], rows_b: Sequence[dict], n_resamples: int = 2000, seed: int = 0
) -> dict:
    """McNemar on ``correct`` and bootstrap on ``score`` for two aligned lists of prediction rows."""
    ids_a = [r["id"] for r in rows_a]
    ids_b = [r["id"] for r in rows_b]
    if ids_a != ids_b:
        raise ValueError("the two runs did not answer the same questions in the same order")
    if not rows_a:
        return {"n": 0}
    return {
        "n": len(rows_a),
        "mcnemar": asdict(mcnemar_exact([r["correct"] for r in rows_a], [r["correct"] for r in rows_b])),
        "bootstrap": asdict(
            paired_bootstrap(
                [r["score"] for r in rows_a], [r["score"] for r in rows_b], n_resamples=n_resamples, seed=seed
            )
        ),
    }
