"""`vgmed-eval causal`: its options, and the run of :mod:`vgmed_eval.causal` they ask for."""

from __future__ import annotations

import logging
from pathlib import Path

from vgmed_build import commands
from vgmed_build.release_format import Q_TYPES
from vgmed_eval import causal, run_manifest
from vgmed_eval.causal import (
    Settings,
    attention_ratios,
    run_causal,
    summarise,
    write_outputs,
)
from vgmed_eval.cli.options import add_protocol_args
from vgmed_eval.model_options import add_model_options
from vgmed_eval.prompts import short_answer
from vgmed_eval.protocol import GT_KINDS, resolve
from vgmed_eval.release_io import ReleaseNotFound, read_release, resolve_release

log = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("causal", description=causal.__doc__)
    p.add_argument("--release", required=True, type=Path,
                   help="release directory (or Hugging Face Hub dataset id org/name) with the questions and images")
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
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the 95%% CIs")
    add_protocol_args(p, ("vgrefine_mode", "min_pixels", "max_pixels"))
    add_model_options(p)
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
    protocol = resolve(args.protocol, vars(args))
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
        "causal", vars(args), model=args.model, adapter=adapter, protocol=protocol.as_dict(),
        scorer="answer flips (normalised text) and first-token logit changes; correctness by vgmed's scorer",
        seeds={"seed": args.seed, "bootstrap_seed": 0}, extra={"release": str(release)}))
    o = summary["overall"]
    log.info("%d questions, %d errors; flips with the region knocked out %s, with random cells %s -> %s",
             len(rows), len(errors), o.get("flip_gt"), o.get("flip_random"), args.out)
    if not rows:
        return commands.fail(f"{release}: no question could be checked (see {args.out / 'errors.jsonl'})",
                             commands.EXIT_ITEM_ERRORS)
    return commands.EXIT_OK
