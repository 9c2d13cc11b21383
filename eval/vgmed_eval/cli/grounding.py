"""`vgmed-eval grounding`: its options, and the run of :mod:`vgmed_eval.grounding` they ask for."""

from __future__ import annotations

import logging
from pathlib import Path

from vgmed_build import commands
from vgmed_build.release_format import (
    BOX_FORMATS,
    Q_TYPES,
    BoxReading,
    expected_names,
)
from vgmed_eval import distributed, grounding, run_manifest
from vgmed_eval.cli.options import add_protocol_args
from vgmed_eval.distributed import World
from vgmed_eval.grounding import (
    ChanceDraws,
    evaluate_release,
    input_problem,
    parse_layers,
)
from vgmed_eval.leakage import excluded_release_images
from vgmed_eval.model_options import add_model_options
from vgmed_eval.protocol import resolve
from vgmed_eval.release_io import ReleaseNotFound, resolve_release

log = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "grounding",
        description=grounding.__doc__,
    )
    p.add_argument("--release", required=True, type=Path,
                   help=f"release directory holding one or both question files ({expected_names(Q_TYPES)}) and, "
                        "unless --images says otherwise, the pictures (ours or the published VGMED files); or a "
                        "Hugging Face Hub dataset id org/name of such a folder, fetched with huggingface_hub "
                        "(HF_HUB_OFFLINE=1: from the local cache only)")
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument("--layers", default="all",
                   help="LLM layers to measure: 'all' or a list like '0,8,14-20' (negatives from the end)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="prompts per forward pass (and images per general-prompt pass)")
    p.add_argument("--rows", default="last", choices=["last", "question"],
                   help="query rows: the last prompt token (published) or the mean over the question tokens")
    p.add_argument("--q-types", default="localization,attribute",
                   help="comma list of question types to read (localization, attribute)")
    p.add_argument("--save-maps", action="store_true",
                   help="also write maps/<id>.npz: head-averaged question and general maps per layer on the "
                        "grid, GT cells, boxes, cell footprints in image pixels (for the report's overlays)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    p.add_argument("--control-release", type=Path, default=None,
                   help="a natural-image control release evaluated the same way into OUT/control, for the "
                        "report's medical-vs-natural comparison: its COCO_*.jsonl files (the published ones, or "
                        "those of a vgmed release built with a coco source; it may be the --release itself)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="where the pictures live when they are not under the release (published files: a SLAKE "
                        "folder id -> DIR/<id>/source.jpg, an integer COCO id -> DIR/COCO_val2014_<id:012d>.jpg "
                        "or DIR/val2014/...); used for --control-release too")
    p.add_argument("--bbox-format", choices=BOX_FORMATS, default=None,
                   help="read every published box as [x, y, w, h] or [x0, y0, x1, y1], overriding the records' "
                        "bbox_format and the authors' rule (xywh under Slake*, in the older and COCO files)")
    add_protocol_args(p, ("box_mapping", "xyxy_maxima", "cell_edges", "head_norm", "min_pixels", "max_pixels",
                          "qwen_resize", "gt", "kl_normalise"))
    p.add_argument("--chance-draws", type=int, default=ChanceDraws.draws,
                   help="chance level: per question, the --gt ground truth moved to this many random places inside "
                        "the image (same area and shape), scored against the same map (0 = none; a uniform map's "
                        "scores are always recorded); default %(default)s")
    p.add_argument("--chance-seed", type=int, default=ChanceDraws.seed,
                   help="seed of the random places (with each question's id); default %(default)s")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--exclude", type=Path, metavar="FILE",
                   help="leave out the questions on the release images of this exclusion list (`vgmed-eval leakage "
                        "--write-exclusions`: images also in a VQA benchmark); summary.json counts them")
    add_model_options(p)
    p.set_defaults(func=cmd_grounding)


def cmd_grounding(args) -> int:
    q_types = tuple(t.strip() for t in args.q_types.split(",") if t.strip())
    try:
        args.release = resolve_release(args.release)
        if args.control_release is not None:
            args.control_release = resolve_release(args.control_release)
    except ReleaseNotFound as exc:
        return commands.fail(str(exc))
    problem = input_problem(q_types, args.batch_size, [args.release, args.control_release], args.chance_draws)
    if problem:
        return commands.fail(problem)
    try:
        world = World.from_env()
    except distributed.WorldError as exc:
        return commands.fail(str(exc))
    protocol = resolve(args.protocol, vars(args))
    try:
        exclude = excluded_release_images(args.exclude) if args.exclude else frozenset()
    except ValueError as exc:
        return commands.fail(str(exc))
    # torch, transformers and the checkpoint take a while (~30 s for a 7B model): say what is happening
    log.info("loading %s (%s, %s) ...", args.model, world.device(args.device), args.dtype)
    from vgmed_eval.adapters import adapter_from_args

    try:
        adapter = adapter_from_args(args, world, protocol)
    except ValueError as exc:
        return commands.fail(str(exc))
    try:
        layers = parse_layers(args.layers, adapter.n_layers)
    except ValueError as exc:
        return commands.fail(f"--layers: {exc}")
    common = dict(layers=layers, batch_size=args.batch_size, rows=args.rows, save_maps=args.save_maps,
                  limit=args.limit, q_types=q_types, n_boot=args.bootstrap, progress=not args.no_progress,
                  images=args.images, reading=BoxReading(format=args.bbox_format, xyxy_maxima=protocol.xyxy_maxima),
                  protocol=protocol, chance=ChanceDraws(args.chance_draws, args.chance_seed), exclude=exclude)
    targets = [(args.release, args.out, False)]
    if args.control_release is not None:
        targets.append((args.control_release, args.out / "control", True))
    code = commands.EXIT_OK
    for release, out, control in targets:
        try:
            summary = evaluate_release(adapter, release, out, control=control, world=world, **common)
        except FileNotFoundError as exc:  # no question file in the release
            return commands.fail(str(exc))
        if summary is None:  # a rank other than 0: its part is written, rank 0 merges
            continue
        run_manifest.write(out, run_manifest.build(
            "grounding", vars(args), model=args.model, adapter=adapter, protocol=protocol.as_dict(),
            scorer=f"attention ratio, KL, JS against --gt {protocol.gt}",
            seeds={"chance_seed": args.chance_seed, "bootstrap_seed": 0},
            extra={"release": str(release), "control": control, "layers": layers}))
        best = summary.get("most_sensitive_layer")
        log.info("%s: %d questions, %d ok, %d errors, most visually sensitive layer %s -> %s",
                 release, summary["n_questions"], summary["n_ok"], summary["n_errors"], best, out)
        if "gt_tokens" in summary:
            gt = summary["gt_tokens"]
            log.info("%s: gt_tokens agree with the boxes on %d of %d questions %s", release, gt["agree"],
                     gt["checked"], gt["agree_by_mapping"])
        if summary["n_ok"] == 0:
            code = commands.fail(f"{release}: no question could be evaluated (see {out / 'errors.jsonl'})",
                                 commands.EXIT_ITEM_ERRORS)
    distributed.finish(world)
    return code
