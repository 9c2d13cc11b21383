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
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vgmed_build import commands
from vgmed_build.release_format import Q_TYPES
from vgmed_eval import placement, run_manifest
from vgmed_eval.chat_templates import add_chat_template_arg
from vgmed_eval.geometry import GeometryError
from vgmed_eval.ground_truth import ground_truth
from vgmed_eval.prompts import short_answer
from vgmed_eval.protocol import GT_KINDS, add_protocol_args, resolve
from vgmed_eval.release_io import Question, ReleaseNotFound, read_release, resolve_release

log = logging.getLogger(__name__)


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
        return np.random.default_rng([self.seed, zlib.crc32(qid.encode("utf-8"))])


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


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("causal", description=__doc__)
    p.add_argument("--release", required=True, type=Path,
                   help="release directory (or Hugging Face Hub dataset id org/name) with the questions and images")
    p.add_argument("--model", required=True, help="hub id, local checkpoint, or builtin:tiny-<family>")
    p.add_argument("--heads", type=Path, metavar="HEADS_JSON",
                   help="a `vgmed-eval heads` file: its knockout_layer is where the cells are knocked out")
    p.add_argument("--knockout-layers", type=int, nargs="+", metavar="L",
                   help="knockout layer(s) instead of the heads file's (one of the two is needed)")
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument("--grounding", type=Path, metavar="DIR",
                   help="a `vgmed-eval grounding` run of the same model on the same release: each question's "
                        "attention ratio at the (first) knockout layer is joined, for the attends-but-wrong table")
    p.add_argument("--gt", choices=GT_KINDS, default="box",
                   help="the region knocked out: the cells the boxes touch, the mask touches (releases with masks), "
                        "or every cell the mask / boxes cover at all (soft)")
    p.add_argument("--draws", type=int, default=8,
                   help="random sets of as many cells, outside the region, knocked out per question")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sets (with each question's id)")
    p.add_argument("--q-types", default="localization,attribute", help="question files to read")
    p.add_argument("--images", type=Path, metavar="DIR", help="where the pictures live when not under the release")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    p.add_argument("--batch-size", type=int, default=8, help="questions per forward pass")
    p.add_argument("--max-new-tokens", type=int, default=8, help="greedy answer length limit")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="model dtype (auto: the checkpoint's own)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the 95%% CIs")
    add_protocol_args(p, ("vgrefine_mode", "min_pixels", "max_pixels"))
    add_chat_template_arg(p)
    placement.add_arguments(p)
    p.set_defaults(func=cmd_causal)


def cmd_causal(args) -> int:
    from vgmed_eval.distributed import SINGLE
    from vgmed_eval.vgrefine import HeadsFileError, VGRefineConfig, load_heads

    q_types = tuple(t.strip() for t in args.q_types.split(",") if t.strip())
    if unknown := [t for t in q_types if t not in Q_TYPES]:
        return commands.fail(f"--q-types: unknown question type(s) {unknown}; choose from {', '.join(Q_TYPES)}")
    if args.draws < 0 or args.batch_size < 1:
        return commands.fail("--draws must be 0 or more and --batch-size at least 1")
    try:
        heads, layer = ((), None)
        if args.heads is not None:
            heads, layer, _ = load_heads(args.heads)
    except HeadsFileError as exc:
        return commands.fail(str(exc))
    layers = tuple(args.knockout_layers or ([layer] if layer is not None else []))
    if not layers:
        return commands.fail("give --heads HEADS_JSON (its knockout layer) or --knockout-layers L")
    protocol = resolve(args)
    try:
        release = resolve_release(args.release)
        questions, read_errors = read_release(release, q_types, images=args.images)
    except (ReleaseNotFound, FileNotFoundError) as exc:
        return commands.fail(str(exc))
    questions = questions[: args.limit] if args.limit is not None else questions
    ratios = None
    if args.grounding is not None:
        try:
            ratios = attention_ratios(args.grounding, layers[0])
        except ValueError as exc:
            return commands.fail(str(exc))
    from vgmed_eval.adapters import adapter_from_args
    from vgmed_eval.vgrefine import VGRefiner

    try:
        adapter = adapter_from_args(args, SINGLE, protocol)
        # the triage heads are not used: the cells to knock out are given
        config = VGRefineConfig(heads=heads or ((layers[0], 0),), knockout_layers=layers, mode=protocol.vgrefine_mode)
        config.check_fits(adapter.n_layers, adapter.n_heads, args.model, "--knockout-layers / --heads")
    except ValueError as exc:
        return commands.fail(str(exc))
    refiner = VGRefiner(adapter, config, max_new_tokens=args.max_new_tokens, keep_logits=True,
                        min_new_tokens=protocol.min_new_tokens)
    settings = Settings(args.gt, args.draws, args.seed, args.batch_size)
    rows, errors = run_causal(refiner, questions, settings, ratios)
    errors = [{"id": e.id, "image": None, "kind": "bad_record", "error": f"{e.file}:{e.line}: {e.error}"}
              for e in read_errors] + errors
    summary = summarise(rows, args.bootstrap)
    write_outputs(args.out, rows, errors, {
        "model": args.model, "release": str(release), "knockout_layers": list(layers), "gt": args.gt,
        "draws": args.draws, "seed": args.seed, "mode": protocol.vgrefine_mode, "prompt": short_answer("{question}"),
        "grounding_results": str(args.grounding) if args.grounding else None,
        "n_questions": len(questions) + len(read_errors), "n_ok": len(rows), "n_errors": len(errors), **summary})
    run_manifest.write(args.out, run_manifest.build(
        "causal", args, model=args.model, adapter=adapter, protocol=protocol.as_dict(),
        scorer="answer flips (normalised text) and first-token logit changes; correctness by vgmed's scorer",
        seeds={"seed": args.seed, "bootstrap_seed": 0}, extra={"release": str(release)}))
    o = summary["overall"]
    log.info("%d questions, %d errors; flips with the region knocked out %s, with random cells %s -> %s",
             len(rows), len(errors), o.get("flip_gt"), o.get("flip_random"), args.out)
    if not rows:
        return commands.fail(f"{release}: no question could be checked (see {args.out / 'errors.jsonl'})",
                             commands.EXIT_ITEM_ERRORS)
    return commands.EXIT_OK


def write_outputs(out: Path, rows: list[dict], errors: list[dict], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "causal.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with (out / "errors.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
