"""Grounding metrics against a straightforward loop implementation, and the bootstrap CI."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vgmed_eval.metrics import attention_ratio, grounding_metrics, js_divergence, kl_divergence, normalise
from vgmed_eval.numerics import ATTENTION_FLOOR as EPS
from vgmed_eval.summary import bootstrap_ci


def _loop_metrics(a, g, gt):
    """Plain-Python reference of the published definitions for one map."""
    n = [a[i] / max(g[i], EPS) for i in range(len(a))]
    inside = [n[i] for i in range(len(n)) if gt[i]]
    ratio = (sum(inside) / len(inside)) / (sum(n) / len(n))
    total = sum(n)
    q = [v / total for v in n]
    k = sum(gt)
    p = [1.0 / k if gt[i] else 0.0 for i in range(len(n))]
    kl = sum(p[i] * math.log(p[i] / max(q[i], EPS)) for i in range(len(n)) if p[i] > 0)
    js = 0.0
    for i in range(len(n)):
        m = (p[i] + q[i]) / 2
        if p[i] > 0:
            js += 0.5 * p[i] * math.log(p[i] / m)
        if q[i] > 0:
            js += 0.5 * q[i] * math.log(q[i] / m)
    return ratio, kl, js


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_loop_reference(seed):
    rng = np.random.default_rng(seed)
    cells = int(rng.integers(4, 80))
    a = rng.dirichlet(np.ones(cells) * 0.3, size=(3, 4))  # (layers, heads, cells)
    g = rng.dirichlet(np.ones(cells), size=(3, 4))
    a[0, 0, : cells // 3] = 0.0  # exact zeros exercise the clipping
    gt = rng.random(cells) < 0.3
    gt[int(rng.integers(cells))] = True
    got = grounding_metrics(a, g, gt)
    for layer in range(3):
        for head in range(4):
            ratio, kl, js = _loop_metrics(list(a[layer, head]), list(g[layer, head]), list(gt))
            assert got["attention_ratio"][layer, head] == pytest.approx(ratio, rel=1e-10)
            assert got["kl"][layer, head] == pytest.approx(kl, rel=1e-10, abs=1e-12)
            assert got["js"][layer, head] == pytest.approx(js, rel=1e-10, abs=1e-12)


def test_known_values():
    gt = np.array([True, False, False, False])
    n = np.array([4.0, 0.0, 0.0, 0.0])  # all attention on the GT cell
    assert attention_ratio(n, gt) == pytest.approx(4.0)
    assert kl_divergence(n, gt) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(n, gt) == pytest.approx(0.0, abs=1e-12)
    off = np.array([0.0, 1.0, 0.0, 0.0])  # all attention elsewhere: JS hits its bound ln 2
    assert js_divergence(off, gt) == pytest.approx(math.log(2))
    assert kl_divergence(off, gt) == pytest.approx(-math.log(EPS))
    uniform = np.ones(4)
    assert attention_ratio(uniform, gt) == pytest.approx(1.0)
    np.testing.assert_allclose(normalise(np.array([0.2, 0.4]), np.array([0.1, 0.0])), [2.0, 0.4 / EPS])


def test_empty_ground_truth_is_an_error():
    with pytest.raises(ValueError, match="no cell"):
        kl_divergence(np.ones(3), np.zeros(3, bool))


def test_bootstrap_ci_brackets_mean_and_matches_loop():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(200, 3)) + np.array([0.0, 1.0, 5.0])
    low, high = bootstrap_ci(values, n_boot=400, seed=3)
    means = values.mean(0)
    assert np.all(low < means) and np.all(means < high)
    se = values.std(0, ddof=1) / np.sqrt(len(values))  # normal approximation: width ~ 2 * 1.96 se
    np.testing.assert_allclose(high - low, 2 * 1.96 * se, rtol=0.25)
    # same draws, straightforward loop
    draws = np.random.default_rng(3)
    boots = []
    for _ in range(4):
        idx = draws.integers(0, 200, size=(100, 200))
        boots += [values[row].mean(0) for row in idx]
    np.testing.assert_allclose(low, np.quantile(np.array(boots), 0.025, axis=0))
