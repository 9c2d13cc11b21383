"""`vgmed-build export`: its options, and the export of :mod:`vgmed_build.export` they ask for."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgmed_build.commands import EXIT_OK, fail
from vgmed_build.export import (
    FORMATS,
    ExportError,
    ExportOptions,
    export,
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        description="Export a release made by `vgmed-build release`. "
        + " ".join(f"{f.name}: {f.help}." for f in FORMATS.values())
        + " The release is verified against its manifest first; an existing output is only replaced "
        "when it is a previous export of ours; files are written to a temporary file and renamed.",
    )
    p.add_argument("dir", type=Path, help="release directory")
    p.add_argument("--format", choices=list(FORMATS), required=True, help="output format")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output: a file for vqa-json (default DIR-vqa.json), a folder for the others (default DIR-parquet, "
        "DIR-hf, DIR-lmms-eval, DIR-vlmevalkit); never inside DIR, whose manifest lists every file%(default).0s",
    )
    p.add_argument("--embed-images", action="store_true", help="parquet: add an image_bytes column with the PNG data")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even when it is not a previous export of ours (a file of yours, a folder holding "
        "other files: files of other names in it are kept)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="export without checking every file against the manifest's size and SHA-256 (a changed release)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    release_dir = args.dir.resolve()
    fmt = FORMATS[args.format]
    out = (args.out or release_dir.with_name(release_dir.name + fmt.suffix)).absolute()
    if out.resolve().is_relative_to(release_dir):
        return fail(f"--out {out.resolve()} lies inside the release; choose a path outside it")
    options = ExportOptions(embed_images=args.embed_images, verify=not args.no_verify, overwrite=args.overwrite)
    try:
        for path in export(release_dir, fmt, out, options):
            print(f"wrote {path}")
    except ExportError as exc:
        return fail(str(exc))
    return EXIT_OK
