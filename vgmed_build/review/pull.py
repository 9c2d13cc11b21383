"""Pull reviews from Label Studio into the catalog as review events.

JSON exports bring every annotation (much faster than paging tasks): sliced by the task ids this
build pushed and fetched in parallel, so a server with several worker processes serialises them on
all its cores; a project holding tasks the catalog does not know is exported whole. Each saved
revision of each annotation becomes one row of ``review_events`` (UNIQUE(annotation_id, revision)),
so pulling again adds only what changed since and never overwrites an earlier event. Reviewers are
stored as pseudonyms; nothing that names a person (e-mail, user name) reaches the catalog.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tqdm import tqdm

from vgmed_build.catalog import Catalog, now_iso
from vgmed_build.resources import schema_errors
from vgmed_build.review import api
from vgmed_build.review.api import LabelStudioError
from vgmed_build.review.convert import VERDICTS, read_annotation
from vgmed_build.review.server import ServerInfo, connect
from vgmed_build.review.state import PROJECTS, DraftRow, last_pull_key, load_drafts, project_state, pull_since_key

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
    errors: list[str] = field(default_factory=list)


def reviewer_id(server_identity: str, user_id: int) -> str:
    """A pseudonymous, stable reviewer id: the same person on the same server always maps to it."""
    return "r-" + hashlib.sha256(f"{server_identity}|{user_id}".encode()).hexdigest()[:8]


def event_record(
    task: dict, annotation: dict, row: DraftRow, project: str, project_id: int, server_identity: str
) -> dict:
    """One annotation revision as a review event record; ValueError names what is wrong."""
    content = read_annotation(annotation.get("result") or [], row.width, row.height)
    if content.verdict not in VERDICTS:
        raise ValueError(f"annotation {annotation['id']} has no verdict (got {content.verdict!r})")
    draft = row.draft
    question = draft["question"] if content.question is None else content.question
    answer = draft["answer"] if content.answer is None else content.answer
    user = annotation.get("completed_by")
    user_id = user.get("id") if isinstance(user, dict) else user
    if user_id is None:
        raise ValueError(f"annotation {annotation['id']} has no completed_by user")
    lead = annotation.get("lead_time")
    return {
        "draft_id": draft["id"],
        "project": project,
        "project_id": project_id,
        "task_id": task["id"],
        "annotation_id": annotation["id"],
        "revision": annotation["updated_at"],
        "reviewer": reviewer_id(server_identity, int(user_id)),
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


@dataclass
class _Collector:
    """Turns one project's exported tasks into new, valid review events; problems are kept per item."""

    drafts: dict[str, DraftRow]
    stored: set[tuple[int, str]]  # (annotation id, revision) already in the catalog
    project: str
    project_id: int
    server_identity: str
    report: PullReport
    events: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, task: dict) -> None:
        draft_id = (task.get("data") or {}).get("draft_id")
        row = self.drafts.get(draft_id)
        if row is None:
            self.problems.append((f"task {task['id']}", f"draft {draft_id!r} is not an ok draft of this build"))
            return
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                self.report.skipped += 1
            elif (annotation["id"], annotation["updated_at"]) in self.stored:
                self.report.known_events += 1  # pulled before: nothing to build or validate
            else:
                self._add_annotation(task, annotation, row)

    def _add_annotation(self, task: dict, annotation: dict, row: DraftRow) -> None:
        try:
            rec = event_record(task, annotation, row, self.project, self.project_id, self.server_identity)
        except (ValueError, KeyError, TypeError) as exc:
            self.problems.append((f"draft {row.id}", f"task {task['id']}: {exc}"))
            return
        errors = schema_errors("review", rec)
        if errors:
            self.problems.append((f"draft {row.id}", f"annotation {annotation['id']}: " + "; ".join(errors)))
            return
        self.events.append(rec)


def _exports(catalog: Catalog, client, project: str, project_id: int, concurrency: int, full: bool):
    """What to pull from one project: (tasks asked for, exported tasks) batches, their total, and the
    mark to store once they are in: the server's clock before the export, less a safety margin."""
    known = catalog.review_task_ids(project)
    n_tasks, server_now = api.task_count_and_clock(client, project_id)
    mark = (server_now - SINCE_MARGIN).isoformat()
    ids: list[int] | None = known if known and n_tasks <= len(known) else None
    since = None if full else catalog.get_state(pull_since_key(project))
    if ids and since:
        changed = api.changed_task_ids(client, project_id, datetime.fromisoformat(since), limit=len(known) // 2)
        if changed is not None:
            ids = sorted(changed) if set(changed) <= set(known) else None
    if ids is None:
        # Tasks this catalog never recorded (an interrupted push not yet resumed, or added by hand):
        # one whole export sees them all.
        log.info("review pull: %s project %d has tasks this build did not record: whole export", project, project_id)
        whole = api.export_tasks(client, project_id)
        return iter([(len(whole), whole)]), len(whole), mark
    return api.export_annotated(client, project_id, ids, concurrency), len(ids), mark


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
    client = connect(server)
    drafts = {r.id: r for r in load_drafts(catalog)}
    report = PullReport()
    states = {name: project_state(catalog, name) for name in PROJECTS}
    if not any(states.values()):
        raise LabelStudioError("nothing pushed yet from this build: run `vgmed-build review push` first")
    for project, state in states.items():
        if state is None:
            continue
        if state["server"] != server.identity:
            raise LabelStudioError(f"this build's {project} project lives on {state['url']}; pass --url {state['url']}")
        stored = catalog.review_event_keys(project)
        batches, total, mark = _exports(catalog, client, project, state["id"], concurrency, full)
        collector = _Collector(drafts, stored, project, state["id"], server.identity, report)
        with tqdm(total=total, desc=f"pull {project}", unit="task", disable=not progress) as bar:
            for asked, tasks in batches:
                for task in tasks:
                    collector.add(task)
                bar.update(asked)
        events, problems = collector.events, collector.problems
        pulled_at = now_iso()
        with catalog.transaction() as c:
            for rec in events:
                if catalog.add_review_event(c, project, rec, pulled_at):
                    report.new_events += 1
                else:
                    report.known_events += 1
            catalog.set_state(last_pull_key(project), pulled_at, conn=c)
            catalog.set_state(pull_since_key(project), mark, conn=c)
        for item, message in problems:
            log.warning("review pull: %s: %s", item, message)
            catalog.record_error("review", item, message)
            report.errors.append(f"{item}: {message}")
    return report
