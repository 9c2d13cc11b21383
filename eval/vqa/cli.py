"""`vgmed-eval vqa`: answer a medical VQA benchmark with a model, with and without VGRefine.

Writes ``predictions_<system>.jsonl`` (one line per question: prompt, response, gold, score, correct)
and ``results.json`` (accuracy overall, per question kind, modality and category; with ``--compare``
the paired McNemar test and bootstrap confidence intervals of baseline versus VGRefine). A rerun
with the same ``--out`` skips the questions already answered there.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm
from vgmed_eval.chat_templates import add_chat_template_arg
from vgmed_eval.vqa.benchmarks import BENCHMARKS, BenchmarkError, VQAItem, get_benchmark
from vgmed_eval.vqa.prompts import question_prompt
from vgmed_eval.vqa.scoring import score_response, summarize
from vgmed_eval.vqa.stats import compare

from vgmed_build.commands import HelpFormatter

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "vqa",
        help="answer a medical VQA benchmark (baseline and/or VGRefine) and score it",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS),
                   help="which benchmark layout to read from --data (see docs/vqa.md)")
    p.add_argument("--data", required=True, type=Path, help="local copy of the benchmark, in its public layout")
    p.add_argument("--model", required=True,
                   help="checkpoint directory, hub id, or builtin:tiny-<family> (random tiny model, offline)")
    p.add_argument("--out", required=True, type=Path, help="output directory (created; reruns resume)")
    p.add_argument("--vgrefine", type=Path, metavar="HEADS_JSON",
                   help="answer with VGRefine using this `vgmed-eval heads` file (knockout_layer + heads)")
    p.add_argument("--compare", action="store_true",
                   help="answer every question with the baseline AND VGRefine and test the difference "
                        "(needs --vgrefine)")
    p.add_argument("--knockout-layers", type=int, nargs="+", metavar="L",
                   help="knockout layer(s); default: the knockout_layer of the heads file")
    p.add_argument("--top-k", type=int, metavar="K", help="use only the first K heads of the heads file (default: all)")
    p.add_argument("--percentile", type=float, default=80.0,
                   help="knock out image cells below this percentile of the triage map (the top 100-P%% stay)")
    p.add_argument("--threshold", choices=["percentile", "minmax"], default="percentile",
                   help="triage rule: percentile, or min-max-normalised map below --minmax-cutoff")
    p.add_argument("--minmax-cutoff", type=float, default=0.5, help="cutoff for --threshold minmax")
    p.add_argument("--rows", choices=["last", "question"], default="last",
                   help="triage map from the last prompt token (published) or averaged over the question tokens")
    p.add_argument("--mode", choices=["consistent", "prefill"], default="consistent",
                   help="consistent: knockout in the prompt pass and every decoding step; prefill: prompt pass "
                        "only (the public code)")
    p.add_argument("--limit", type=int, metavar="N", help="answer only the first N questions (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="questions per forward pass")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy decoding length limit")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="model dtype (auto: the checkpoint's own; float32 for tiny models)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for --compare")
    add_chat_template_arg(p)
    p.set_defaults(func=run)


def _config(args):
    from vgmed_eval.vgrefine import VGRefineConfig, load_heads

    heads, layer, model = load_heads(args.vgrefine)
    if model and model != args.model:
        log.warning("heads file %s was made for %s, not %s", args.vgrefine, model, args.model)
    if args.top_k:
        heads = heads[: args.top_k]
    return VGRefineConfig(heads=heads, knockout_layers=tuple(args.knockout_layers or [layer]),
                          percentile=args.percentile, threshold=args.threshold, minmax_cutoff=args.minmax_cutoff,
                          rows=args.rows, mode=args.mode)


def _done_ids(path: Path) -> dict[str, dict]:
    rows = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    return rows


def _row(item: VQAItem, system: str, prompt: str, answer, benchmark: str) -> dict:
    s = score_response(answer.text, item.answer, item.kind, item.options)
    return {
        "id": item.id, "system": system, "benchmark": benchmark, "question": item.question, "prompt": prompt,
        "options": list(item.options), "response": answer.text, "gold": item.answer, "kind": item.kind,
        "modality": item.modality, "category": item.category, "parsed": s.parsed, "score": s.score,
        "correct": s.correct, "knocked_out": answer.knocked_out, "grid_cells": answer.grid_cells,
    }


def _by_image(items: list[VQAItem]) -> list[VQAItem]:
    """Questions of one image next to each other (first-appearance order), so its prefix is reused."""
    groups: dict[str, list[VQAItem]] = {}
    for item in items:
        groups.setdefault(item.image.key, []).append(item)
    return [item for group in groups.values() for item in group]


def _prepare(chunk: list[VQAItem], refiner, prefixes: dict, errors: list[str]):
    """Open the images, compute the missing prefixes (batched), split each prompt into prefix + suffix.

    A bad image or prompt costs its own question only (recorded in ``errors``)."""
    images, failed = {}, set()
    for it in chunk:
        try:
            images.setdefault(it.image.key, it.image.open())
        except Exception as exc:
            errors.append(f"{it.where or it.id}: {type(exc).__name__}: {exc}")
            failed.add(it.id)
    new = [k for k in images if k not in prefixes]
    try:
        prefixes.update(zip(new, refiner.prefixes([images[k] for k in new]), strict=True))
    except Exception:  # find the culprit(s) one image at a time
        for k in new:
            try:
                prefixes[k] = refiner.prefix(images[k])
            except Exception as exc:
                errors += [f"{it.where or it.id}: {type(exc).__name__}: {exc}" for it in chunk if it.image.key == k]
                failed.update(it.id for it in chunk if it.image.key == k)
    ready, queries = [], []
    for it in chunk:
        if it.id in failed:
            continue
        try:
            queries.append(refiner.query(prefixes[it.image.key], images[it.image.key], question_prompt(it)))
            ready.append(it)
        except Exception as exc:
            errors.append(f"{it.where or it.id}: {type(exc).__name__}: {exc}")
    return ready, queries


def run(args) -> int:
    from vgmed_eval.adapters import load_adapter
    from vgmed_eval.vgrefine import VGRefiner

    if args.compare and not args.vgrefine:
        log.error("--compare needs --vgrefine HEADS_JSON")
        return 2
    try:
        loaded = get_benchmark(args.benchmark).load(args.data)
        config = _config(args) if args.vgrefine else None
    except (BenchmarkError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    for err in loaded.errors:
        log.warning("skipped record: %s", err)
    items = loaded.items[: args.limit] if args.limit else loaded.items
    systems = (["baseline"] if not config or args.compare else []) + (["vgrefine"] if config else [])
    args.out.mkdir(parents=True, exist_ok=True)
    files = {s: args.out / f"predictions_{s}.jsonl" for s in systems}
    done = {s: _done_ids(f) for s, f in files.items()}
    todo = [it for it in items if any(it.id not in done[s] for s in systems)]
    log.info("%s: %d questions (%d already answered), systems: %s", args.benchmark, len(items),
             len(items) - len(todo), ", ".join(systems))

    try:
        adapter = load_adapter(args.model, dtype=args.dtype, device=args.device, chat_template=args.chat_template)
    except (OSError, ValueError) as exc:
        log.error("--model %s: cannot load: %s", args.model, exc)
        return 2
    refiner = VGRefiner(adapter, config, max_new_tokens=args.max_new_tokens)
    errors: list[str] = []
    todo = _by_image(todo)
    remaining: dict[str, int] = {}
    for it in todo:
        remaining[it.image.key] = remaining.get(it.image.key, 0) + 1
    prefixes: dict[str, object] = {}
    started = time.perf_counter()
    handles = {s: f.open("a", encoding="utf-8") for s, f in files.items()}
    try:
        with tqdm(total=len(todo), desc=f"vqa {args.benchmark}", unit="q") as bar:
            for start in range(0, len(todo), args.batch_size):
                chunk = todo[start : start + args.batch_size]
                ready, queries = _prepare(chunk, refiner, prefixes, errors)
                if queries:
                    base, refined = refiner.answer(queries, baseline="baseline" in systems,
                                                   refined="vgrefine" in systems)
                    for i, it in enumerate(ready):
                        prompt = adapter.prompt(question_prompt(it))
                        for system, answers in (("baseline", base), ("vgrefine", refined)):
                            if answers is not None and it.id not in done[system]:
                                row = _row(it, system, prompt, answers[i], args.benchmark)
                                handles[system].write(json.dumps(row, ensure_ascii=False) + "\n")
                                done[system][it.id] = row
                for it in chunk:
                    remaining[it.image.key] -= 1
                    if remaining[it.image.key] == 0:
                        prefixes.pop(it.image.key, None)  # free its KV cache
                for h in handles.values():
                    h.flush()
                bar.update(len(chunk))
    finally:
        for h in handles.values():
            h.close()
    elapsed = time.perf_counter() - started
    _write_results(args, items, systems, done, loaded.errors, errors, config, elapsed, len(todo))
    return 0


def _write_results(args, items, systems, done, load_errors, errors, config, elapsed, answered) -> None:
    ids = [it.id for it in items]
    rows = {s: [done[s][i] for i in ids if i in done[s]] for s in systems}
    results = {
        "benchmark": args.benchmark,
        "data": str(args.data),
        "model": args.model,
        "n_questions": len(items),
        "systems": {s: summarize(rows[s], keys=("kind", "modality", "category")) for s in systems},
        "vgrefine": asdict(config) if config else None,
        "decoding": {"greedy": True, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size},
        "load_errors": load_errors,
        "errors": errors,
        "timing": {"answered": answered, "seconds": round(elapsed, 3),
                   "questions_per_s": round(answered / elapsed, 3) if elapsed > 0 and answered else None},
    }
    if args.compare:
        common = [i for i in ids if all(i in done[s] for s in systems)]
        results["comparison"] = {
            "a": "baseline", "b": "vgrefine",
            **compare([done["baseline"][i] for i in common], [done["vgrefine"][i] for i in common],
                      n_resamples=args.bootstrap),
        }
    path = args.out / "results.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for s in systems:
        o = results["systems"][s]["overall"]
        log.info("%s: n=%d accuracy=%.4f mean score=%.4f", s, o["n"], o["accuracy"], o["mean_score"])
    if args.compare and results["comparison"].get("n"):
        c = results["comparison"]
        log.info("VGRefine - baseline: %+.4f (95%% CI %.4f..%.4f), McNemar p=%.4g", c["bootstrap"]["diff"],
                 *c["bootstrap"]["ci_diff"], c["mcnemar"]["p_value"])
    log.info("wrote %s", path)
