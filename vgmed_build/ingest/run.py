"""`vgmed-build ingest`'s driver: list every source's items, skip the unchanged, render the rest in a
worker pool, store each item's outcome, withdraw the items a source no longer has.

Each source item (a volume + labels, a DICOM series + SEG, a 2D image + masks) is one unit of work:
its PNGs are written atomically first, then its item, image and region rows go into the catalog in
ONE transaction, so a kill -9 never leaves half an item. An item whose fingerprint (input files'
sizes, mtimes and content + the source's options) is already stored as done is skipped; a changed
item is re-ingested in place (stable ids, upserts), so reruns never duplicate. A bad item becomes an
error record naming the file and the problem, and the run goes on (a worker process that dies costs
only the item it held, see :mod:`.pool`). An item read correctly whose every structure the size
filters leave out is *skipped* with its reason, not an error. An item its source no longer lists is
withdrawn from the build (``--keep-missing`` keeps it).

An error's item and file are fields (:class:`ItemProblem`), never parsed back out of its message,
so output meant to be shared shows a pseudonym in their place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from tqdm import tqdm

from vgmed_build.catalog import Catalog, open_catalog
from vgmed_build.catalog.ingest import INGEST_STAGE as STAGE
from vgmed_build.ctslices import HU_DIR, hu_path
from vgmed_build.identifiers import item_pseudonym
from vgmed_build.ingest.distributed import WorkerLost, connect, run_on_dask
from vgmed_build.ingest.pool import WorkerDied, run_parallel
from vgmed_build.ingest.render import RenderedImage, render_item
from vgmed_build.interrupt import disk_full
from vgmed_build.resources import schema_problems
from vgmed_build.sources import SourceError, SourceSpec, get_adapter
from vgmed_build.sources.base import ItemSkipped, SourceItem, escaped_name, name_problem, safe_message

log = logging.getLogger(__name__)

# Bump when rendering or region extraction changes, so every item is re-ingested once.
INGEST_VERSION = "1"


def spec_settings(spec: SourceSpec) -> str:
    """What of a source's entry changes its items' output (everything but its name and path), as JSON."""
    settings = {k: v for k, v in asdict(spec).items() if k not in ("name", "path")}
    return json.dumps(settings, sort_keys=True, default=str)


def fingerprint(settings: str, item: SourceItem) -> str:
    """Hash of the item's input files (relative name, size, mtime, content) and its source's
    :func:`spec_settings` (computed once per source, not per item)."""
    h = hashlib.sha256()
    # Spelled as json.dumps([INGEST_VERSION, key, settings]) always was: stored fingerprints stay valid.
    h.update(f"[{json.dumps(INGEST_VERSION)}, {json.dumps(item.key)}, {settings}]".encode())
    if item.extra:  # data of the item held in a shared file (COCO annotations)
        h.update(f"|extra|{item.extra}|".encode())
    for path in item.files:
        st = path.stat()
        h.update(f"|{path.name}|{st.st_size}|{st.st_mtime_ns}|".encode())
        with open(path, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


@dataclass
class Job:
    spec: SourceSpec
    item: SourceItem
    done_fingerprint: str | None  # fingerprint stored as done, None if not done
    settings: str  # spec_settings(spec)


@dataclass(frozen=True)
class ItemProblem:
    """One error or warning of a source (an item, or the source's listing): who and what, as separate fields."""

    source: str
    item: str  # the item key (or, for a listing problem, the file or folder it is about)
    path: str  # the file the problem is about, shown before it ('' when it names none)
    problem: str

    def text(self, with_paths: bool) -> str:
        """``path: problem``; without paths (output meant to be shared) the item's pseudonym stands
        in for the path: a field replaced, never a substring of the message searched for."""
        if not with_paths:
            return f"{item_pseudonym(self.source, self.item)}: {self.problem}"
        return f"{self.path or self.item}: {self.problem}"


@dataclass
class JobResult:
    status: str  # done | unchanged | skipped (nothing passed the size filters: problem is why) | error | disk-full
    fingerprint: str = ""
    images: list[RenderedImage] = field(default_factory=list)
    problem: str = ""  # the error, or the reason the item was skipped
    path: str = ""  # the file an error is about
    warnings: list[str] = field(default_factory=list)  # what is odd about an item done (its images')


def run_job(job: Job, build_dir: Path, force: bool) -> JobResult:
    """Fingerprint, skip if unchanged, else load and render one item; never raises."""
    key = job.item.key
    try:
        fp = fingerprint(job.settings, job.item)
    except OSError as exc:
        return JobResult("error", problem=f"cannot read input ({exc.strerror or exc})", path=failed_file(exc, job))
    if not force and fp == job.done_fingerprint:
        return JobResult("unchanged", fingerprint=fp)
    step = "reading"  # what the item was at, named in an unexpected error
    try:
        data = job.item.load()
        step = "rendering"
        images = render_item(job.spec, key, data, build_dir)
    except SourceError as exc:
        return JobResult("error", fingerprint=fp, problem=exc.problem, path=exc.path)
    except ItemSkipped as exc:
        return JobResult("skipped", fingerprint=fp, problem=exc.reason)
    except MemoryError:
        return JobResult("error", fingerprint=fp, problem="out of memory", path=key)
    except Exception as exc:  # a bug or an unforeseen file problem: keep the run going, keep the trace
        if disk_full(exc):  # no fault of the item's: the run stops (vgmed_build.interrupt)
            return JobResult("disk-full", fingerprint=fp, problem=str(exc))
        log.debug("item %s failed:\n%s", key, traceback.format_exc())
        problem = unexpected_problem(exc, step, job)
        return JobResult("error", fingerprint=fp, problem=problem, path=failed_file(exc, job))
    # Every record is checked before it is stored (compiled validator: ~0.2 ms per region).
    for region in (r for img in images for r in img.regions):
        problems = schema_problems("region", region)
        if problems:
            return JobResult(
                "error",
                fingerprint=fp,
                problem=f"region {region['label']!r} does not "
                f"validate against region.schema.json: {'; '.join(problems)}",
                path=key,
            )
    return JobResult("done", fingerprint=fp, images=images, warnings=[w for img in images for w in img.warnings])


def unexpected_problem(exc: Exception, step: str, job: Job) -> str:
    """The error line of a failure nothing foresaw (a bug, or a file problem no check knows yet): the
    stage and step, the exception's type and message, sanitised as library messages are (the item's
    file paths, any absolute path and UIDs replaced: the file is the error's path field, shown by
    pseudonym where output is shared), and what to do."""
    text = safe_message(exc, paths=(Path(job.spec.path), *job.item.files))
    return (f"ingest failed unexpectedly while {step} this item ({text}); a bug or a file problem vgmed "
            "does not check for yet: `vgmed-build -v ingest ...` shows the trace; please report it")


def failed_file(exc: Exception, job: Job) -> str:
    """The file an unexpected error names (an OSError's, relative to the source), else the item's key."""
    name = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    return escaped_name(os.path.relpath(name, job.spec.path)) if isinstance(name, str) else job.item.key


def store_result(catalog: Catalog, spec: SourceSpec, key: str, result: JobResult) -> None:
    """Store one item's outcome (its images are on disk already), then delete the images it lost."""
    if result.status == "error":
        catalog.store_item_error(spec.name, key, result.fingerprint, result.problem, result.path)
        return
    images = [(img.record, img.regions) for img in result.images]
    reason = result.problem if result.status == "skipped" else None
    for path in catalog.store_item(spec.name, key, result.fingerprint, images, skip_reason=reason,
                                   warnings=result.warnings):
        delete_image(catalog.build_dir, path)


def delete_image(build_dir: Path, path: str) -> None:
    """Delete an image ingest wrote and no longer holds, with the Hounsfield units beside a CT slice's."""
    for rel in (path, hu_path(path)):
        (build_dir / rel).unlink(missing_ok=True)


@dataclass
class IngestReport:
    items: int = 0
    done: int = 0
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> items read that kept nothing
    errors: list[ItemProblem] = field(default_factory=list)
    warnings: list[ItemProblem] = field(default_factory=list)  # items ingested all the same (an all-black picture)
    withdrawn: list[tuple[str, str]] = field(default_factory=list)  # (source, item) no longer in its source
    kept_missing: list[tuple[str, str]] = field(default_factory=list)  # the same, kept (--keep-missing)


def _stream_jobs(
    catalog: Catalog, specs: list[SourceSpec], report: IngestReport, keep_missing: bool, with_paths: bool
) -> Iterator[Job]:
    """Each source's items as jobs, one at a time as the adapter lists them (nothing listed is held
    in memory); register the sources; listing problems become errors.

    Each listed key is looked up in the catalog (its stored fingerprint) and marked in the catalog's
    temporary table of listed keys; once a source is listed, the items the catalog holds that it no
    longer lists are withdrawn (see :func:`_withdraw`).
    """
    catalog.begin_listing()
    for spec in specs:
        # PNG temp files left by a killed run (write_atomic never leaves a half PNG under its name).
        for folder in (catalog.images_dir / spec.name, catalog.images_dir / HU_DIR / spec.name):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        # Listing problems (not tied to an item) are forgotten here and found again below if they still exist.
        catalog.register_source(spec.name, spec.kind, json.dumps(asdict(spec), sort_keys=True, default=str))
        listed = spec.path.exists()
        settings = spec_settings(spec)
        stored_listed = 0  # listed items the catalog held before they were listed
        for entry in _entries(spec):
            if isinstance(entry, SourceItem):
                entry = name_problem(entry) or entry
            if isinstance(entry, SourceError):
                listed = listed and not isinstance(entry, ListingFailed)
                error = ItemProblem(spec.name, entry.item or spec.path.name, entry.path, escaped_name(entry.problem))
                report.errors.append(error)
                with catalog.transaction() as tx:
                    tx.record_error(STAGE, error.item, error.problem, source=spec.name, path=error.path)
                key = error.item
            else:
                key = entry.key
            stored, done = catalog.stored_item(spec.name, key)
            stored_listed += stored
            catalog.mark_listed(spec.name, key)
            if isinstance(entry, SourceItem):
                report.items += 1
                yield Job(spec, entry, done, settings)
        if listed:
            _withdraw(catalog, spec, stored_listed, keep_missing, report, with_paths)


class ListingFailed(SourceError):
    """The adapter stopped listing with an exception: what it did not list is not withdrawn."""


def _entries(spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
    """The adapter's listing of ``spec``; an adapter that cannot go on listing gives one last error."""
    try:
        yield from get_adapter(spec.kind).items(spec)
    except SourceError as exc:  # the adapter names the file it could not go on reading (a broken index)
        yield ListingFailed(exc.problem, path=exc.path or spec.path, item=exc.item or None)
    except Exception as exc:
        yield ListingFailed(f"cannot list source ({type(exc).__name__}: {exc})", path=spec.path)


def _withdraw(
    catalog: Catalog, spec: SourceSpec, stored_listed: int, keep: bool, report: IngestReport, with_paths: bool
) -> None:
    """Remove the items the source no longer has (e.g. withdrawn consent) unless ``keep``.

    Their images, regions, drafts and review tasks leave the build, so the next release is without
    them; their review events stay in the catalog as history. When a source lists none of its
    stored items (``stored_listed`` = 0), nothing is removed: an unmounted disk or an emptied folder
    looks exactly like that. The missing keys come from the catalog in batches, never all at once.
    """
    n_missing = catalog.unlisted_count(spec.name)
    if not n_missing:
        return
    if keep:
        log.warning("%s: kept %d item(s) no longer in the source (--keep-missing)", spec.name, n_missing)
        report.kept_missing += [(spec.name, key) for key in catalog.unlisted_keys(spec.name)]
        return
    if not stored_listed:
        error = ItemProblem(
            spec.name,
            spec.path.name,
            spec.path.name,
            f"none of the {n_missing} stored item(s) are in the source any more; nothing "
            "was withdrawn (is it mounted?); to drop them all, ingest into a new build",
        )
        report.errors.append(error)
        with catalog.transaction() as tx:
            tx.record_error(STAGE, error.item, error.problem, source=spec.name, path=error.path)
        return
    for key in catalog.unlisted_keys(spec.name):
        gone = catalog.withdraw_item(spec.name, key)
        for path in gone.image_paths:
            delete_image(catalog.build_dir, path)
        kept = f"; {gone.reviewed_drafts} reviewed draft(s) stay in the review history" if gone.reviewed_drafts else ""
        shown = key if with_paths else item_pseudonym(spec.name, key)
        log.warning(
            "%s: withdrew %s (no longer in the source): %d image(s), %d region(s), %d draft(s), %d review task(s)%s",
            *(spec.name, shown, len(gone.image_paths), gone.regions, gone.drafts, gone.tasks, kept),
        )
        report.withdrawn.append((spec.name, key))


def run_ingest(
    build_dir: str | Path,
    specs: list[SourceSpec],
    workers: int = 1,
    force: bool = False,
    progress: bool | None = None,
    keep_missing: bool = False,
    with_paths: bool = True,
    dask_scheduler: str | None = None,
    dask_batch: int = 0,
) -> IngestReport:
    """Ingest every item of ``specs`` into ``build_dir``; see the module docstring.

    Items render in this process (``workers`` 1), in ``workers`` forked processes, or on the Dask
    cluster whose scheduler is at ``dask_scheduler`` (:mod:`.distributed`), ``dask_batch`` items per
    task (0: chosen by timing); this process alone writes the catalog in every case.

    ``keep_missing``: keep items their source no longer lists (default: withdraw them);
    ``with_paths``: name withdrawn items by path in the log (else by pseudonym).
    """
    report = IngestReport()
    client = None
    if dask_scheduler:  # before anything is written: a cluster that cannot be reached stops the run
        client = connect(dask_scheduler)
        # The cluster's workers run elsewhere: they need paths that do not depend on this working directory.
        build_dir = Path(build_dir).resolve()
        specs = [replace(spec, path=Path(spec.path).resolve()) for spec in specs]
    with open_catalog(build_dir) as catalog, client or nullcontext():
        jobs = _stream_jobs(catalog, specs, report, keep_missing, with_paths)
        bar = tqdm(desc="ingest", unit="item", disable=None if progress is None else not progress)

        def handle(job: Job, result: JobResult | WorkerDied | WorkerLost) -> None:
            if isinstance(result, (WorkerDied, WorkerLost)):
                result = JobResult("error", problem=result.describe(), path=job.item.key)
            if result.status == "disk-full":
                raise OSError(errno.ENOSPC, result.problem)
            if result.status != "unchanged":
                store_result(catalog, job.spec, job.item.key, result)
            if result.status == "error":
                report.errors.append(ItemProblem(job.spec.name, job.item.key, result.path, result.problem))
            elif result.status == "skipped":
                report.skipped[result.problem] += 1
            elif result.status == "done":
                report.done += 1
                report.warnings += [ItemProblem(job.spec.name, job.item.key, job.item.key, w) for w in result.warnings]
            else:
                report.unchanged += 1
            bar.update(1)

        work = partial(run_job, build_dir=catalog.build_dir, force=force)
        if client is not None:
            run_on_dask(jobs, work, client, handle, batch=dask_batch)
        elif workers <= 1:
            for job in jobs:
                handle(job, work(job))
        else:
            run_parallel(jobs, work, workers, handle)
        bar.close()
    return report
