"""How well an automatic check (the VLM judge, the rule lint) agrees with the clinicians (pure).

A check *flags* a draft (the judge's verdict is not ``ok``; lint rejected it). The clinicians say a
draft was *wrong as drafted* when their decision rejected it, found it unusable, or accepted it only
after editing it: what a release without review would have shipped wrong. On the drafts both have
judged: the confusion matrix, the precision and recall of "flag" (of the drafts flagged, how many the
clinicians found wrong; of the drafts they found wrong, how many were flagged) and Cohen's kappa, each
with a percentile bootstrap 95% interval over drafts (seeded, so a report is reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from vgmed_build.review.agreement import cohen_kappa
from vgmed_build.review.decision import Decision

BOOTSTRAP = 2000
# Resamples drawn at a time: ~64 K draft indices (0.5 MB), whatever the number of drafts. The generator
# gives the same stream drawn in parts or at once, so the interval is the same as one (BOOTSTRAP x n) draw,
# which at 100 K reviewed drafts would take 1.6 GB.
BOOTSTRAP_CHUNK = 1 << 16
DECIDED = ("accepted", "rejected", "unusable")


def clinician_flags(decisions: Mapping[str, Decision]) -> dict[str, bool]:
    """Per decided draft: True when the clinicians found it wrong as drafted (rejected, unusable, or
    accepted with an edit); disputed and pending drafts have no answer yet."""
    return {k: flag for k, d in decisions.items() if (flag := clinician_flag(d)) is not None}


def clinician_flag(decision: Decision) -> bool | None:
    """One draft's :func:`clinician_flags` answer; None while it is disputed or pending."""
    return None if decision.status not in DECIDED else decision.status != "accepted" or decision.edited


def _rates(tp, fp, fn, tn):
    """Precision, recall and Cohen's kappa from confusion counts (arrays or numbers); NaN where undefined."""
    tp, fp, fn, tn = (np.asarray(x, dtype=float) for x in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
        kappa = np.where(expected < 1, ((tp + tn) / n - expected) / (1 - expected), np.nan)
    return precision, recall, kappa


def calibrate(flagged: Mapping[str, bool], truth: Mapping[str, bool], resamples: int = BOOTSTRAP,
              seed: int = 0) -> dict:
    """The check's ``flagged`` against the clinicians' ``truth`` on the drafts in both (see module doc)."""
    ids = sorted(set(flagged) & set(truth))
    return calibrate_arrays(np.array([flagged[i] for i in ids], dtype=bool),
                            np.array([truth[i] for i in ids], dtype=bool), resamples, seed)


def calibrate_arrays(pred: np.ndarray, true: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> dict:
    """:func:`calibrate` on two bool columns, the check's flag and the clinicians' answer of each draft
    judged by both, in draft id order (the bootstrap resamples positions: same order, same interval)."""
    n = len(pred)
    counts = {"tp": int((pred & true).sum()), "fp": int((pred & ~true).sum()),
              "fn": int((~pred & true).sum()), "tn": int((~pred & ~true).sum())}
    out: dict = {"drafts": n, "confusion": counts}
    if not n:
        return {**out, **{k: math.nan for k in ("precision", "recall", "kappa")},
                "ci95": {k: [math.nan, math.nan] for k in ("precision", "recall", "kappa")}}
    precision, recall, _ = (float(x) for x in _rates(**counts))
    kappa = cohen_kappa(["flag" if p else "pass" for p in pred], ["flag" if t else "pass" for t in true])
    rng = np.random.default_rng(seed)
    rows = max(1, BOOTSTRAP_CHUNK // n)
    parts = []
    for start in range(0, resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, resamples - start), n))
        p, t = pred[idx], true[idx]
        parts.append(_rates((p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1), (~p & ~t).sum(1)))
    boot = [np.concatenate(values) for values in zip(*parts, strict=True)]
    ci = {}
    for name, values in zip(("precision", "recall", "kappa"), boot, strict=True):
        finite = values[np.isfinite(values)]
        ci[name] = [float(x) for x in np.percentile(finite, [2.5, 97.5])] if finite.size else [math.nan, math.nan]
    return {**out, "precision": precision, "recall": recall, "kappa": kappa, "ci95": ci}
