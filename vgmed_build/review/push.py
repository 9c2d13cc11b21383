"""Push drafts to Label Studio: one task per draft, the draft pre-filled as a prediction.

Idempotent and resumable. ``review_tasks`` records (draft, project) -> task id and the hash of what
was pushed; a push creates tasks only for drafts without a row, and updates a task whose draft
changed only while nobody has annotated it. Tasks go in batches, and each batch's task ids are
written in one transaction right after the server answers. A crash between the two leaves tasks the
catalog does not know; the next push notices that the project holds more tasks than the catalog
and adopts them by the draft id in their data, so nothing is imported twice.

Set ``VGMED_REVIEW_FAIL_AFTER_IMPORTS=N`` to simulate that crash after the N-th import request
(tests use it to prove the resume).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from urllib.parse import quote

from tqdm import tqdm

from vgmed_build.catalog import Catalog, now_iso
from vgmed_build.review import api
from vgmed_build.review.api import LabelStudioError
from vgmed_build.review.client import LabelStudioClient
from vgmed_build.review.images import review_images
from vgmed_build.review.server import ServerInfo, connect
from vgmed_build.review.state import (
    PROJECTS,
    REVIEW,
    DraftRow,
    iter_drafts,
    project_state,
    pull_since_key,
    save_project_state,
)
from vgmed_build.review.tasks import HASH_KEY, content_hash, instructions_html, label_config, task_payload

log = logging.getLogger(__name__)

BATCH_SIZE = 500
FAIL_AFTER_ENV = "VGMED_REVIEW_FAIL_AFTER_IMPORTS"


@dataclass
class PushReport:
    project: str
    project_id: int
    images: str  # "local" or "upload"
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_reviewed: int = 0  # changed drafts whose task already has annotations: left as reviewed
    adopted: int = 0  # tasks found on the server after an interrupted push
    withdrawn: int = 0  # tasks deleted because their source item was withdrawn (see ingest)


# ---------------------------------------------------------------- project


def project_marker(catalog: Catalog, name: str) -> str:
    """The description of the build's project ``name``: how a push finds a project it created but was
    killed before recording (the random build id, never a path)."""
    return f"vgmed build {catalog.build_id()}: {name} project"


def _find_project(client: LabelStudioClient, title: str, marker: str) -> int | None:
    """The oldest project with ``title`` and ``marker`` on the server, or None."""
    found = [p.id for p in client.projects.list(title=title) if p.title == title and p.description == marker]
    return min(found) if found else None


def ensure_project(catalog: Catalog, client: LabelStudioClient, server: ServerInfo, name: str, title: str,
                   reviewers_per_item: int, windows: bool = True) -> int:
    """Create the project on first push; later keep its config (with the CT window views when
    ``windows``) and overlap settings current."""
    from label_studio_sdk.core.api_error import ApiError

    config = label_config(windows)
    settings = {
        "maximum_annotations": reviewers_per_item,
        "overlap_cohort_percentage": 100,
        "expert_instruction": instructions_html(),
        "show_instruction": True,
    }
    state = project_state(catalog, name)
    if state and state["server"] != server.identity:
        raise LabelStudioError(
            f"this build's {name} project lives on another Label Studio "
            f"({state['url']}, project {state['id']}); "
            f"pass --url {state['url']} to keep working there"
        )
    project_id = None
    if state:
        try:
            current = client.projects.get(state["id"])
            project_id = state["id"]
        except ApiError as exc:
            if exc.status_code != 404:
                raise
            log.warning("project %s (%s) is gone from %s; creating a new one", state["id"], name, server.url)
            catalog.forget_review_tasks(name)
    marker = project_marker(catalog, name)
    if project_id is None:
        project_id = _find_project(client, title, marker)
        if project_id is not None:
            log.warning("adopting %s project %s: a push was interrupted after creating it", name, project_id)
            current = client.projects.get(project_id)
    if project_id is None:
        with api.step(server.url, f"creating the {name} project"):
            project_id = client.projects.create(title=title, description=marker, label_config=config, **settings).id
    else:
        changes = {k: v for k, v in settings.items() if getattr(current, k) != v}
        if current.label_config != config:
            changes["label_config"] = config
        if changes:
            client.projects.update(project_id, **changes)
    state = {
        "server": server.identity,
        "url": server.url,
        "id": project_id,
        "reviewers_per_item": reviewers_per_item,
    }
    save_project_state(catalog, name, state)
    return project_id


# ---------------------------------------------------------------- images


def _image_mode(catalog: Catalog, server: ServerInfo, images: str) -> str:
    root = server.document_root
    inside = root is not None and catalog.images_dir.resolve().is_relative_to(root.resolve())
    if images == "auto":
        return "local" if server.is_local and inside else "upload"
    if images == "local" and not inside:
        raise LabelStudioError(
            f"--images local: {catalog.images_dir.resolve()} is not under the server's document root "
            f"({root or 'unknown: pass --document-root'})"
        )
    return images


def _local_resolver(catalog: Catalog, client: LabelStudioClient,
                    server: ServerInfo, project_id: int) -> Callable[[list[DraftRow]], dict]:
    """Serve images from disk: a Local Files storage on the images folder, created without syncing
    (a sync would add one task per file). The resolver maps each row's id to its task data key ->
    image URL (:func:`review_images`)."""
    images = catalog.images_dir.resolve()
    if not any(Path(s.path).resolve() == images for s in client.import_storage.local.list(project=project_id)):
        client.import_storage.local.create(
            project=project_id, path=str(images), use_blob_urls=True, title="vgmed images"
        )
    prefix = catalog.build_dir.resolve().relative_to(server.document_root.resolve())

    def resolve(rows: list[DraftRow]) -> dict:
        return {
            r.id: {k: "/data/local-files/?d=" + quote((prefix / path).as_posix())
                   for k, path in review_images(catalog.build_dir, r).items()}
            for r in rows
        }

    return resolve


def _upload_resolver(catalog: Catalog, client: LabelStudioClient,
                     server: ServerInfo, project_id: int) -> Callable[[list[DraftRow]], dict]:
    """Upload each image once per project; remember its URL in the catalog so a rerun reuses it. No CT
    window views (see tasks.label_config)."""
    scope = hashlib.sha256(f"{server.identity}|{project_id}".encode()).hexdigest()[:12]

    def resolve(rows: list[DraftRow]) -> dict:
        shown = {r.id: review_images(catalog.build_dir, r, windows=False) for r in rows}
        paths = sorted({p for images in shown.values() for p in images.values()})
        known = {p: catalog.get_state(f"review.upload.{scope}.{p}") for p in paths}
        missing = [p for p, url in known.items() if url is None]
        if missing:
            urls = api.upload_images(client, project_id, [catalog.build_dir / p for p in missing])
            with catalog.transaction() as tx:
                for p, url in zip(missing, urls, strict=True):
                    tx.set_state(f"review.upload.{scope}.{p}", url)
                    known[p] = url
        return {i: {k: known[path] for k, path in images.items()} for i, images in shown.items()}

    return resolve


# ---------------------------------------------------------------- push


def _adopt_orphans(catalog: Catalog, client: LabelStudioClient, name: str, project_id: int) -> int:
    """Record tasks that reached the server but not the catalog (interrupted push); drop their twins.

    The project's tasks come as a stream (:func:`api.export_stream`), a batch at a time by task id, each
    batch looked up in the catalog by its draft ids and recorded in one transaction, so a later task of
    the same draft (a twin a retried request made) finds the first one recorded. A twin is deleted only
    while nobody annotated it.
    """
    adopted = 0
    for batch in api.export_stream(client, project_id, all_tasks=True):
        named = sorted((t for t in batch if (t.get("data") or {}).get("draft_id")), key=lambda t: t["id"])
        draft_ids = sorted({t["data"]["draft_id"] for t in named})
        known = catalog.review_tasks_of(name, draft_ids)
        ours = catalog.existing_draft_ids(draft_ids)
        with catalog.transaction() as tx:
            for task in named:
                draft_id = task["data"]["draft_id"]
                if draft_id in known:
                    if known[draft_id][0] != task["id"] and not task.get("annotations"):
                        client.tasks.delete(str(task["id"]))
                elif draft_id in ours:
                    # The hash pushed with the task: the next step refreshes the task if the draft changed since.
                    pushed_hash = task["data"].get(HASH_KEY, "")
                    tx.add_review_tasks([(draft_id, name, project_id, task["id"], pushed_hash, now_iso())])
                    # It may hold annotations older than the last pull's mark: the next pull looks at every task.
                    tx.delete_state(pull_since_key(name))
                    known[draft_id] = (task["id"], pushed_hash)
                    adopted += 1
    if adopted:
        log.info("adopted %d task(s) left on the server by an interrupted push", adopted)
    return adopted


def delete_withdrawn_tasks(catalog: Catalog, client: LabelStudioClient) -> int:
    """Delete from the server the tasks of items that ingest withdrew; return how many were deleted."""
    from label_studio_sdk.core.api_error import ApiError

    done: list[tuple[int, int]] = []
    for project_id, task_id in catalog.withdrawn_tasks():
        try:
            client.tasks.delete(task_id)
        except ApiError as exc:
            if exc.status_code != 404:  # already gone is what we want
                raise
        done.append((project_id, task_id))
    if done:
        catalog.forget_withdrawn_tasks(done)
        log.info("deleted %d task(s) of withdrawn source items from the server", len(done))
    return len(done)


def _update_task(client: LabelStudioClient, task_id: int, payload: dict) -> bool:
    """Replace an unannotated task's data and prediction; False when a reviewer got there first."""
    task = client.tasks.get(str(task_id))
    if (task.total_annotations or 0) + (task.cancelled_annotations or 0) > 0:
        return False
    client.tasks.update(str(task_id), data=payload["data"])
    for pred in client.predictions.list(task=task_id):
        client.predictions.delete(pred.id)
    pred = payload["predictions"][0]
    client.predictions.create(task=task_id, result=pred["result"], model_version=pred["model_version"])
    return True


def push(
    catalog: Catalog,
    server: ServerInfo,
    *,
    project: str = REVIEW,
    title: str | None = None,
    reviewers_per_item: int = 1,
    images: str = "auto",
    draft_ids: Iterable[str] | None = None,
    notes: dict[str, str] | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    with_rejected: bool = False,
) -> PushReport:
    """Push the build's ok drafts (or only ``draft_ids``) to the project ``project`` on ``server``.

    ``notes`` adds a per-draft line to the task's context (the adjudication project shows the
    reviewers' verdicts there). ``images`` is "auto", "local" or "upload". ``with_rejected``: lint-rejected
    drafts among ``draft_ids`` are pushed too (a triage's lint audit, see review.triage).
    """
    if project not in PROJECTS:
        raise ValueError(f"unknown review project {project!r}; expected one of {PROJECTS}")
    if reviewers_per_item < 1:
        raise ValueError("reviewers_per_item must be at least 1")
    def step(what: str):
        return api.step(server.url, what)

    with step("connecting"):
        client = connect(server)
    notes = notes or {}
    title = title or f"vgmed {project} ({catalog.build_dir.resolve().name})"
    mode = _image_mode(catalog, server, images)
    with step(f"setting up the {project} project"):
        project_id = ensure_project(catalog, client, server, project, title, reviewers_per_item, mode == "local")
    with step(f"setting up the image {'storage' if mode == 'local' else 'uploads'} of project {project_id}"):
        resolver = (_local_resolver if mode == "local" else _upload_resolver)(catalog, client, server, project_id)
    report = PushReport(project=project, project_id=project_id, images=mode)
    with step("deleting the tasks of withdrawn source items"):
        report.withdrawn = delete_withdrawn_tasks(catalog, client)

    with step(f"recovering the tasks of an interrupted push in project {project_id}"):
        if client.projects.get(project_id).task_number > catalog.count_review_tasks(project):
            report.adopted = _adopt_orphans(catalog, client, project, project_id)

    wanted = set(draft_ids) if draft_ids is not None else None
    total = catalog.count_ok_drafts(with_rejected)
    total = total if wanted is None else min(total, len(wanted))
    fail_after = int(os.environ.get(FAIL_AFTER_ENV) or 0)

    def pages() -> Iterator[tuple[list[DraftRow], dict[str, tuple[int, str]]]]:
        """The drafts ``batch_size`` at a time by id, each batch with its recorded tasks (constant memory)."""
        rows = iter_drafts(catalog, wanted, with_rejected, chunk=batch_size)
        while page := list(islice(rows, batch_size)):
            yield page, catalog.review_tasks_of(project, [r.id for r in page])

    def import_batch(n: int, batch: list[DraftRow]) -> None:
        with step(f"uploading the images of import request {n}"):
            urls = resolver(batch)
        payload = [task_payload(r, urls[r.id], notes.get(r.id, "")) for r in batch]
        with step(f"importing tasks into project {project_id} (request {n}, {len(batch)} tasks)"):
            answer = client.projects.import_tasks(id=project_id, request=payload, return_task_ids=True)
            task_ids = list(answer.task_ids or [])
            if len(task_ids) != len(batch):
                raise api.ServerFailure(f"sent {len(batch)} tasks, got {len(task_ids)} task ids back")
        if fail_after and n >= fail_after:
            raise RuntimeError(f"{FAIL_AFTER_ENV}={fail_after}: simulated crash after import request {n}")
        pushed_at = now_iso()
        with catalog.transaction() as tx:
            tx.add_review_tasks([
                (r.id, project, project_id, t, content_hash(r, notes.get(r.id, "")), pushed_at)
                for r, t in zip(batch, task_ids, strict=True)
            ])
        report.created += len(batch)

    # The bar counts the drafts checked, its total a COUNT (with ``draft_ids``, at most as many as those).
    with tqdm(total=total, desc=f"push {project}", unit="draft", disable=not progress) as bar:
        # First the new drafts, imported ``batch_size`` per request, in id order.
        new: list[DraftRow] = []
        requests = changed = 0
        for page, known in pages():
            for row in page:
                if row.id not in known:
                    new.append(row)
                elif known[row.id][1] == content_hash(row, notes.get(row.id, "")):
                    report.unchanged += 1
                    bar.update(1)
                else:
                    changed += 1
            while len(new) >= batch_size:
                requests += 1
                batch, new = new[:batch_size], new[batch_size:]
                import_batch(requests, batch)
                bar.update(len(batch))
        if new:
            import_batch(requests + 1, new)
            bar.update(len(new))
        # Then the changed ones, one task at a time (the new ones now hold their current hash).
        for page, known in pages() if changed else ():
            for row in page:
                note, (task_id, pushed_hash) = notes.get(row.id, ""), known[row.id]
                if pushed_hash == content_hash(row, note):
                    continue
                with step(f"updating task {task_id} of project {project_id}"):
                    updated = _update_task(client, task_id, task_payload(row, resolver([row])[row.id], note))
                if updated:
                    catalog.update_review_task(row.id, project, content_hash(row, note))
                    report.updated += 1
                else:
                    report.kept_reviewed += 1
                bar.update(1)
    return report
