"""The VGMED grounding metrics (pure numpy), as published.

``a``: attention of the last prompt token over the image tokens for the question prompt; ``g``: the
same for the general-description prompt on the same image. ``n = a / g`` removes the model's
question-independent attention sinks. The ground truth is uniform over the grid cells the boxes
touch. All functions take maps with any leading dimensions (layers, heads) and the cell axis last;
``gt`` is a boolean mask over the cells.

- attention ratio = mean(n over GT cells) / mean(n over all cells); 1 = no preference.
- KL = KL(GT || n / sum n), natural log, with ``n / sum n`` clipped at :data:`EPS` (no log 0).
- JS = Jensen-Shannon divergence (not its square root) between ``n / sum n`` and GT, natural log
  (bounded by ln 2).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-10


def normalise(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``n = a / g`` with ``g`` clipped at EPS (a cell the general prompt never attends stays finite)."""
    return np.asarray(a, dtype=np.float64) / np.maximum(np.asarray(g, dtype=np.float64), EPS)


def gt_distribution(gt: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt, dtype=bool).reshape(-1)
    if not gt.any():
        raise ValueError("ground truth covers no cell")
    return gt / gt.sum()


def _distribution(n: np.ndarray) -> np.ndarray:
    total = n.sum(-1, keepdims=True)
    return n / np.where(total > 0, total, 1.0)


def attention_ratio(n: np.ndarray, gt: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt, dtype=bool).reshape(-1)
    overall = n.mean(-1)
    return n[..., gt].mean(-1) / np.where(overall > 0, overall, np.nan)


def kl_divergence(n: np.ndarray, gt: np.ndarray) -> np.ndarray:
    p = gt_distribution(gt)
    q = np.clip(_distribution(n), EPS, None)
    on = p > 0
    return (p[on] * np.log(p[on] / q[..., on])).sum(-1)


def js_divergence(n: np.ndarray, gt: np.ndarray) -> np.ndarray:
    p = gt_distribution(gt)
    q = _distribution(n)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1)
        kl_qm = np.where(q > 0, q * np.log(q / m), 0.0).sum(-1)
    return 0.5 * kl_pm + 0.5 * kl_qm


def grounding_metrics(a: np.ndarray, g: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """All three metrics for maps ``a`` and ``g`` of shape (..., cells)."""
    n = normalise(a, g)
    return {"attention_ratio": attention_ratio(n, gt), "kl": kl_divergence(n, gt), "js": js_divergence(n, gt)}


METRICS = ("attention_ratio", "kl", "js")
