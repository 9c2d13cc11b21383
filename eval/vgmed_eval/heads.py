"""`vgmed-eval heads`: the most visually sensitive layer and the top-k heads, for VGRefine.

From a grounding run's per-question results: the knockout layer is the layer with the best mean
metric (highest attention ratio, as published), the triage heads are the k (layer, head) pairs with
the best mean metric over all questions. The JSON written here is what VGRefine reads.

``--split`` names the questions the choice is made on, so that it is not made on a benchmark it is
then reported on: ``all`` (the whole run, as published), ``dev`` (the questions on the images of a
fixed, hash-defined part of the release, ``--dev-fraction``; the same images whatever the order or the
run) or ``control`` (the natural-image control run, ``RESULTS/control``). heads.json records which,
and the images (``selected_on``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# metric -> True when higher is better
DIRECTION = {"attention_ratio": True, "kl": False, "js": False}


def select_heads(per_layer: pd.DataFrame, per_head: pd.DataFrame, k: int, metric: str = "attention_ratio"
                 ) -> dict:
    """Knockout layer and top-k heads by mean ``metric`` over questions (ties: lower index first)."""
    if per_layer.empty or per_head.empty:
        raise ValueError("no per-question results: every question failed or none was evaluated")
    higher = DIRECTION[metric]
    layer_means = per_layer.groupby("layer")[metric].mean()
    ranked_layers = layer_means.sort_values(ascending=not higher, kind="stable")
    head_means = per_head.groupby(["layer", "head"])[metric].mean().sort_values(ascending=not higher, kind="stable")
    top = head_means.head(k)
    return {
        "knockout_layer": int(ranked_layers.index[0]),
        "heads": [[int(layer), int(head)] for layer, head in top.index],
        "metric": metric,
        "k": len(top),
        "n_questions": int(per_layer["id"].nunique()),
        "layer_scores": {str(int(layer)): round(float(v), 6) for layer, v in layer_means.items()},
        "head_scores": [[int(layer), int(head), round(float(v), 6)] for (layer, head), v in top.items()],
    }


SPLITS = ("all", "dev", "control")


def in_dev(image: str, fraction: float) -> bool:
    """Whether a release image (its path as the record names it) is in the dev part: a fixed function of the
    name, so the part is the same in every run and on every machine."""
    return int(hashlib.sha256(image.encode("utf-8")).hexdigest()[:8], 16) / 2**32 < fraction


def heads_of(results: Path, *, top_k: int = 20, metric: str = "attention_ratio", protocol: str | None = None,
             split: str = "all", dev_fraction: float = 0.2) -> dict:
    """The heads file's content for the grounding results in ``results``: the run's model and protocol, the
    knockout layer and the ``top_k`` heads by ``metric``; ValueError names the folder or option at fault
    (``protocol``: refuse results measured under another one)."""
    if top_k < 1:
        raise ValueError("--top-k must be at least 1")
    if not 0 < dev_fraction < 1:
        raise ValueError("--dev-fraction must lie between 0 and 1")
    results = Path(results) / "control" if split == "control" else Path(results)
    files = [results / name for name in ("per_layer.parquet", "per_head.parquet")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise ValueError(f"missing grounding results: {', '.join(missing)} (run `vgmed-eval grounding` first)")
    summary_path = results / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    measured = (summary.get("protocol") or {}).get("name", "vgmed")
    if protocol is not None and measured != protocol:
        raise ValueError(f"{summary_path}: measured under --protocol {measured}, not {protocol}; rerun "
                         f"`vgmed-eval grounding --protocol {protocol}` first")
    per_layer, per_head = pd.read_parquet(files[0]), pd.read_parquet(files[1])
    if split == "dev":
        per_layer = per_layer[[in_dev(str(image), dev_fraction) for image in per_layer["image"]]]
        per_head = per_head[per_head["id"].isin(set(per_layer["id"]))]
        if per_layer.empty:
            raise ValueError(f"{results}: no scored question's image is in the dev part (--dev-fraction "
                             f"{dev_fraction}); raise the fraction or choose another --split")
    try:
        chosen = select_heads(per_layer, per_head, top_k, metric)
    except ValueError as exc:
        raise ValueError(f"{results}: {exc}") from exc
    pairs = per_head.groupby(["layer", "head"]).ngroups
    if top_k >= pairs:
        log.warning("--top-k %d keeps all %d (layer, head) pairs of this run: VGRefine's triage then averages "
                    "every head instead of the most sensitive ones; choose a --top-k below %d", top_k, pairs, pairs)
    selected = {"split": split, "dev_fraction": dev_fraction if split == "dev" else None,
                "release": summary.get("release"), "n_questions": int(per_layer["id"].nunique()),
                "images": sorted({str(image) for image in per_layer["image"]})}
    return {"model": summary.get("model"), "family": summary.get("family"), **chosen,
            "results": str(results), "protocol": summary.get("protocol") or {"name": measured},
            "selected_on": selected}
