"""`vgmed-build release`: its options, the release of :mod:`vgmed_build.release` and its summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgmed_build.catalog import CatalogError
from vgmed_build.commands import EXIT_ITEM_ERRORS, EXIT_OK, add_build_arg, fail
from vgmed_build.identifiers import ForbidFileError
from vgmed_build.lock import LockBusy, add_wait_arg
from vgmed_build.release import (
    SAMPLED,
    ReleaseError,
    release_build,
)
from vgmed_build.release_format import (
    CONVENTIONS,
)
from vgmed_build.review.decision import POLICIES


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "release",
        description="Write a VGMED release from the build catalog: only drafts accepted under the review "
        "policy, images renamed by stable id and stripped of metadata, manifest with counts and SHA-256, "
        "a Hugging Face dataset card. The release is built next to --out, validated, then swapped in.",
    )
    add_build_arg(p)
    p.add_argument(
        "--out", type=Path, default=None, help="release directory to write (default: BUILD/release)%(default).0s"
    )
    p.add_argument("--name", default="VGMED", help="release name written into the manifest and the card")
    p.add_argument("--release-version", default="0.1.0", help="release version written into the manifest")
    p.add_argument(
        "--created",
        default=None,
        help="creation time for the manifest (ISO-8601, e.g. 2026-01-01T00:00:00Z); fixes it for "
        "byte-identical "
        "rebuilds (default: $SOURCE_DATE_EPOCH if set, else now)%(default).0s",
    )
    p.add_argument(
        "--policy",
        choices=(*POLICIES, SAMPLED),
        default="majority",
        help="review decision policy: unanimous = every reviewer accepts, majority = most verdicts, "
        "adjudicator = the --adjudicator's verdict wins; sampled = majority, plus the drafts the judge passed "
        "and nobody reviewed, only when the audit of `review push --triage` supports --target-error-rate "
        "(the card states the estimated error rate and its exact 95%% interval)",
    )
    p.add_argument(
        "--target-error-rate",
        type=float,
        default=None,
        metavar="RATE",
        help="--policy sampled: the error rate the audit's exact 95%% interval must lie at or below (default: the "
        "--audit-target of `review push --triage`)",
    )
    p.add_argument(
        "--adjudicator",
        default=None,
        help="pseudonymous reviewer id (r-xxxxxxxx, as `vgmed-build review status` shows) whose verdict wins "
        "under --policy adjudicator",
    )
    p.add_argument(
        "--include-unreviewed",
        action="store_true",
        help="preview: also include drafts that review has not accepted yet (never rejected ones); "
        "the manifest "
        "and the card's first line say so",
    )
    p.add_argument(
        "--bbox-convention",
        choices=sorted(CONVENTIONS),
        default="exclusive",
        help="exclusive: x1/y1 are pixel edges one past the box; published: inclusive max pixel indices "
        "(x1-1, y1-1) as in the published VGMED files",
    )
    p.add_argument(
        "--forbid-file",
        type=Path,
        default=None,
        help="text file with strings that must not occur anywhere in the release (one per line, e.g. patient "
        "names and IDs of the source data; whole words, case-insensitive: 'Doe' does not match 'Does'; a '*' "
        "at an end also matches inside longer words); a draft holding one is left out, a hit elsewhere refuses "
        "the release",
    )
    add_wait_arg(p)
    p.set_defaults(func=cmd_release)


def cmd_release(args: argparse.Namespace) -> int:
    try:
        report = release_build(
            args.build,
            out=args.out,
            name=args.name,
            version=args.release_version,
            created=args.created,
            policy=args.policy,
            adjudicator=args.adjudicator,
            include_unreviewed=args.include_unreviewed,
            bbox_convention=args.bbox_convention,
            forbid_file=args.forbid_file,
            wait=args.wait,
            target_error_rate=args.target_error_rate,
        )
    except (ForbidFileError, CatalogError, ReleaseError, ValueError, LockBusy) as exc:
        return fail(str(exc))
    counts = report.counts
    kind = "PREVIEW release (includes unreviewed items)" if args.include_unreviewed else "release"
    print(f"wrote {kind} {report.out_dir}: {counts['records']} questions on {counts['images']} images")
    for name, n in counts["by_file"].items():
        print(f"  {name}: {n}")
    if report.skipped:
        print(f"{len(report.skipped)} accepted drafts left out because of errors (see `vgmed-build stats`):")
        for message in report.skipped:
            print(f"  {message}")
        return EXIT_ITEM_ERRORS
    return EXIT_OK
