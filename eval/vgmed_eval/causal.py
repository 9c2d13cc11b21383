"""`vgmed-eval causal`: does the answer depend on the region it should depend on?

For every question: the model's answer (greedy, the grounding prompt), then the same question with the
ground-truth cells knocked out on the VGRefine knockout layer (no position after the image may attend
to those image tokens, :func:`vgmed_eval.attention.knockout` through :meth:`VGRefiner.answer_without`),
then with ``--draws`` equal-area random sets of cells outside the ground truth knocked out instead
(seeded by ``--seed`` and the question id). Recorded: whether the answer flips, and how the first
answer token's logit and log-probability change. A region the answer depends on flips it (or lowers
its log-probability) more than the random cells do.

With ``--grounding DIR`` (a ``vgmed-eval grounding`` run of the same model) each question is joined
with its attention ratio at the knockout layer: "attends to the right place" = the ratio is above the
question's chance level (the random regions' ratio; 1 when the run has none), and the questions that
attend there but answer wrong are listed.

Outputs in ``--out``: ``causal.jsonl`` (one line per question), ``errors.jsonl``, ``summary.json`` and
``run.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vgmed_eval.geometry import GeometryError
from vgmed_eval.ground_truth import ground_truth, question_rng
from vgmed_eval.prompts import short_answer
from vgmed_eval.release_io import Question


# ------------------------------------------------------------------------------------------------ pure
def random_cells(gt: np.ndarray, rng: np.random.Generator, draws: int) -> list[np.ndarray]:
    """``draws`` boolean (N,) sets of as many cells as ``gt`` holds, uniform among the cells outside it;
    none when fewer cells lie outside than inside (no equal-area control exists)."""
    gt = np.asarray(gt, dtype=bool).reshape(-1)
    outside = np.flatnonzero(~gt)
    k = int(gt.sum())
    if k == 0 or outside.size < k:
        return []
    out = []
    for _ in range(draws):
        cells = np.zeros(gt.size, dtype=bool)
        cells[rng.choice(outside, size=k, replace=False)] = True
        out.append(cells)
    return out


def normalise_answer(text: str) -> str:
    """Lower case, punctuation and spaces folded: an answer flips when this changes."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def token_change(base, knocked) -> dict:
    """How the knockout moved the baseline's first answer token: its logit and log-probability, knocked
    minus baseline (both from the logits the first token is chosen from)."""
    import torch

    first_base, first_knocked = base.step_logits[0].double(), knocked.step_logits[0].double()
    token = int(first_base.argmax())
    logprob = torch.log_softmax(first_base, -1)[token], torch.log_softmax(first_knocked, -1)[token]
    return {"token": token, "dlogit": float(first_knocked[token] - first_base[token]),
            "dlogprob": float(logprob[1] - logprob[0]), "first_token_changed": int(first_knocked.argmax()) != token}


def gold_answer(q: Question) -> str | None:
    """The reference answer; a localization question without one asks about a region that is there ("yes")."""
    if q.answer is not None:
        return q.answer
    return "yes" if q.q_type == "localization" else None


def _rate(values: list[bool]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return round(float(np.mean(values)), 6) if values else None


def summarise_group(rows: list[dict], n_boot: int) -> dict:
    """Flip rates and log-probability changes of one group of questions (with a bootstrap 95% CI of the
    per-question difference ground truth minus random)."""
    from vgmed_eval.summary import bootstrap_ci

    with_random = [r for r in rows if r["random"]]
    diff = [r["dlogprob_gt"] - r["dlogprob_random"] for r in with_random]
    low, high = bootstrap_ci(np.array(diff)[:, None], n_boot=n_boot) if diff else (np.array([None]),) * 2
    return {
        "n": len(rows),
        "flip_gt": _rate([r["flip_gt"] for r in rows]),
        "flip_random": _rate([d["flip"] for r in rows for d in r["random"]]),
        "region_specific": _rate([r["flip_gt"] and not any(d["flip"] for d in r["random"]) for r in with_random]),
        "dlogprob_gt": _mean([r["dlogprob_gt"] for r in rows]),
        "dlogprob_random": _mean([r["dlogprob_random"] for r in with_random]),
        "dlogprob_gt_minus_random": {"mean": _mean(diff), "ci_low": _float(low[0]), "ci_high": _float(high[0]),
                                     "n": len(diff)},
        "dlogit_gt": _mean([r["dlogit_gt"] for r in rows]),
        "dlogit_random": _mean([r["dlogit_random"] for r in with_random]),
    }


def _float(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def attention_join(rows: list[dict]) -> dict | None:
    """The 2 x 2 table attends-to-the-region x answers-right, and the questions that attend there but answer
    wrong (rows with both an attention ratio and a reference answer)."""
    joined = [r for r in rows if r.get("attends") is not None and r.get("correct") is not None]
    if not joined:
        return None
    table = {f"{'attends' if a else 'does_not_attend'}_{'right' if c else 'wrong'}":
             sum(1 for r in joined if r["attends"] == a and r["correct"] == c)
             for a in (True, False) for c in (True, False)}
    wrong = [r for r in joined if r["attends"] and not r["correct"]]
    return {"n": len(joined), "table": table,
            "attends_but_wrong": [{"id": r["id"], "attention_ratio": r["attention_ratio"], "chance": r["chance"],
                                   "answer": r["answer"], "gold": r["gold"], "flip_gt": r["flip_gt"]}
                                  for r in wrong]}


def summarise(rows: list[dict], n_boot: int = 1000) -> dict:
    by_modality: dict[str, list[dict]] = {}
    for r in rows:
        by_modality.setdefault(r["modality"], []).append(r)
    return {"overall": summarise_group(rows, n_boot),
            "by_modality": {m: summarise_group(rs, n_boot) for m, rs in sorted(by_modality.items())},
            "correct": _rate([r["correct"] for r in rows if r["correct"] is not None]),
            "grounding": attention_join(rows)}


def attention_ratios(results: Path, layer: int) -> dict[str, tuple[float, float]]:
    """Per question id of a grounding run: (attention ratio, its chance level) at ``layer``; the chance level
    is the random regions' ratio when the run has it, else 1 (a uniform map's)."""
    import pandas as pd

    path = Path(results) / "per_layer.parquet"
    if not path.exists():
        raise ValueError(f"--grounding {results}: no per_layer.parquet (run `vgmed-eval grounding` first)")
    table = pd.read_parquet(path)
    at = table[table["layer"] == layer]
    if at.empty:
        raise ValueError(f"--grounding {results}: layer {layer} was not measured there (its layers: "
                         f"{sorted(table['layer'].unique().tolist())})")
    chance = at["attention_ratio_random"] if "attention_ratio_random" in at else pd.Series(np.nan, index=at.index)
    return {str(i): (float(r), float(c) if np.isfinite(c) else 1.0)
            for i, r, c in zip(at["id"], at["attention_ratio"], chance, strict=True)}


def report_section(summary: dict) -> list[str]:
    """Markdown lines for `vgmed-eval report --causal`: flip rates and log-probability changes, ground truth
    against random cells, per modality, and the attends-but-wrong table."""
    def pct(x) -> str:
        return "—" if x is None else f"{100 * x:.1f}%"

    def num(x) -> str:
        return "—" if x is None else f"{x:+.3f}"

    layers = ", ".join(str(x) for x in summary.get("knockout_layers", []))
    lines = ["## Causal check: knocking out the region", "",
             f"Knockout layer {layers}; the ground-truth cells (`--gt {summary.get('gt')}`) against "
             f"{summary.get('draws')} random sets of as many cells outside them per question. *flips*: the answer "
             "changes; *region-specific*: it flips without the region and with none of the random sets; Δ log p: "
             "change of the log-probability of the first answer token.", "",
             "| questions | n | flips, region | flips, random | region-specific | Δ log p region | Δ log p random | "
             "region − random (95% CI) |", "|---|---|---|---|---|---|---|---|"]
    groups = [("all", summary["overall"])] + list(summary.get("by_modality", {}).items())
    for name, g in groups if len(groups) > 2 else groups[:1]:
        d = g["dlogprob_gt_minus_random"]
        ci = f"{num(d['mean'])} ({num(d['ci_low'])}, {num(d['ci_high'])})" if d["mean"] is not None else "—"
        lines.append(f"| {name} | {g['n']} | {pct(g['flip_gt'])} | {pct(g['flip_random'])} | "
                     f"{pct(g['region_specific'])} | {num(g['dlogprob_gt'])} | {num(g['dlogprob_random'])} | {ci} |")
    join = summary.get("grounding")
    if join:
        t = join["table"]
        lines += ["", f"Attention at the knockout layer (from `{summary.get('grounding_results')}`) against the "
                  "answer, for the questions with a reference answer: *attends* = attention ratio above the "
                  "question's chance level.", "", "| | right | wrong |", "|---|---|---|",
                  f"| attends | {t['attends_right']} | {t['attends_wrong']} |",
                  f"| does not attend | {t['does_not_attend_right']} | {t['does_not_attend_wrong']} |"]
        if join["attends_but_wrong"]:
            shown = ", ".join(f"`{r['id']}`" for r in join["attends_but_wrong"][:10])
            more = len(join["attends_but_wrong"]) - 10
            lines += ["", f"Attends to the right place but answers wrong: {shown}"
                      + (f" and {more} more (causal.jsonl)" if more > 0 else "") + "."]
    return [*lines, ""]


# ------------------------------------------------------------------------------------------------ run
@dataclass(frozen=True)
class Settings:
    gt: str = "box"
    draws: int = 8
    seed: int = 0
    batch_size: int = 8

    def rng(self, qid: str) -> np.random.Generator:
        return question_rng(self.seed, qid)


def run_causal(refiner, questions: list[Question], settings: Settings, ratios: dict | None = None
               ) -> tuple[list[dict], list[dict]]:
    """(one row per question, errors) for ``questions`` with ``refiner``'s knockout layers; ``ratios``: the
    grounding join (:func:`attention_ratios`)."""
    from vgmed_eval.grounding import check_inside, question_target
    from vgmed_eval.vqa.scoring import score_response

    rows, errors = [], []
    by_image: dict[Path, list[Question]] = {}
    for q in questions:
        by_image.setdefault(q.image, []).append(q)
    for path, qs in by_image.items():
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            kind = "missing_image" if isinstance(exc, FileNotFoundError) else "unreadable_image"
            errors += [{"id": q.id, "image": q.image_rel, "kind": kind, "error": f"cannot read image {path}: {exc}"}
                       for q in qs]
            continue
        geometry = refiner.adapter.geometry(image.width, image.height)
        items = []
        for q in qs:
            try:
                check_inside(q.boxes, image.width, image.height, q.box_convention)
                gt = ground_truth(settings.gt, geometry, question_target(q, image.width, image.height)) > 0
                items.append((q, gt.reshape(-1), random_cells(gt, settings.rng(q.id), settings.draws)))
            except GeometryError as exc:
                errors.append({"id": q.id, "image": q.image_rel, "kind": exc.kind, "error": f"{q.where}: {exc}"})
        if not items:
            continue
        prefix = refiner.prefix(image)
        for start in range(0, len(items), settings.batch_size):
            chunk = items[start:start + settings.batch_size]
            queries = [refiner.query(prefix, image, short_answer(q.question)) for q, _, _ in chunk]
            base, knocked = refiner.answer_without(queries, [gt for _, gt, _ in chunk])
            draws: list[list] = [[] for _ in chunk]
            for d in range(settings.draws):
                idx = [i for i, (_, _, r) in enumerate(chunk) if len(r) > d]
                if idx:
                    _, answers = refiner.answer_without([queries[i] for i in idx], [chunk[i][2][d] for i in idx],
                                                        baseline=False)
                    for i, a in zip(idx, answers, strict=True):
                        draws[i].append(a)
            for (q, gt, _), b, k, rand in zip(chunk, base, knocked, draws, strict=True):
                gold = gold_answer(q)
                change = token_change(b, k)
                random = [{"answer": a.text, "flip": normalise_answer(a.text) != normalise_answer(b.text),
                           "cells": a.cells, **{key: v for key, v in token_change(b, a).items() if key != "token"}}
                          for a in rand]
                row = {"id": q.id, "q_type": q.q_type, "modality": q.modality, "source": q.source,
                       "image": q.image_rel, "question": q.question, "gold": gold, "grid_cells": int(gt.size),
                       "gt_cells": int(gt.sum()), "answer": b.text,
                       "correct": score_response(b.text, gold, _kind(gold)).correct if gold is not None else None,
                       "answer_gt_knocked": k.text,
                       "flip_gt": normalise_answer(k.text) != normalise_answer(b.text),
                       "dlogit_gt": change["dlogit"], "dlogprob_gt": change["dlogprob"],
                       "first_token_changed_gt": change["first_token_changed"], "random": random,
                       "dlogit_random": _mean([r["dlogit"] for r in random]),
                       "dlogprob_random": _mean([r["dlogprob"] for r in random])}
                ratio, chance = (ratios or {}).get(q.id, (None, None))
                row.update(attention_ratio=ratio, chance=chance,
                           attends=None if ratio is None or not np.isfinite(ratio) else bool(ratio > chance))
                rows.append(row)
    return rows, errors


def _kind(gold: str) -> str:
    return "closed" if normalise_answer(gold) in ("yes", "no") else "open"


def write_outputs(out: Path, rows: list[dict], errors: list[dict], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "causal.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with (out / "errors.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
