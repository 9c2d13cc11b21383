"""`vgmed-eval leakage`: its options, the check of :mod:`vgmed_eval.leakage` and its table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vgmed_build import commands
from vgmed_eval import leakage
from vgmed_eval.cli.options import parse_benchmark
from vgmed_eval.leakage import (
    HASH_BITS,
    MAX_DISTANCE,
    check,
    exclusion_list,
)

log = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("leakage", description=leakage.__doc__)
    p.add_argument("--release", required=True, type=Path, help="release directory")
    p.add_argument("--benchmark", action="append", type=parse_benchmark, default=[], metavar="NAME=DATA", required=True,
                   help="a VQA benchmark and its local copy (names as for `vgmed-eval vqa`), repeatable")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="where the release's pictures live when not under it (published files), also for "
                        "the vgmed-* benchmarks")
    p.add_argument("--out", type=Path, help="write the findings here as JSON (default: only the printed table)")
    p.add_argument("--write-exclusions", type=Path, metavar="FILE",
                   help="write the exclusion list that `grounding --exclude` (release images) and `vqa --exclude` "
                        "(benchmark images) read")
    p.add_argument("--max-distance", type=int, default=MAX_DISTANCE,
                   help=f"near-identical: at most this many of the {HASH_BITS} dHash bits differ")
    p.set_defaults(func=cmd_leakage)


def cmd_leakage(args) -> int:
    from vgmed_eval.vqa.benchmarks import BenchmarkError

    if not args.release.is_dir():
        return commands.fail(f"--release {args.release}: not a directory")
    try:
        result = check(args.release, dict(args.benchmark), images=args.images, max_distance=args.max_distance)
    except (BenchmarkError, ValueError) as exc:
        return commands.fail(str(exc))
    print(f"{args.release}: {result['release_images']} images")
    print("benchmark | images | release images identical | near-identical | benchmark images matched")
    for name, b in result["benchmarks"].items():
        print(f"{name} | {b['images']} | {b['identical']} | {b['near']} | {b['benchmark_images_matched']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.write_exclusions:
        args.write_exclusions.parent.mkdir(parents=True, exist_ok=True)
        args.write_exclusions.write_text(json.dumps(exclusion_list(args.release, result["benchmarks"]), indent=2)
                                         + "\n", encoding="utf-8")
        log.info("exclusion list -> %s", args.write_exclusions)
    unread = result["release_errors"] + [e for b in result["benchmarks"].values() for e in b["errors"]]
    for e in unread:
        log.warning("unreadable image: %s", e)
    return commands.EXIT_ITEM_ERRORS if unread else commands.EXIT_OK
