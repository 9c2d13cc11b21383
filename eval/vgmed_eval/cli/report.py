"""`vgmed-eval report`: its options, and the report of :mod:`vgmed_eval.report` they ask for."""

from __future__ import annotations

import logging
from pathlib import Path

from vgmed_build import commands
from vgmed_eval import report
from vgmed_eval.report import (
    build_report,
    mixed_protocols,
)

log = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        description=report.__doc__,
    )
    p.add_argument("--results", required=True, type=Path, help="output directory of `vgmed-eval grounding`")
    p.add_argument("--control", type=Path, default=None,
                   help="grounding output of a natural-image control set (default: RESULTS/control if present)")
    p.add_argument("--out", required=True, type=Path, help="directory for the PNGs and index.md")
    p.add_argument("--samples", type=int, default=6, help="number of attention overlays to draw")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of the overlays (default: the most visually sensitive layer)")
    p.add_argument("--vqa", type=Path, action="append", default=[], metavar="DIR",
                   help="output of `vgmed-eval vqa` (or a folder of them, one per benchmark) for the VQA table "
                        "and chart, baseline vs VGRefine; repeatable")
    p.add_argument("--causal", type=Path, metavar="DIR",
                   help="output of `vgmed-eval causal` for its section: answer flips with the ground-truth cells "
                        "knocked out vs random cells, and the attends-but-answers-wrong table")
    p.add_argument("--allow-mixed", action="store_true",
                   help="draw runs measured under different protocols (run.json) in one figure anyway: the "
                        "medical run with its control, the VQA runs together; refused otherwise (exit 2)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from vgmed_eval.vqa import figures as vqa_figures

    if not (args.results / "summary.json").exists():
        return commands.fail(f"{args.results}: no summary.json (run `vgmed-eval grounding` first)")
    control = args.control
    if control is None and (args.results / "control" / "summary.json").exists():
        control = args.results / "control"
    missing = [str(p) for p in args.vqa if not vqa_figures.find_results([p])]
    if missing:
        return commands.fail(f"--vqa {', '.join(missing)}: no results.json there (run `vgmed-eval vqa` first)")
    mixed = mixed_protocols(args.results, control, vqa_figures.find_results(args.vqa))
    if mixed and not args.allow_mixed:
        return commands.fail(f"runs of different protocols would share a figure ({mixed}); rerun them under one "
                             "protocol, or pass --allow-mixed")
    if mixed:
        log.warning("runs of different protocols share a figure (--allow-mixed): %s", mixed)
    if args.causal is not None and not (args.causal / "summary.json").exists():
        return commands.fail(f"--causal {args.causal}: no summary.json there (run `vgmed-eval causal` first)")
    files = build_report(args.results, args.out, control, args.samples, args.layer, args.vqa, args.causal)
    log.info("wrote %d files to %s", len(files), args.out)
    return commands.EXIT_OK
