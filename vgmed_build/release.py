"""`vgmed-build release`: turn accepted drafts into a validated, reproducible VGMED release.

Record building is pure (a draft, its region and its review decision in, one release record out);
the I/O edge writes everything into a temporary directory next to the target, validates it with the
same checks as `vgmed-build validate`, and only then swaps it into place, so a failed run never
destroys an existing release. Output is a function of the catalog and the options only: stable
ordering, ids derived from hashes, and no timestamp except the manifest's ``created``.

Position questions go into ``VGMED_attribute.jsonl`` with ``q_type: "position"``: the published set
has exactly two files (one per config), and a position question is an attribute question whose
answer comes from geometry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Container, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vgmed_build import __version__
from vgmed_build.card import render_card
from vgmed_build.catalog import Catalog, open_catalog
from vgmed_build.catalog.scratch import SeenStore, sorted_unique
from vgmed_build.errors import VgmedError
from vgmed_build.identifiers import Forbidden, load_forbid_file
from vgmed_build.lock import Held, hold, out_lock_path
from vgmed_build.pngmeta import PNGError, image_size, strip_metadata
from vgmed_build.release_counts import RecordCounts
from vgmed_build.release_format import (
    CARD_FILE,
    CONFIGS,
    CONVENTIONS,
    MANIFEST_FILE,
    MASK_FIELD,
    RELEASE_FORMAT,
    RELEASE_IMAGES,
    RELEASE_SCHEMAS,
    check_boxes,
    encode_boxes,
    manifest_configs,
    record_file,
    sha256_file,
)
from vgmed_build.release_manifest import files_in_order, read_manifest, walk, write_manifest
from vgmed_build.release_quality import release_quality
from vgmed_build.release_text import text_problem
from vgmed_build.resources import resource_dir
from vgmed_build.review.decision import Decision, check_policy, spilled_decisions
from vgmed_build.review.triage import sampled_release
from vgmed_build.validate import validate_release

log = logging.getLogger(__name__)

STAGE = "release"
SAMPLED = "sampled"  # --policy: majority, plus judge-passed unreviewed drafts when the audit supports the target

class ReleaseError(VgmedError, RuntimeError):
    """The release could not be built; any existing release at the target is left untouched."""


class ItemError(VgmedError, ValueError):
    """One draft cannot go into the release (the message names the draft and the problem)."""


@dataclass(frozen=True)
class ReleaseOptions:
    name: str = "VGMED"
    version: str = "0.1.0"
    created: str | None = None  # ISO-8601; None = now (or SOURCE_DATE_EPOCH when set)
    policy: str = "majority"
    adjudicator: str | None = None
    include_unreviewed: bool = False
    bbox_convention: str = "exclusive"  # key of CONVENTIONS
    forbid: tuple[Forbidden, ...] = ()
    judged: Container[str] = frozenset()  # --policy sampled: judge-passed drafts released without review
    sampled: dict | None = None  # --policy sampled: the audit's estimate (review.triage.audit_estimate)


@dataclass
class ReleaseReport:
    out_dir: Path
    counts: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # one message per draft left out because of an error


# ---------------------------------------------------------------- pure record building


def review_facts(decision: Decision | None, include_unreviewed: bool, judged: bool = False) -> dict | None:
    """The review block of a record, or None when the draft stays out of the release.

    Accepted drafts always go in with their reviewed text and boxes; rejected and unusable ones never
    do; the rest (no events yet, pending, disputed) only in previews, with their drafted text; a
    ``judged`` draft (``--policy sampled``: the judge passed it, nobody reviewed it) as ``judged``.
    """
    if decision is not None and decision.status == "accepted":
        status = "accepted"
    elif judged and decision is None:
        status = "judged"
    elif include_unreviewed and (decision is None or decision.status not in ("rejected", "unusable")):
        status = "unreviewed" if decision is None else decision.status
    else:
        return None
    return {
        "status": status,
        "n_reviewers": int(decision.n_reviewers) if decision is not None else 0,
        "agreement": float(decision.agreement) if decision is not None else 0.0,
        "edited": bool(decision.edited) if status == "accepted" else False,
    }


def build_record(
    draft: dict,
    region: dict,
    decision: Decision | None,
    review: dict,
    convention: str,
    forbid: Sequence[Forbidden] = (),
) -> dict:
    """One release record (field order fixed, every field one JSON type) or :class:`ItemError`.

    The reviewed text passes :func:`text_problem` (a reviewer's edit never went through lint).
    """
    accepted = review["status"] == "accepted"
    absent = bool(draft.get("absent"))  # about a structure not in the image: no boxes, no side, no area
    question = (decision.question if accepted else draft["question"]).strip()
    answer = (decision.answer if accepted else draft["answer"]).strip()
    boxes = [list(b) for b in (decision.boxes if accepted else draft["boxes"])]
    width, height = int(region["width"]), int(region["height"])
    if absent and boxes:
        raise ItemError(f"draft {draft['id']}: review drew boxes on a question about an absent structure")
    if not question or not answer:
        raise ItemError(f"draft {draft['id']}: empty question or answer after review")
    problem = text_problem(question, answer, draft, forbid)
    if problem:
        by = "the reviewed text" if review["edited"] else "the text"
        raise ItemError(f"draft {draft['id']}: {by} cannot be released: {problem}")
    problem = None if absent else check_boxes(boxes, width, height)
    if problem:
        raise ItemError(f"draft {draft['id']}: {problem}")
    source = region.get("source", {})
    record = {
        "id": draft["id"],
        "image": f"{RELEASE_IMAGES}/{region['image_id']}.png",
        "question": question,
        "answer": answer,
        "bbox": encode_boxes(boxes, convention),
        "bbox_convention": CONVENTIONS[convention],
        "q_type": draft["q_type"],
        "absent": absent,
        "modality": region["modality"],
        "body_part": region.get("body_part") or "",
        "label": draft["label"] if absent else region["label"],
        "side": "unknown" if absent else region.get("side") or "unknown",
        "plane": region.get("plane") or "2d",
        "area_ratio": 0.0 if absent else float(region["area_ratio"]),
        "width": width,
        "height": height,
        "source": {
            "dataset": source.get("dataset") or source.get("name") or "unknown",
            "licence": source.get("licence") or "unknown",
        },
        "review": review,
    }
    # The mask goes with the boxes it was measured with: not for an absent structure, not when review moved
    # a box (the mask would no longer lie inside it), not from a build ingested before masks were kept.
    if region.get(MASK_FIELD) and not absent and boxes == [list(b) for b in region["boxes"]]:
        record[MASK_FIELD] = region[MASK_FIELD]
    return record


def resolve_created(created: str | None) -> str:
    """Normalise ``--created`` (or SOURCE_DATE_EPOCH, or now) to UTC ISO-8601 seconds."""
    if created is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    else:
        try:
            moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ReleaseError(f"--created {created!r}: not an ISO-8601 date/time ({exc})") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- I/O edge


def build_release(
    catalog: Catalog,
    out_dir: str | Path,
    decisions: Mapping[str, Decision],
    options: ReleaseOptions = ReleaseOptions(),
    *,
    wait: bool = False,
) -> ReleaseReport:
    """Write the release for ``decisions`` (draft id -> Decision) to ``out_dir`` atomically.

    Holds the lock of ``out_dir`` (LockBusy when another release to it runs, unless ``wait``).
    """
    if options.bbox_convention not in CONVENTIONS:
        raise ReleaseError(f"unknown bbox convention {options.bbox_convention!r}")
    try:
        if options.policy != SAMPLED:
            check_policy(options.policy, options.adjudicator)
    except ValueError as exc:
        raise ReleaseError(str(exc)) from exc
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with hold(out_lock_path(out_dir), f"`vgmed-build release` to {out_dir}", wait) as lock:
        _recover_interrupted(out_dir, lock)
        _check_target(out_dir)
        created = resolve_created(options.created)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        lock.claim(tmp.name)
        try:
            tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would keep the release from its readers
            counts, skipped = _write_records_and_images(catalog, tmp, decisions, options)
            if counts.records == 0:
                raise ReleaseError(
                    "no drafts are accepted under the review policy "
                    f"'{options.policy}' (pull reviews first, or use --include-unreviewed for a preview)"
                )
            quality = release_quality(catalog, decisions, counts, options.sampled)
            manifest_counts = _write_text_files(tmp, counts, created, options, quality)
            report = validate_release(tmp, forbid=list(options.forbid))
            if report.problems:
                shown = "\n".join(p.format() for p in report.problems[:50])
                raise ReleaseError(f"the new release failed validation; nothing was replaced:\n{shown}")
            _swap_into_place(tmp, out_dir, lock)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.filename is None:  # a failed write (a full disk) names no file
                raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
            raise
    return ReleaseReport(out_dir=out_dir, counts=manifest_counts, skipped=skipped)


def release_build(
    build: str | Path,
    *,
    out: str | Path | None = None,
    name: str = "VGMED",
    version: str = "0.1.0",
    created: str | None = None,
    policy: str = "majority",
    adjudicator: str | None = None,
    include_unreviewed: bool = False,
    bbox_convention: str = "exclusive",
    forbid_file: str | Path | None = None,
    wait: bool = False,
    target_error_rate: float | None = None,
) -> ReleaseReport:
    """Write the release of ``build`` to ``out`` (default ``build/release``): `vgmed-build release`, and
    ``vgmed_build.api.release`` for scripts.

    Only drafts accepted under ``policy`` go in (``include_unreviewed``: a preview that also holds the
    drafts review has not decided; ``policy="sampled"``: also the judge-passed unreviewed drafts, when the
    triage audit supports ``target_error_rate``, see docs/review.md). Built next to ``out``, validated,
    then swapped in: on any error an existing release is unchanged. ``report.skipped`` names the accepted
    drafts left out because of an error. Raises ReleaseError (nothing to release, failed validation, a
    failed write naming the file), CatalogError, ForbidFileError, ValueError (bad policy), LockBusy
    (another release to ``out``)."""
    forbid = tuple(load_forbid_file(forbid_file)) if forbid_file else ()
    options = ReleaseOptions(
        name=name, version=version, created=created, policy=policy, adjudicator=adjudicator,
        include_unreviewed=include_unreviewed, bbox_convention=bbox_convention, forbid=forbid,
    )
    target = Path(out) if out is not None else Path(build) / "release"
    with open_catalog(build, create=False) as catalog, ExitStack() as scratch:
        try:
            # The decisions and the judge-passed drafts wait in scratch stores: looked up draft by draft.
            decisions = scratch.enter_context(spilled_decisions(
                catalog, policy="majority" if policy == SAMPLED else policy, adjudicator=adjudicator))
            if policy == SAMPLED:
                try:
                    judged, estimate = sampled_release(catalog, decisions, target_error_rate)
                except ValueError as exc:
                    raise ReleaseError(f"{exc}; nothing was changed") from exc
                options = replace(options, judged=scratch.enter_context(judged), sampled=estimate)
            return build_release(catalog, target, decisions, options, wait=wait)
        except OSError as exc:  # a full disk, a read-only folder: the old release is untouched
            raise ReleaseError(
                f"cannot write {exc.filename or target}: {exc.strerror or exc}; an existing release is unchanged"
            ) from exc


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _recover_interrupted(out_dir: Path, lock: Held) -> None:
    """Undo what a killed run left next to the target: restore a release moved aside, drop temp dirs.

    Only names that run claimed in the lock file (created by it, see :meth:`Held.claim`) are touched:
    a user's ``.NAME.tmp-backup`` or ``.NAME.old-2024`` is never deleted, renamed or taken over. A
    claimed folder moved aside is restored or deleted only when it is provably a release of ours
    (see :func:`not_ours`); anything else is left where it is, with a warning.
    """
    for name in lock.left_by_killed:
        path = out_dir.parent / name
        if "/" in name or not name.startswith(f".{out_dir.name}.") or not path.is_dir() or path.is_symlink():
            continue
        if name.startswith(f".{out_dir.name}.tmp-"):
            shutil.rmtree(path, ignore_errors=True)
            continue
        reason = not_ours(path)
        if reason:
            log.warning("leaving %s in place: %s", path, reason)
        elif not out_dir.exists():
            log.warning("restoring %s from %s (an earlier release run was interrupted)", out_dir, name)
            os.rename(path, out_dir)
        else:
            shutil.rmtree(path)


def not_ours(directory: Path) -> str | None:
    """Why ``directory`` may not be replaced by a release, or None when it is provably one of ours.

    Provably ours: its manifest says ``"format": "vgmed-release"`` and every file and folder in it
    is the manifest itself, a file the manifest lists, or a folder above one. A user's folder that
    merely holds some ``manifest.json`` fails the first test; a release the user added files to fails
    the second, so replacing a release never deletes a file the manifest does not list. The listed
    paths wait in a scratch file, not in memory (a release may list millions).
    """
    if not directory.is_dir():
        return "exists and is not a directory"
    try:
        manifest = read_manifest(directory / MANIFEST_FILE)
    except FileNotFoundError:
        return f"is not a vgmed release (no {MANIFEST_FILE})"
    except (OSError, ValueError) as exc:  # ValueError: json.JSONDecodeError, UnicodeDecodeError
        return f"is not a vgmed release ({MANIFEST_FILE} cannot be read: {exc})"
    if not isinstance(manifest.head, dict) or manifest.head.get("format") != RELEASE_FORMAT:
        return f'is not a vgmed release ({MANIFEST_FILE} has no "format": "{RELEASE_FORMAT}")'
    if not isinstance(manifest.head.get("files"), dict):
        return f"is not a vgmed release ({MANIFEST_FILE} has no file list)"
    with SeenStore() as listed:
        try:
            listed.add_listed(manifest.files())
        except ValueError as exc:
            return f"is not a vgmed release ({MANIFEST_FILE} cannot be read: {exc})"
        foreign = sorted_unique(rel for rel, _ in walk(directory)
                                if rel != MANIFEST_FILE and not listed.is_listed(rel) and not listed.lists_under(rel))
        shown: list[str] = []
        count = 0
        for rel in foreign:
            count += 1
            if len(shown) < 5:
                shown.append(repr(rel))
    if count:
        listing = ", ".join(shown[:5]) + (", ..." if count > 5 else "")
        return f"is a vgmed release but holds {count} path(s) its manifest does not list ({listing})"
    return None


def _check_target(out_dir: Path) -> None:
    """Refuse to replace anything but an empty folder or a provable release (it could be the user's)."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    reason = not_ours(out_dir)
    if reason:
        raise ReleaseError(f"{out_dir}: {reason}; nothing was changed; choose another --out or move it away")


def _write_records_and_images(
    catalog: Catalog, tmp: Path, decisions: Mapping[str, Decision], options: ReleaseOptions
) -> tuple[RecordCounts, list[str]]:
    """Build each record, write it to its JSONL file and copy its image as it goes (drafts come in id
    order, so each file is in id order); only the counts are kept, so memory does not grow with the
    release. The images folder itself says which images are copied already."""
    counts = RecordCounts()
    skipped: list[str] = []
    (tmp / RELEASE_IMAGES).mkdir()
    catalog.clear_stage_errors(STAGE)
    with ExitStack() as files:
        out = {name: files.enter_context(open(tmp / name, "w", encoding="utf-8")) for name in CONFIGS.values()}
        for draft, region, image_sha in tqdm(catalog.ok_drafts(), desc="release", unit="draft", disable=None):
            decision = decisions.get(draft["id"])
            review = review_facts(decision, options.include_unreviewed, draft["id"] in options.judged)
            if review is None:
                continue
            try:
                if region is None:
                    raise ItemError(f"draft {draft['id']}: region {draft['region_id']} is not in the catalog")
                target = record_file(draft["q_type"], region["modality"])
                if target is None:
                    raise ItemError(f"draft {draft['id']}: unknown question type {draft['q_type']!r}")
                record = build_record(draft, region, decision, review, options.bbox_convention, options.forbid)
                dest = tmp / record["image"]
                problem = None if dest.exists() else _copy_image(catalog.build_dir, region, dest, image_sha)
                if problem:
                    raise ItemError(f"draft {draft['id']}: {problem}")
            except ItemError as exc:
                skipped.append(str(exc))
                log.warning("%s", exc)
                with catalog.transaction() as tx:
                    tx.record_error(STAGE, draft["id"], str(exc))
                continue
            if target not in out:
                out[target] = files.enter_context(open(tmp / target, "w", encoding="utf-8"))
            out[target].write(json.dumps(record, ensure_ascii=False) + "\n")
            counts.add(target, record)
    return counts, skipped


def _copy_image(build_dir: Path, region: dict, dest: Path, sha256: str | None) -> str | None:
    """Copy a region's image without metadata; return why it cannot be used, or None.

    ``sha256``: what ingest wrote. A build image replaced since (by hand, another tool) would be
    released under boxes measured on the old one, so any other content leaves its drafts out.
    """
    src = (build_dir / region["image"]).resolve()
    if not src.is_relative_to(build_dir.resolve()):
        return f"image path {region['image']!r} leaves the build directory"
    try:
        raw = src.read_bytes()
        if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
            return (
                f"image {region['image']}: changed since ingest (its SHA-256 is not the one the catalog holds), "
                "so its boxes may not fit it; re-ingest its source item"
            )
        data = strip_metadata(raw)
        size = image_size(data)
    except (OSError, PNGError) as exc:
        return f"image {region['image']}: cannot be used ({exc})"
    if size != (int(region["width"]), int(region["height"])):
        expected = f"{region['width']}x{region['height']}"
        return f"image {region['image']}: is {size[0]}x{size[1]}, the region says {expected}"
    dest.write_bytes(data)
    return None


def _write_text_files(
    tmp: Path, counts: RecordCounts, created: str, options: ReleaseOptions, quality: dict
) -> dict[str, Any]:
    """The schemas, card and manifest, once the records are written; returns the manifest's counts."""
    configs = manifest_configs(counts.by_file)
    images = sum(1 for entry in os.scandir(tmp / RELEASE_IMAGES) if entry.is_file())
    (tmp / "schemas").mkdir()
    for schema in RELEASE_SCHEMAS:
        shutil.copyfile(resource_dir("schemas") / f"{schema}.schema.json", tmp / "schemas" / f"{schema}.schema.json")
    manifest: dict[str, Any] = {
        "format": RELEASE_FORMAT,
        "format_version": 1,
        "name": options.name,
        "version": options.version,
        "created": created,
        "preview": options.include_unreviewed,
        "tool": {"name": "vgmed", "version": __version__},
        "review_policy": {
            "policy": options.policy,
            "adjudicator": options.adjudicator if options.policy == "adjudicator" else None,
            "include_unreviewed": options.include_unreviewed,
        },
        "bbox_convention": CONVENTIONS[options.bbox_convention],
        "configs": configs,
        "counts": counts.manifest(images, list(configs.values())),
        "quality": quality,
    }
    (tmp / CARD_FILE).write_text(render_card(manifest, sorted(counts.licences)), encoding="utf-8")
    write_manifest(tmp / MANIFEST_FILE, manifest, _file_entries(tmp))
    return manifest["counts"]


def _file_entries(tmp: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The manifest's entry of every file of the release in path order, one at a time (the manifest
    itself, being written while they are listed, is no entry)."""
    for rel in files_in_order(tmp):
        if rel != MANIFEST_FILE:
            yield rel, {"kind": _file_kind(rel), "bytes": (tmp / rel).stat().st_size, "sha256": sha256_file(tmp / rel)}


def _file_kind(rel: str) -> str:
    if rel.endswith(".jsonl"):
        return "records"
    if rel.startswith(f"{RELEASE_IMAGES}/"):
        return "image"
    if rel.startswith("schemas/"):
        return "schema"
    return "card"


def _swap_into_place(tmp: Path, out_dir: Path, lock: Held) -> None:
    """Rename the finished release over the target; restore the old one if the rename fails."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    lock.claim(old.name)
    old.rmdir()
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- command line
