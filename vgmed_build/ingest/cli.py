"""`vgmed-build ingest | regions | stats`: the ingest stage's command line (see :mod:`.run`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vgmed_build import api
from vgmed_build.catalog import CatalogError, open_catalog
from vgmed_build.commands import EXIT_ITEM_ERRORS, EXIT_OK, add_build_arg, fail
from vgmed_build.config import ConfigError, parse_option_flags
from vgmed_build.identifiers import WITH_PATHS_HINT, add_with_paths_arg, item_pseudonym
from vgmed_build.ingest.distributed import DaskError
from vgmed_build.lock import LockBusy, add_wait_arg
from vgmed_build.resources import schema_problems


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        description="Read segmentation sources (NIfTI / MHA / NRRD / 3D Slicer, MSD / nnU-Net, "
        "TotalSegmentator, DICOM + SEG / RTSTRUCT, 2D images + masks, SLAKE, SA-Med2D), render 8-bit PNG "
        "slices in the radiological convention and store one "
        "region (component boxes, area, side, ...) per (image, structure). Resumable: unchanged items are "
        "skipped, a crash never leaves half an item. Exit code 1 if any item failed. See docs/ingest.md.",
    )
    add_build_arg(p, help="build directory (created if missing) holding catalog.sqlite and images/")
    p.add_argument(
        "--sources",
        type=Path,
        metavar="FILE",
        help="sources file (.toml, .yaml/.yml or .json) with one entry per source; paths in it "
        "are relative to the file",
    )
    p.add_argument(
        "--source",
        action="append",
        metavar="KIND:PATH",
        help="quick source without a sources file, e.g. msd:/data/Task03_Liver (repeatable); "
        "named after the path's last component; options from --option",
    )
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the --source flags, as in a sources file's [source.options] (repeatable): "
        "channel=1, window=liver, plane=coronal, cases=[\"s0001\"]; a value that is not a TOML value "
        "is a string. Default: each option's default (docs/ingest.md)",
    )
    p.add_argument(
        "--modality",
        help="modality of the --source flags (CT, MRI, PET, X-ray, Ultrasound, "
        "Endoscopy, Dermoscopy, Fundus); default: from the files where they say it",
    )
    p.add_argument(
        "--body-part",
        help="body part of the --source flags (also picks the CT window: brain, lung/chest, liver, abdomen, bone, "
        "...); default: none",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="process items in N worker processes (catalog writes stay in the main process)",
    )
    p.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="render items on the Dask distributed cluster whose scheduler is at ADDRESS (tcp://host:8786; "
        "workers started by hand, or as SLURM / PBS / Kubernetes jobs by dask-jobqueue / dask-kubernetes); "
        "its workers must see the sources and the build folder at the same absolute paths; the catalog "
        "stays written by this process alone. Needs pip install 'dask[distributed]'. Excludes --workers",
    )
    p.add_argument(
        "--dask-batch",
        type=int,
        default=0,
        metavar="N",
        help="with --dask-scheduler: items per Dask task (default 0: as many as take a worker about a second, "
        "by its timing of the tasks so far, at most 64; the scheduler spends ~5 ms per task, so one item a "
        "task caps the cluster at ~200 items/s); each item is still stored in its own transaction",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="re-ingest every item even if its fingerprint (inputs + options) is unchanged",
    )
    p.add_argument(
        "--keep-missing",
        action="store_true",
        help="keep items that their source no longer has (default: withdraw them, e.g. after withdrawn consent: "
        "their images, regions, drafts and review tasks leave the build and the next release; review events "
        "stay in the catalog's history)",
    )
    add_wait_arg(p)
    add_with_paths_arg(p)
    p.set_defaults(func=cmd_ingest)

    p = subparsers.add_parser(
        "regions",
        description="Write every region record (validated against "
        "schemas/region.schema.json) as one JSON object per line, ordered by id.",
    )
    add_build_arg(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("-"),
        metavar="FILE",
        help="output JSONL file ('-' writes to standard output)",
    )
    p.add_argument("--source", metavar="NAME", help="only regions of this source")
    add_with_paths_arg(p)
    p.set_defaults(func=cmd_regions)

    p = subparsers.add_parser(
        "stats",
        description="Print item, image and region counts by source, modality and "
        "label, every stored ingest error, and every warning (an item ingested all the same, such as an "
        "all-black picture). Exit code 1 if there are errors (warnings do not count).",
    )
    add_build_arg(p)
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    add_with_paths_arg(p)
    p.set_defaults(func=cmd_stats)


def cmd_ingest(args: argparse.Namespace) -> int:
    if args.dask_scheduler and args.workers != 1:
        return fail("--workers and --dask-scheduler exclude each other (the cluster's workers render the items)")
    if args.dask_batch < 0 or (args.dask_batch and not args.dask_scheduler):
        return fail("--dask-batch takes a count of 0 (chosen by timing) or more, with --dask-scheduler")
    try:
        options = parse_option_flags(args.option or [])
        report = api.ingest(
            args.build,
            sources=args.sources,
            source=args.source or [],
            options=options,
            modality=args.modality,
            body_part=args.body_part,
            workers=args.workers,
            force=args.force,
            keep_missing=args.keep_missing,
            with_paths=args.with_paths,
            wait=args.wait,
            progress=False if args.no_progress else None,
            dask_scheduler=args.dask_scheduler,
            dask_batch=args.dask_batch,
        )
    except (ConfigError, CatalogError, LockBusy, DaskError) as exc:
        return fail(str(exc))
    with open_catalog(args.build) as catalog:
        n_images, n_regions = catalog.image_and_region_counts()
    print(
        f"ingest: {report.items} items: {report.done} ingested, {report.unchanged} unchanged, "
        f"{report.skipped.total()} skipped, {len(report.errors)} errors, "
        + (f"{len(report.warnings)} ingested with a warning, " if report.warnings else "")
        + f"{len(report.withdrawn)} withdrawn (no longer in their source)"
        + (f", {len(report.kept_missing)} missing kept" if report.kept_missing else "")
        + f"; catalog holds {n_images} images, {n_regions} regions"
    )
    for reason, n in sorted(report.skipped.items()):
        print(f"  skipped {n} item(s): {reason}")
    for error in report.errors:
        print(f"  error [{error.source}] {error.text(args.with_paths)}", file=sys.stderr)
    for warning in report.warnings:
        print(f"  warning [{warning.source}] {warning.text(args.with_paths)}", file=sys.stderr)
    if (report.errors or report.warnings) and not args.with_paths:
        print(f"  ({WITH_PATHS_HINT}, e.g. `vgmed-build stats --build {args.build} --with-paths`)", file=sys.stderr)
    return EXIT_ITEM_ERRORS if report.errors else EXIT_OK


def cmd_regions(args: argparse.Namespace) -> int:
    try:
        catalog = open_catalog(args.build, create=False)
    except CatalogError as exc:
        return fail(str(exc))
    lines, bad = [], 0
    with catalog:
        for region in catalog.regions(args.source):
            problems = schema_problems("region", region)
            if problems:
                bad += 1
                print(f"error: region {region.get('id')}: {'; '.join(problems)}", file=sys.stderr)
                continue
            if not args.with_paths:
                source = region["source"]
                source["item"] = item_pseudonym(source["name"], source["item"])
            lines.append(json.dumps(region, sort_keys=True))
    text = "".join(line + "\n" for line in lines)
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        from vgmed_build.imaging import write_atomic

        write_atomic(args.out, text.encode())
        print(f"regions: wrote {len(lines)} records to {args.out}")
    return EXIT_ITEM_ERRORS if bad else EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        catalog = open_catalog(args.build, create=False)
    except CatalogError as exc:
        return fail(str(exc))
    with catalog:
        stats = catalog.ingest_stats()
    from vgmed_build.ingest.run import ItemProblem

    for kind in ("errors", "warnings"):
        problems = [ItemProblem(e["source"], e["item"], e["path"], e["problem"]) for e in stats[kind]]
        stats[kind] = [
            {
                "source": e.source,
                "item": e.item if args.with_paths else item_pseudonym(e.source, e.item),
                "path": e.path if args.with_paths or not e.path else item_pseudonym(e.source, e.path),
                "message": e.text(args.with_paths),
            }
            for e in problems
        ]
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print("by source:")
        for name, counts in sorted(stats["sources"].items()):
            print(
                f"  {name}: {counts['items_done']} items done, {counts['items_skipped']} skipped, "
                f"{counts['items_error']} failed, {counts['images']} images, {counts['regions']} regions"
            )
        for title in ("modalities", "labels", "sides"):
            print(f"regions by {title.rstrip('s') if title != 'modalities' else 'modality'}:")
            for name, n in stats[title].items():
                print(f"  {name}: {n}")
        print(f"items skipped (read, but nothing passed the size filters): {sum(stats['skipped'].values())}")
        for reason, n in stats["skipped"].items():
            print(f"  {reason}: {n}")
        for kind in ("errors", "warnings"):
            print(f"{kind}{' (items ingested all the same)' if kind == 'warnings' else ''}: {len(stats[kind])}")
            for problem in stats[kind]:
                print(f"  [{problem['source']}] {problem['message']}")
    return EXIT_ITEM_ERRORS if stats["errors"] else EXIT_OK
