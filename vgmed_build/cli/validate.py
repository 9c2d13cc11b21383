"""`vgmed-build validate`: its options, the checks of :mod:`vgmed_build.validate` and their listing."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgmed_build.commands import EXIT_ITEM_ERRORS, EXIT_OK, fail
from vgmed_build.identifiers import (
    ForbidFileError,
)
from vgmed_build.release_format import (
    BOX_FORMATS,
)
from vgmed_build.validate import (
    gt_tokens_note,
    validate_dir,
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        description="Validate a release directory: record schemas, images present and readable, boxes inside "
        "their image, unique ids, checksums and counts against manifest.json, the dataset card, and no "
        "patient "
        "identifiers in records, card, manifest, file names or image metadata. A release of ours needs its "
        "manifest.json; a published VGMED download is checked with --published as far as it can be, and "
        "the rest is reported as skipped. Exit status 1 when "
        "any problem is found. Line 0 in a message means the file as a whole.",
    )
    p.add_argument(
        "dir",
        type=Path,
        help="release directory (holds VGMED_localization.jsonl / VGMED_attribute.jsonl; a published download "
        "may also use the COCO_*.jsonl and older *_questions.jsonl names)",
    )
    p.add_argument(
        "--forbid-file",
        type=Path,
        default=None,
        help="text file with strings that must not occur anywhere (one per line, '#' comments); every file's "
        "bytes and every file name are searched, case-insensitively, for whole words ('Doe' does not match "
        "'Does'; a '*' at an end also matches inside longer words: '*hansen')",
    )
    p.add_argument(
        "--published",
        action="store_true",
        help="check DIR as a published VGMED download (the hub layout: no manifest, no ids, no card): only "
        "records, images, boxes and identifiers; checksums and counts are reported as not checked. A folder "
        "with vgmed's card, schemas or record ids is refused in this mode (it needs its manifest.json)",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --published: where the pictures live when they are not under DIR (a SLAKE folder id "
        "resolves to DIR/<id>/source.jpg, an integer COCO id to DIR/COCO_val2014_<id:012d>.jpg or "
        "DIR/val2014/...)",
    )
    p.add_argument(
        "--bbox-format",
        choices=BOX_FORMATS,
        default=None,
        help="with --published: read every box as [x, y, w, h] or [x0, y0, x1, y1], overriding the records' "
        "bbox_format and the authors' rule (xywh under Slake* and in the older / COCO files, xyxy otherwise)",
    )
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        report = validate_dir(
            args.dir, forbid_file=args.forbid_file, published=args.published, images=args.images,
            bbox_format=args.bbox_format,
        )
    except (ForbidFileError, NotADirectoryError) as exc:
        return fail(str(exc))
    for problem in report.problems:
        print(problem.format())
    note = gt_tokens_note(report)
    if note:
        print(note)
        for problem in report.gt_tokens_disagree:
            print(f"  {problem.format()}")
    for note in report.skipped:
        print(f"skipped: {note}")
    kind = "vgmed release" if report.kind == "vgmed" else "published VGMED layout"
    verdict = f"{len(report.problems)} problem(s)" if report.problems else "OK"
    if not report.problems and report.kind == "published":
        verdict = "layout OK (no checksums checked: the published layout has none)"
    print(f"{args.dir}: {kind}, {report.n_records} records, {report.n_images} images: {verdict}")
    return EXIT_ITEM_ERRORS if report.problems else EXIT_OK
