"""Aggregate per-question grounding metrics: means with percentile-bootstrap confidence intervals.

The bootstrap resamples questions (the unit of the benchmark) with replacement; one set of resampled
indices serves all layers so the per-layer intervals are computed jointly and cheaply.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vgmed_eval.metrics import METRICS
from vgmed_eval.protocol import GT_KINDS


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the mean of each column of ``values`` (n, k); NaNs are ignored."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n == 0:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        with np.errstate(invalid="ignore"):
            means.append(np.nanmean(values[idx], axis=1))
    means = np.concatenate(means)
    return np.nanquantile(means, alpha / 2, axis=0), np.nanquantile(means, 1 - alpha / 2, axis=0)


def layer_table(per_layer: pd.DataFrame, n_boot: int, seed: int) -> dict[str, dict[str, dict]]:
    """{metric: {layer: {mean, ci_low, ci_high, n}}} over the questions of ``per_layer``."""
    out: dict[str, dict[str, dict]] = {}
    if per_layer.empty:
        return {m: {} for m in METRICS}
    for metric in METRICS:
        wide = per_layer.pivot(index="id", columns="layer", values=metric)
        values = wide.to_numpy()
        low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        with np.errstate(invalid="ignore"):
            means = np.nanmean(values, axis=0)
        counts = np.isfinite(values).sum(0)
        out[metric] = {
            str(layer): {"mean": _f(means[i]), "ci_low": _f(low[i]), "ci_high": _f(high[i]), "n": int(counts[i])}
            for i, layer in enumerate(wide.columns)
        }
    return out


def _f(x) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)


def summarise(per_layer: pd.DataFrame, errors: list[dict], n_questions: int, *, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """The summary JSON body: overall, by question type, modality and source; errors by kind."""
    summary: dict = {
        "n_questions": n_questions,
        "n_ok": int(per_layer["id"].nunique()) if not per_layer.empty else 0,
        "n_errors": len(errors),
        "errors_by_kind": dict(pd.Series([e["kind"] for e in errors], dtype=object).value_counts()
                               .astype(int).to_dict()) if errors else {},
        "bootstrap": {"resamples": n_boot, "confidence": 0.95, "seed": seed, "unit": "question"},
        "overall": layer_table(per_layer, n_boot, seed),
    }
    if not per_layer.empty:
        means = per_layer.groupby("layer")["attention_ratio"].mean()
        summary["most_sensitive_layer"] = int(means.idxmax())
    for key, column in (("by_q_type", "q_type"), ("by_modality", "modality"), ("by_source", "source")):
        summary[key] = {
            str(value): {"n": int(group["id"].nunique()), **layer_table(group, n_boot, seed)}
            for value, group in per_layer.groupby(column)
        } if not per_layer.empty else {}
    return summary


def _layer_means(frame: pd.DataFrame, suffix: str) -> dict[str, dict[str, float | None]]:
    """{metric: {layer: mean of column <metric><suffix>}} (NaN rows left out)."""
    out: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        column = f"{metric}{suffix}"
        if column in frame:
            out[metric] = {str(layer): _f(v) for layer, v in frame.groupby("layer")[column].mean().items()}
    return out


def _chance_block(frame: pd.DataFrame, n_boot: int, seed: int) -> dict:
    random = frame.drop(columns=list(METRICS)).rename(columns={f"{m}_random": m for m in METRICS})
    measured, chance = _layer_means(frame, ""), _layer_means(frame, "_random")
    return {
        "uniform": _layer_means(frame, "_uniform"),
        "random": layer_table(random, n_boot, seed),
        # the measured mean over the random regions' mean: "x times chance" (for KL and JS, lower is closer)
        "times_chance": {m: {layer: (None if v is None or not chance[m].get(layer) else round(v / chance[m][layer], 6))
                             for layer, v in measured[m].items()} for m in METRICS},
    }


def gt_and_chance(per_layer: pd.DataFrame, kind: str, draws: int, draw_seed: int, *, n_boot: int = 1000,
                  seed: int = 0) -> dict:
    """The summary's ``gt`` (every ground truth side by side: mean per layer, overall and by modality)
    and ``chance`` (the ``--gt`` metrics of a uniform map and of equal-area random regions, with the
    measured value as a multiple of the random one) blocks."""
    compare: dict = {}
    for other in GT_KINDS:  # per_layer columns <metric>_<kind>
        column = f"attention_ratio_{other}"
        if per_layer.empty or column not in per_layer or per_layer[column].isna().all():
            continue
        compare[other] = {
            "n": int(per_layer.loc[per_layer[column].notna(), "id"].nunique()),
            "overall": _layer_means(per_layer, f"_{other}"),
            "by_modality": {str(m): _layer_means(g, f"_{other}") for m, g in per_layer.groupby("modality")},
        }
    chance: dict = {"kind": kind, "draws": draws, "seed": draw_seed,
                    "placement": "the ground truth moved by whole pixels to a uniformly random place inside the image"}
    if "attention_ratio_random" in per_layer and per_layer["attention_ratio_random"].notna().any():
        chance["overall"] = _chance_block(per_layer, n_boot, seed)
        chance["by_modality"] = {str(m): _chance_block(g, n_boot, seed) for m, g in per_layer.groupby("modality")}
    return {"gt": {"kind": kind, "compare": compare}, "chance": chance}
