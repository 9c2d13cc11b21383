"""`vgmed-eval vqa`: answer a medical VQA benchmark with a model, with and without VGRefine.

Writes ``predictions_<system>.jsonl`` (one line per question: prompt, response, gold, score, correct)
and ``results.json`` (accuracy overall, per question kind, modality and category; with ``--compare``
the paired McNemar test and bootstrap confidence intervals of baseline versus VGRefine), and the same
as a table (``results.md``) and a chart (``results.png``). A rerun
with the same ``--out`` skips the questions already answered there.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from vgmed_build import commands
from vgmed_eval import distributed, run_manifest
from vgmed_eval.cli.options import add_protocol_args
from vgmed_eval.distributed import World
from vgmed_eval.model_options import add_model_options
from vgmed_eval.protocol import PUBLISHED_HEADS, Protocol, resolve
from vgmed_eval.vqa import figures
from vgmed_eval.vqa.answer import (
    answer_to_files,
    answered_rows,
    exclude_items,
    merge_parts,
    vgrefine_config,
)
from vgmed_eval.vqa.benchmarks import BENCHMARKS, BenchmarkError, VQAItem, get_benchmark
from vgmed_eval.vqa.population import Population, metric_label, select
from vgmed_eval.vqa.scoring import summarize
from vgmed_eval.vqa.stats import compare

log = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "vqa",
        description=__doc__,
    )
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS.names(),
                   help="which benchmark layout to read from --data (see docs/vqa.md)")
    p.add_argument("--data", required=True, type=Path, help="local copy of the benchmark, in its public layout")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="vgmed-* only: where the records' pictures live when not under --data, e.g. a SLAKE "
                        "download for the published files (folder id -> DIR/<id>/source.jpg, COCO id -> "
                        "DIR/COCO_val2014_<id>.jpg or DIR/val2014/...); paths may not leave DIR")
    p.add_argument("--out", required=True, type=Path, help="output directory (created; reruns resume)")
    p.add_argument("--vgrefine", metavar="HEADS_JSON",
                   help="answer with VGRefine using this `vgmed-eval heads` file (knockout_layer + heads), or "
                        f"published:NAME for the heads the authors published ({', '.join(PUBLISHED_HEADS)})")
    p.add_argument("--compare", action="store_true",
                   help="answer every question with the baseline AND VGRefine and test the difference "
                        "(needs --vgrefine)")
    p.add_argument("--knockout-layers", type=int, nargs="+", metavar="L",
                   help="knockout layer(s); default: the knockout_layer of the heads file")
    p.add_argument("--top-k", type=int, metavar="K", help="use only the first K heads of the heads file (default: all)")
    p.add_argument("--threshold", choices=["percentile", "minmax"], default="percentile",
                   help="triage rule: percentile, or min-max-normalised map below --minmax-cutoff")
    p.add_argument("--minmax-cutoff", type=float, default=0.5, help="cutoff for --threshold minmax")
    p.add_argument("--rows", choices=["last", "question"], default="last",
                   help="triage map from the last prompt token (published) or averaged over the question tokens")
    p.add_argument("--limit", type=int, metavar="N", help="answer only the first N questions (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="questions per forward pass")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy decoding length limit")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for --compare")
    add_protocol_args(p, ("percentile", "vgrefine_mode", "mc_max_new_tokens", "min_new_tokens", "scorer", "population",
                          "min_pixels", "max_pixels", "qwen_resize"))
    p.add_argument("--exclude", type=Path, metavar="FILE",
                   help="leave out the questions on this benchmark's images listed in an exclusion list (`vgmed-eval "
                        "leakage --write-exclusions`: images also in the release); results.json counts them")
    add_model_options(p)
    p.set_defaults(func=cmd_vqa)


def _config(args, protocol: Protocol):
    return vgrefine_config(args.vgrefine, args.model, protocol, top_k=args.top_k, knockout_layers=args.knockout_layers,
                           threshold=args.threshold, minmax_cutoff=args.minmax_cutoff, rows=args.rows)


def _max_new_tokens(args, protocol: Protocol, items: list[VQAItem]) -> int:
    """``--max-new-tokens``, or the protocol's multiple-choice length when every question is multiple choice
    (the published protocol answers with one greedy token, the letter)."""
    if protocol.mc_max_new_tokens and items and all(it.options for it in items):
        return protocol.mc_max_new_tokens
    return args.max_new_tokens


def cmd_vqa(args) -> int:
    from vgmed_eval.adapters import adapter_from_args
    from vgmed_eval.vgrefine import VGRefiner

    if args.compare and not args.vgrefine:
        return commands.fail("--compare needs --vgrefine HEADS_JSON")
    try:
        world = World.from_env()
        loaded = get_benchmark(args.benchmark).load(args.data, args.images)
        excluded = exclude_items(loaded, args.exclude, args.benchmark) if args.exclude else 0
        protocol = resolve(args.protocol, vars(args))
        config = _config(args, protocol) if args.vgrefine else None
    except (BenchmarkError, ValueError) as exc:
        return commands.fail(str(exc))
    for err in loaded.errors:
        log.warning("skipped record: %s", err)
    if not loaded.items:
        first = f"; first: {loaded.errors[0]}" if loaded.errors else ""
        return commands.fail(f"{args.benchmark}: no question loaded from {', '.join(loaded.files) or args.data} "
                             f"({len(loaded.errors)} records rejected{first})", commands.EXIT_ITEM_ERRORS)
    for note in loaded.notes:
        log.warning("%s", note)
    log.info("%s: reading %s", args.benchmark, ", ".join(loaded.files))
    population = select(loaded.items[: args.limit] if args.limit else loaded.items, protocol.population)
    items = population.items
    if not items:
        return commands.fail(f"{args.benchmark}: none of the {population.loaded} questions loaded is in population "
                             f"{population.name} ({len(population.skipped_open)} open, "
                             f"{len(population.skipped_no_options)} closed without options)",
                             commands.EXIT_ITEM_ERRORS)
    if population.name != "all":
        log.info("%s: population %s: %d of %d questions asked (%d open and %d closed without options skipped)",
                 args.benchmark, population.name, len(items), population.loaded, len(population.skipped_open),
                 len(population.skipped_no_options))
    systems = (["baseline"] if not config or args.compare else []) + (["vgrefine"] if config else [])
    args.out.mkdir(parents=True, exist_ok=True)
    files = {s: args.out / f"predictions_{s}.jsonl" for s in systems}
    done = {s: answered_rows(args.out, s) for s in systems}
    # The split is made on all questions, not the unanswered ones: ranks read the parts at different
    # moments, and the split must not depend on what the others have written so far.
    mine = distributed.shard(items, lambda it: it.image.key, world) if world.distributed else items
    todo = [it for it in mine if any(it.id not in done[s] for s in systems)]
    log.info("%s: %d questions (%d for this rank, %d of them already answered), systems: %s", args.benchmark,
             len(items), len(mine), len(mine) - len(todo), ", ".join(systems))

    started = time.perf_counter()
    errors: list[tuple[str, str]] = []
    adapter = None  # loaded only when a question is left to answer
    if todo:
        try:
            adapter = adapter_from_args(args, world, protocol)
            if config:
                config.check_fits(adapter.n_layers, adapter.n_heads, args.model, f"--vgrefine {args.vgrefine}")
        except ValueError as exc:
            return commands.fail(str(exc))
        refiner = VGRefiner(adapter, config, max_new_tokens=_max_new_tokens(args, protocol, items),
                            min_new_tokens=protocol.min_new_tokens)
        out_files = files
        if world.distributed:
            distributed.parts_dir(args.out).mkdir(exist_ok=True)
            out_files = {s: distributed.part_path(args.out, world, f".predictions_{s}.jsonl") for s in systems}
        errors = answer_to_files(adapter, refiner, todo, systems, done, out_files, benchmark=args.benchmark,
                                 batch_size=args.batch_size, scorer=protocol.scorer, progress=world.main)
    elapsed = time.perf_counter() - started
    answered = len(todo)
    if world.distributed:
        info = distributed.part_path(args.out, world, ".vqa.json")
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(json.dumps({"errors": errors, "answered": answered}), encoding="utf-8")
        distributed.barrier(world)  # every part is on disk
        if world.main:
            errors, answered = merge_parts(args.out, world, items, systems, files, done)
            _write_results(args, population, systems, done, loaded, [m for _, m in errors], config,
                           time.perf_counter() - started, answered, world.size, adapter, excluded)
        distributed.barrier(world)  # rank 0 has merged: whatever runs next on any rank can read the files
        distributed.finish(world)
        return _outcome(items, systems, done, args) if world.main else commands.EXIT_OK
    _write_results(args, population, systems, done, loaded, [m for _, m in errors], config, elapsed, answered, 1,
                   adapter, excluded)
    return _outcome(items, systems, done, args)


def write_manifest(args, protocol: Protocol, config, adapter) -> None:
    """``OUT/run.json``; a rerun that answered nothing (everything was already there) loads no model and keeps
    the model facts of the run that did."""
    manifest = run_manifest.build("vqa", vars(args), model=args.model, adapter=adapter, protocol=protocol.as_dict(),
                                  scorer=metric_label(protocol.population, protocol.scorer),
                                  seeds={"bootstrap_seed": 0},
                                  extra={"benchmark": args.benchmark, "vgrefine": asdict(config) if config else None})
    previous = run_manifest.read(args.out)
    if adapter is None and previous and previous.get("model"):
        manifest["model"] = previous["model"]
    run_manifest.write(args.out, manifest)


def _outcome(items: list[VQAItem], systems: list[str], done: dict, args) -> int:
    """The exit code: a run where every question failed must not exit 0 (and says so)."""
    if any(it.id in done[s] for s in systems for it in items):
        return commands.EXIT_OK
    return commands.fail(f"{args.benchmark}: every question failed (see errors in {args.out / 'results.json'})",
                         commands.EXIT_ITEM_ERRORS)


def _write_results(args, population: Population, systems, done, loaded, errors, config, elapsed, answered,
                   processes, adapter=None, excluded: int = 0) -> None:
    items, protocol = population.items, resolve(args.protocol, vars(args))
    ids = [it.id for it in items]
    rows = {s: [done[s][i] for i in ids if i in done[s]] for s in systems}
    results = {
        "benchmark": args.benchmark,
        "data": str(args.data),
        "files": loaded.files,
        "model": args.model,
        "n_questions": len(items),
        # loaded (after --limit) -> asked (the population) -> scored per system; failed = run-time errors
        "counts": {"loaded": population.loaded, "asked": len(items), "scored": {s: len(rows[s]) for s in systems},
                   "failed": len(errors), "load_errors": len(loaded.errors)},
        "population": population.summary(),
        "metric": metric_label(protocol.population, protocol.scorer),
        "systems": {s: summarize(rows[s], keys=("kind", "modality", "category")) for s in systems},
        "vgrefine": asdict(config) if config else None,
        "protocol": protocol.as_dict(),
        "decoding": {"greedy": True, "max_new_tokens": _max_new_tokens(args, protocol, items),
                     "min_new_tokens": protocol.min_new_tokens, "batch_size": args.batch_size},
        "load_errors": loaded.errors,
        "load_notes": loaded.notes,
        "excluded": {"file": str(args.exclude), "questions": excluded} if args.exclude else None,
        "errors": errors,
        "timing": {"answered": answered, "processes": processes, "seconds": round(elapsed, 3),
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
    write_manifest(args, protocol, config, adapter)
    figures.write([results], args.out / "results.md", args.out / "results.png", f"# VQA: {args.benchmark}")
    for s in systems:
        o = results["systems"][s]["overall"]
        log.info("%s: n=%d accuracy=%.4f mean score=%.4f", s, o["n"], o["accuracy"], o["mean_score"])
    if args.compare and results["comparison"].get("n"):
        c = results["comparison"]
        log.info("VGRefine - baseline: %+.4f (95%% CI %.4f..%.4f), McNemar p=%.4g", c["bootstrap"]["diff"],
                 *c["bootstrap"]["ci_diff"], c["mcnemar"]["p_value"])
    log.info("wrote %s, results.md and results.png (table and chart)", path)
