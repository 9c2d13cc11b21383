"""Pull reviews from Label Studio into the catalog as review events.

JSON exports bring every annotation (much faster than paging tasks): sliced by the task ids this
build pushed and fetched in parallel, so a server with several worker processes serialises them on
all its cores; a project holding tasks the catalog does not know is exported whole. Each saved
revision of each annotation becomes one row of ``review_events`` (UNIQUE(annotation_id, revision)),
so pulling again adds only what changed since and never overwrites an earlier event. Reviewers are
stored as pseudonyms; nothing that names a person (e-mail, user name) reaches the catalog.

An annotation that cannot be stored (no or an unknown verdict, a broken box, task data rewritten on the
server since the push) is stored as a problem instead (``review_problems``: task, reviewer, what is
wrong), which ``review status`` lists; the other annotations are stored as usual. A failure of the
server or of the connection stops the pull with one error naming the server and the step; what was
read before it is stored and the next pull takes up from the previous mark.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tqdm import tqdm

from vgmed_build.catalog import Catalog, now_iso
from vgmed_build.resources import schema_errors
from vgmed_build.review import api
from vgmed_build.review.api import LabelStudioError
from vgmed_build.review.client import LabelStudioClient
from vgmed_build.review.convert import is_number, read_annotation
from vgmed_build.review.images import IMAGE_KEY, WINDOW_KEYS
from vgmed_build.review.server import ServerInfo, connect
from vgmed_build.review.state import (
    PROJECTS,
    DraftRow,
    drafts_of,
    last_pull_key,
    problem_line,
    project_state,
    pull_since_key,
)
from vgmed_build.review.tasks import HASH_KEY, content_hash, task_data

log = logging.getLogger(__name__)

# Tasks saved up to this long before a pull started are exported again by the next pull: an
# annotation stamped just before the export but committed after it is never missed (known revisions
# are skipped at no cost).
SINCE_MARGIN = timedelta(minutes=5)


@dataclass
class PullReport:
    new_events: int = 0
    known_events: int = 0  # already in the catalog from an earlier pull
    skipped: int = 0  # annotations cancelled (skipped) in Label Studio: no verdict to keep
    errors: list[str] = field(default_factory=list)  # one line per annotation that could not be stored
    new_problems: int = 0  # of those, how many no earlier pull had found


def reviewer_id(server_identity: str, user_id: int) -> str:
    """A pseudonymous, stable reviewer id: the same person on the same server always maps to it."""
    return "r-" + hashlib.sha256(f"{server_identity}|{user_id}".encode()).hexdigest()[:8]


def _user_id(annotation: dict) -> int | None:
    """The Label Studio user who saved ``annotation`` (``completed_by``: an id or a user object)."""
    user = annotation.get("completed_by")
    user_id = user.get("id") if isinstance(user, dict) else user
    return user_id if isinstance(user_id, int) and not isinstance(user_id, bool) else None


def event_record(
    task: dict, annotation: dict, row: DraftRow, project: str, project_id: int, server_identity: str
) -> dict:
    """One annotation revision as a review event record; ValueError names what is wrong."""
    if not isinstance(annotation.get("id"), int) or isinstance(annotation["id"], bool):
        raise ValueError(f"annotation id {annotation.get('id')!r} is not a number")
    content = read_annotation(annotation.get("result", []), row.width, row.height)
    draft = row.draft
    question = draft["question"] if content.question is None else content.question
    answer = draft["answer"] if content.answer is None else content.answer
    user_id = _user_id(annotation)
    if user_id is None:
        raise ValueError(f"completed_by {annotation.get('completed_by')!r} names no user")
    lead = annotation.get("lead_time")
    if lead is not None and not is_number(lead):
        raise ValueError(f"lead_time {lead!r} is not a number")
    for key in ("created_at", "updated_at"):
        if not isinstance(annotation.get(key), str) or not annotation[key]:
            raise ValueError(f"{key} {annotation.get(key)!r} is not a time")
    return {
        "draft_id": draft["id"],
        "project": project,
        "project_id": project_id,
        "task_id": task["id"],
        "annotation_id": annotation["id"],
        "revision": annotation["updated_at"],
        "reviewer": reviewer_id(server_identity, user_id),
        "verdict": content.verdict,
        "question": question,
        "answer": answer,
        "boxes": content.boxes,
        "comment": content.comment,
        "edited": (question, answer, content.boxes) != (draft["question"], draft["answer"], draft["boxes"]),
        "dropped_boxes": content.dropped_boxes,
        "created_at": annotation["created_at"],
        "updated_at": annotation["updated_at"],
        "lead_time_s": float(lead) if lead is not None else None,
    }


def rewritten(data: dict, row: DraftRow, pushed_hash: str | None) -> str | None:
    """What of the task ``data`` on the server differs from what this build pushed for ``row``, or None.

    ``pushed_hash``: the content hash the catalog recorded for the task (None for a task it never
    recorded). The hash in the data must be that one or the current draft's; when it is the current
    draft's, every field a reviewer sees must be what :func:`task_data` makes of the draft (the note
    is read back from the task, the image URLs are the server's).
    """
    if data.get("draft_id") != row.id:
        return f"task data rewritten on the server: draft_id {data.get('draft_id')!r}, pushed as {row.id!r}"
    note = data.get("facts_note")
    current = content_hash(row, note) if isinstance(note, str) else None
    if data.get(HASH_KEY) not in {pushed_hash, current} - {None}:
        return "task data rewritten on the server: its content hash is not the one this build pushed"
    if data.get(HASH_KEY) != current:
        return None  # the draft changed since this task was pushed (and reviewed): nothing to compare with
    shown = {IMAGE_KEY: data.get(IMAGE_KEY), **{k: data[k] for k in WINDOW_KEYS if data.get(k)}}
    expected = task_data(row, shown, note)
    changed = sorted(k for k, v in expected.items() if data.get(k) != v)
    if changed:
        return f"task data rewritten on the server: {', '.join(changed)} differ from what this build pushed"
    return None


@dataclass
class Collector:
    """Turns one project's exported tasks into new, valid review events; an annotation that cannot be
    stored becomes a problem record (task, reviewer, what is wrong)."""

    drafts: dict[str, DraftRow]
    tasks: dict[int, tuple[str, str]]  # task id -> (draft id, content hash) recorded by push
    stored: set[tuple[int, str]]  # (annotation id, revision) already in the catalog
    project: str
    project_id: int
    server_identity: str
    report: PullReport
    events: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)

    def add(self, task: dict) -> None:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        draft_id, pushed_hash = self.tasks.get(task["id"], (data.get("draft_id"), None))
        row = self.drafts.get(draft_id) if isinstance(draft_id, str) else None
        if row is None:
            wrong = f"draft {draft_id!r} is not an ok draft of this build"
        else:
            wrong = rewritten(data, row, pushed_hash)
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict):
                self._problem(task, {}, draft_id, f"annotation {annotation!r} is not an object")
            elif annotation.get("was_cancelled"):
                self.report.skipped += 1
            elif (annotation.get("id"), annotation.get("updated_at")) in self.stored:
                self.report.known_events += 1  # pulled before: nothing to build or validate
            elif wrong or row is None:
                self._problem(task, annotation, draft_id, wrong)
            else:
                self._add_annotation(task, annotation, row)

    def _problem(self, task: dict, annotation: dict, draft_id: object, problem: str) -> None:
        ann_id, revision, user = annotation.get("id"), annotation.get("updated_at"), _user_id(annotation)
        self.problems.append({
            "project": self.project,
            "task_id": task["id"],
            "annotation_id": ann_id if isinstance(ann_id, int) and not isinstance(ann_id, bool) else 0,
            "revision": revision if isinstance(revision, str) else "",
            "reviewer": reviewer_id(self.server_identity, user) if user is not None else "",
            "draft_id": draft_id if isinstance(draft_id, str) else "",
            "problem": problem,
        })

    def _add_annotation(self, task: dict, annotation: dict, row: DraftRow) -> None:
        try:
            rec = event_record(task, annotation, row, self.project, self.project_id, self.server_identity)
        except ValueError as exc:
            self._problem(task, annotation, row.id, str(exc))
            return
        errors = schema_errors("review", rec)
        if errors:
            self._problem(task, annotation, row.id, "; ".join(errors))
            return
        self.events.append(rec)


def _exports(catalog: Catalog, client: LabelStudioClient, project: str, project_id: int, concurrency: int,
             full: bool) -> tuple[Iterator[tuple[int, list[dict]]], int | None, str]:
    """What to pull from one project: (tasks asked for, exported tasks) batches, their total (None for a
    whole export: only its annotated tasks come), and the mark to store once they are in: the server's
    clock before the export, less a safety margin.

    Nothing here holds a list that grows with the project: the task ids come from the catalog or the
    Data Manager a page at a time, a whole export is parsed as a stream.
    """
    known = catalog.count_review_tasks(project)
    n_tasks, server_now = api.task_count_and_clock(client, project_id)
    mark = (server_now - SINCE_MARGIN).isoformat()
    whole = not known or n_tasks > known
    since = None if full or whole else catalog.get_state(pull_since_key(project))
    if since:
        after = datetime.fromisoformat(since)
        changed = api.count_changed_tasks(client, project_id, after)
        if changed <= known // 2:  # more changed: exporting every recorded task is no dearer
            def pages() -> Iterator[list[int]]:
                return api.changed_task_pages(client, project_id, after, changed)

            # Read the list twice rather than hold it: ~1 ms per task, against ~2 ms to export one.
            whole = any(len(catalog.review_tasks_by_id(project, p)) < len(set(p)) for p in pages())
            if not whole:
                return api.export_annotated(client, project_id, pages(), concurrency), changed, mark
    if whole:
        # Tasks this catalog never recorded (an interrupted push not yet resumed, or added by hand):
        # one whole export sees them all.
        log.info("review pull: %s project %d has tasks this build did not record: whole export", project, project_id)
        return ((len(batch), batch) for batch in api.export_stream(client, project_id)), None, mark
    pages = catalog.review_task_id_pages(project, api.LIST_PAGE)
    return api.export_annotated(client, project_id, pages, concurrency), known, mark


def _named_draft(task: dict) -> object:
    """The draft id a task's data names (anything, when the data were tampered with)."""
    data = task.get("data")
    return data.get("draft_id") if isinstance(data, dict) else None


def _collector(catalog: Catalog, tasks: list[dict], project: str, project_id: int, server_identity: str,
               report: PullReport) -> Collector:
    """A collector that knows what it needs of the catalog for ``tasks`` (one batch of an export): their
    recorded tasks, the drafts they show, the revisions of their annotations stored before."""
    recorded = catalog.review_tasks_by_id(project, [t["id"] for t in tasks])
    draft_ids = [recorded[t["id"]][0] if t["id"] in recorded else _named_draft(t) for t in tasks]
    annotation_ids = [a["id"] for t in tasks for a in t.get("annotations") or []
                      if isinstance(a, dict) and isinstance(a.get("id"), int)]
    return Collector(
        drafts_of(catalog, [d for d in draft_ids if isinstance(d, str)]),
        recorded,
        catalog.review_event_keys_of(project, annotation_ids),
        project,
        project_id,
        server_identity,
        report,
    )


def _store(catalog: Catalog, project: str, collector: Collector) -> None:
    """Store the collected events and problems (one batch of tasks) in one transaction."""
    report = collector.report
    pulled_at = now_iso()
    with catalog.transaction() as tx:
        for rec in collector.events:
            if tx.add_review_event(project, rec, pulled_at):
                report.new_events += 1
            else:
                report.known_events += 1
        for problem in collector.problems:
            report.new_problems += tx.add_review_problem(problem, pulled_at)
    for problem in collector.problems:
        log.warning("review pull: %s", problem_line(problem))
        report.errors.append(problem_line(problem))
    collector.events, collector.problems = [], []


def _mark(catalog: Catalog, project: str, mark: str) -> None:
    """The export finished and all it brought is stored: the next pull starts from ``mark``. Without this
    (a pull that broke off), the next one takes up again from the previous mark."""
    with catalog.transaction() as tx:
        tx.set_state(last_pull_key(project), now_iso())
        tx.set_state(pull_since_key(project), mark)


def _project_exists(client: LabelStudioClient, project_id: int) -> bool:
    """False only when the server says the project is not there (404): a pull that failed for that reason
    gets its own message; any other answer keeps the original error."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        client.projects.get(project_id)
    except ApiError as exc:
        return exc.status_code != 404
    except (httpx.HTTPError, ValueError):  # the server cannot tell us now: the original error stands
        return True
    return True


def pull(
    catalog: Catalog,
    server: ServerInfo,
    progress: bool = True,
    concurrency: int = api.EXPORT_CONCURRENCY,
    full: bool = False,
) -> PullReport:
    """Bring every new annotation revision of the build's review and adjudication projects home.

    ``concurrency``: export requests in flight at once (see ``api.export_annotated``). After the
    first pull only tasks saved since the previous pull are exported; ``full`` exports every task.
    """
    with api.step(server.url, "connecting"):
        client = connect(server)
    report = PullReport()
    states = {name: project_state(catalog, name) for name in PROJECTS}
    if not any(states.values()):
        raise LabelStudioError("nothing pushed yet from this build: run `vgmed-build review push` first")
    for project, state in states.items():
        if state is None:
            continue
        if state["server"] != server.identity:
            raise LabelStudioError(f"this build's {project} project lives on {state['url']}; pass --url {state['url']}")
        collector = Collector({}, {}, set(), project, state["id"], server.identity, report)
        try:
            with api.step(server.url, f"exporting the {project} project ({state['id']}) for review pull"):
                batches, total, mark = _exports(catalog, client, project, state["id"], concurrency, full)
                with tqdm(total=total, desc=f"pull {project}", unit="task", disable=not progress) as bar:
                    # One batch of exported tasks at a time: looked up, collected and stored together.
                    for asked, exported in batches:
                        collector = _collector(catalog, exported, project, state["id"], server.identity, report)
                        for task in exported:
                            collector.add(task)
                        _store(catalog, project, collector)
                        bar.update(asked)
        except BaseException as exc:
            _store(catalog, project, collector)  # what arrived whole is kept; the marks stay
            if isinstance(exc, LabelStudioError) and not _project_exists(client, state["id"]):
                raise LabelStudioError(
                    f"this build's {project} project (id {state['id']}) is gone from {server.url} (deleted?): the "
                    f"{catalog.count_review_events(project)} review event(s) pulled from it are kept in the "
                    "catalog; `vgmed-build review push` makes a new project for the drafts (pulling again cannot "
                    "succeed)"
                ) from None
            raise
        _mark(catalog, project, mark)
    return report
