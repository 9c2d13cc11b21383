"""The VGMED grounding metrics (pure numpy), as published.

``a``: attention of the last prompt token over the image tokens for the question prompt; ``g``: the
same for the general-description prompt on the same image. ``n = a / g`` removes the model's
question-independent attention sinks. The ground truth is uniform over the grid cells the boxes
(or the mask) touch: ``gt`` a boolean mask over the cells; or, for ``--gt soft``, non-negative cell
weights (the fraction of each cell the target covers), which take the place of the 0/1 indicator in
every formula below (a boolean ``gt`` gives the published numbers bit for bit). All functions take
maps with any leading dimensions (layers, heads) and the cell axis last.

- attention ratio = mean(n over GT cells) / mean(n over all cells); 1 = no preference (weighted:
  sum(w n) / sum(w) in the numerator).
- KL = KL(GT || n / sum n), natural log, with ``n / sum n`` clipped at :data:`ATTENTION_FLOOR` (no log 0). The sum
  runs over the layer's cells (``kl_normalise="layer"``, the authors' later code) or, as in their
  submission notebook, over the cells of every layer of the map (``"all-layers"``, axis 0 = layers):
  each layer's KL then grows by ln(total sum / that layer's sum), about ln L for L layers of similar sums.
- JS = Jensen-Shannon divergence (not its square root) between ``n / sum n`` and GT, natural log
  (bounded by ln 2).
"""

from __future__ import annotations

import numpy as np

from vgmed_eval.numerics import ATTENTION_FLOOR


def normalise(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``n = a / g`` with ``g`` clipped at ATTENTION_FLOOR (a cell the general prompt never attends stays finite)."""
    return np.asarray(a, dtype=np.float64) / np.maximum(np.asarray(g, dtype=np.float64), ATTENTION_FLOOR)


def gt_distribution(gt: np.ndarray) -> np.ndarray:
    """The ground truth as a distribution over the cells (uniform over a boolean mask's cells)."""
    gt = np.asarray(gt).reshape(-1)
    if gt.dtype != bool:
        gt = gt.astype(np.float64)
        if (gt < 0).any() or not np.isfinite(gt).all():
            raise ValueError("ground-truth weights must be finite and non-negative")
    if not gt.any():
        raise ValueError("ground truth covers no cell")
    return gt / gt.sum()


def _distribution(n: np.ndarray, over_layers: bool = False) -> np.ndarray:
    """``n`` over its sum along the cells (and along axis 0, the layers, with ``over_layers``)."""
    total = n.sum((0, -1) if over_layers and n.ndim > 1 else -1, keepdims=True)
    return n / np.where(total > 0, total, 1.0)


def attention_ratio(n: np.ndarray, gt: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt).reshape(-1)
    overall = n.mean(-1)
    on_gt = n[..., gt].mean(-1) if gt.dtype == bool else n @ gt_distribution(gt)
    return on_gt / np.where(overall > 0, overall, np.nan)


def kl_divergence(n: np.ndarray, gt: np.ndarray, kl_normalise: str = "layer") -> np.ndarray:
    if kl_normalise not in ("layer", "all-layers"):
        raise ValueError(f"kl_normalise must be layer or all-layers, got {kl_normalise!r}")
    p = gt_distribution(gt)
    q = np.clip(_distribution(n, kl_normalise == "all-layers"), ATTENTION_FLOOR, None)
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


def grounding_metrics(a: np.ndarray, g: np.ndarray, gt: np.ndarray, kl_normalise: str = "layer"
                      ) -> dict[str, np.ndarray]:
    """All three metrics for maps ``a`` and ``g`` of shape (layers, ..., cells)."""
    return scores(normalise(a, g), gt, kl_normalise)


def scores(n: np.ndarray, gt: np.ndarray, kl_normalise: str = "layer") -> dict[str, np.ndarray]:
    """All three metrics of a normalised map ``n`` (layers, ..., cells) against ``gt``."""
    return {"attention_ratio": attention_ratio(n, gt), "kl": kl_divergence(n, gt, kl_normalise),
            "js": js_divergence(n, gt)}


def chance_scores(n: np.ndarray, gt: np.ndarray, draws: list[np.ndarray], kl_normalise: str = "layer"
                  ) -> dict[str, np.ndarray]:
    """The chance levels of :func:`scores` for one question: ``<metric>_uniform``, a uniform map against
    ``gt`` (attention ratio 1 by construction; KL ln(N / k) for k of N cells, plus ln L over L layers
    with ``all-layers``), and ``<metric>_random``, ``n`` against equal-area random regions, averaged over
    the ``draws`` (NaN without draws)."""
    out = {f"{m}_uniform": v for m, v in scores(np.ones(n.shape), gt, kl_normalise).items()}
    runs = [scores(n, d, kl_normalise) for d in draws]
    for m in METRICS:
        out[f"{m}_random"] = (np.mean([r[m] for r in runs], axis=0) if runs else np.full(n.shape[:-1], np.nan))
    return out


METRICS = ("attention_ratio", "kl", "js")
