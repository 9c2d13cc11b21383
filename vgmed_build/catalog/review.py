"""The review stage's catalog queries (Label Studio tasks and the clinicians' verdicts)."""

from __future__ import annotations

import json
from collections.abc import Container, Iterator

from vgmed_build.catalog.base import CatalogBase, Writes, now_iso

WITHDRAWN_TASKS_KEY = "review.withdrawn_tasks"  # state: [[project_id, task_id], ...] the next push deletes
_DRAFTS_WITH_IMAGES = ("SELECT d.id, d.record_json, i.width, i.height, r.record_json FROM drafts d "
                       "JOIN regions r ON r.id = d.region_id JOIN images i ON i.id = r.image_id")


def _parts(keys: list) -> Iterator[list]:
    """``keys`` 500 at a time: an ``IN (...)`` list well under SQLite's limit on bound parameters."""
    for start in range(0, len(keys), 500):
        yield keys[start : start + 500]


class ReviewQueries(CatalogBase):
    # --- review -------------------------------------------------------------------------------
    def withdrawn_tasks(self) -> list[tuple[int, int]]:
        """(project_id, task_id) of tasks whose items were withdrawn and are still on the server."""
        return [tuple(t) for t in json.loads(self.get_state(WITHDRAWN_TASKS_KEY, "[]"))]

    def forget_withdrawn_tasks(self, done: list[tuple[int, int]]) -> None:
        left = [list(t) for t in self.withdrawn_tasks() if t not in set(done)]
        with self.transaction() as tx:
            tx.set_state(WITHDRAWN_TASKS_KEY, json.dumps(left))

    def ok_drafts_with_images(self, with_rejected: bool = False,
                              chunk: int = 256) -> Iterator[tuple[dict, int, int, dict]]:
        """Every ok draft (and lint-rejected one, ``with_rejected``) by id, with its image's width and height
        and its region's record, read ``chunk`` at a time after the last id seen: no cursor stays open
        while the caller writes (review push records tasks between pages), nothing grows with the drafts."""
        statuses = ("ok", "rejected") if with_rejected else ("ok",)
        last = ""  # every draft id is a non-empty string: all sort after ""
        while True:
            rows = self.conn.execute(
                f"{_DRAFTS_WITH_IMAGES} WHERE d.status IN ({','.join('?' * len(statuses))}) AND d.id > ? "
                "ORDER BY d.id LIMIT ?",
                (*statuses, last, chunk),
            ).fetchall()
            for _, rec, w, h, region in rows:
                yield json.loads(rec), w, h, json.loads(region or "{}")
            if len(rows) < chunk:
                return
            last = rows[-1][0]

    def ok_drafts_with_images_of(self, ids: list[str]) -> Iterator[tuple[dict, int, int, dict]]:
        """:meth:`ok_drafts_with_images` for the ok drafts among ``ids`` only, looked up by id (review pull:
        the drafts of one batch of exported tasks)."""
        for part in _parts(ids):
            rows = self.conn.execute(
                f"{_DRAFTS_WITH_IMAGES} WHERE d.id IN ({','.join('?' * len(part))}) AND d.status='ok' ORDER BY d.id",
                part,
            ).fetchall()
            for _, rec, w, h, region in rows:
                yield json.loads(rec), w, h, json.loads(region or "{}")

    def count_ok_drafts(self, with_rejected: bool = False) -> int:
        """How many drafts ``ok_drafts_with_images`` yields (a progress total)."""
        statuses = ("ok", "rejected") if with_rejected else ("ok",)
        return self.conn.execute(
            f"SELECT COUNT(*) FROM drafts WHERE status IN ({','.join('?' * len(statuses))})", statuses
        ).fetchone()[0]

    def existing_draft_ids(self, ids: list[str]) -> set[str]:
        """Those of ``ids`` that name a draft of this build (any status), looked up by id."""
        found: set[str] = set()
        for part in _parts(ids):
            found.update(d for (d,) in self.conn.execute(
                f"SELECT id FROM drafts WHERE id IN ({','.join('?' * len(part))})", part))
        return found

    def ok_draft_ids(self) -> set[str]:
        return {d for (d,) in self.conn.execute("SELECT id FROM drafts WHERE status='ok'")}

    def rejected_draft_ids(self) -> set[str]:
        """The drafts lint rejected."""
        return {d for (d,) in self.conn.execute("SELECT id FROM drafts WHERE status='rejected'")}

    def draft_records(self, only: Container[str] | None = None) -> Iterator[tuple[str, dict]]:
        """(id, record) of every draft (or of those whose id is in ``only``), whatever its status, by id."""
        for draft_id, rec in self.conn.execute("SELECT id, record_json FROM drafts ORDER BY id"):
            if only is None or draft_id in only:
                yield draft_id, json.loads(rec)

    def review_tasks(self, project: str) -> dict[str, tuple[int, str]]:
        """draft id -> (task id, content hash pushed) of every task recorded for ``project``."""
        rows = self.conn.execute(
            "SELECT draft_id, task_id, content_hash FROM review_tasks WHERE project=?", (project,)
        )
        return {d: (t, h) for d, t, h in rows}

    def review_tasks_of(self, project: str, draft_ids: list[str]) -> dict[str, tuple[int, str]]:
        """draft id -> (task id, content hash pushed) of the tasks recorded for ``project`` among
        ``draft_ids``: looked up by the primary key (one batch at a time), never the whole table."""
        found: dict[str, tuple[int, str]] = {}
        for part in _parts(draft_ids):
            rows = self.conn.execute(
                f"SELECT draft_id, task_id, content_hash FROM review_tasks WHERE draft_id IN "
                f"({','.join('?' * len(part))}) AND project=?",
                (*part, project),
            ).fetchall()
            found.update((d, (t, h)) for d, t, h in rows)
        return found

    def count_review_tasks(self, project: str) -> int:
        """How many tasks are recorded for ``project``."""
        return self.conn.execute("SELECT COUNT(*) FROM review_tasks WHERE project=?", (project,)).fetchone()[0]

    def review_tasks_by_id(self, project: str, task_ids: list[int]) -> dict[int, tuple[str, str]]:
        """task id -> (draft id, content hash pushed) of the tasks recorded for ``project`` among ``task_ids``
        (index ``review_tasks_task``)."""
        found: dict[int, tuple[str, str]] = {}
        for part in _parts(task_ids):
            rows = self.conn.execute(
                f"SELECT task_id, draft_id, content_hash FROM review_tasks WHERE project=? AND task_id IN "
                f"({','.join('?' * len(part))})",
                (project, *part),
            ).fetchall()
            found.update((t, (d, h)) for t, d, h in rows)
        return found

    def review_task_id_pages(self, project: str, size: int) -> Iterator[list[int]]:
        """The task ids recorded for ``project``, ascending, ``size`` at a time after the last one seen (no
        cursor stays open while review pull stores what a page brought)."""
        last = -1
        while page := [t for (t,) in self.conn.execute(
            "SELECT task_id FROM review_tasks WHERE project=? AND task_id > ? ORDER BY task_id LIMIT ?",
            (project, last, size),
        )]:
            yield page
            last = page[-1]

    def review_tasks_per_project(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT project, COUNT(*) FROM review_tasks GROUP BY project").fetchall())

    def update_review_task(self, draft_id: str, project: str, content_hash: str) -> None:
        """A task refreshed on the server now shows ``content_hash``."""
        with self.transaction():
            self.conn.execute(
                "UPDATE review_tasks SET content_hash=?, pushed_at=? WHERE draft_id=? AND project=?",
                (content_hash, now_iso(), draft_id, project),
            )

    def forget_review_tasks(self, project: str) -> None:
        """Drop every task record of ``project`` (its project is gone from the server)."""
        with self.transaction():
            self.conn.execute("DELETE FROM review_tasks WHERE project=?", (project,))

    def review_event_keys_of(self, project: str, annotation_ids: list[int]) -> set[tuple[int, str]]:
        """(annotation id, revision) of the events of ``project`` already stored for ``annotation_ids``
        (looked up by the UNIQUE(annotation_id, revision) index)."""
        found: set[tuple[int, str]] = set()
        for part in _parts(annotation_ids):
            found.update(self.conn.execute(
                f"SELECT annotation_id, revision FROM review_events WHERE annotation_id IN "
                f"({','.join('?' * len(part))}) AND project=?",
                (*part, project),
            ))
        return found

    def count_review_events(self, project: str) -> int:
        """How many review events of ``project`` are stored."""
        return self.conn.execute("SELECT COUNT(*) FROM review_events WHERE project=?", (project,)).fetchone()[0]

    def review_event_records(self) -> Iterator[tuple[str, str, dict]]:
        """(draft id, project, record) of every review event, in pull order."""
        for draft_id, project, rec in self.conn.execute(
            "SELECT draft_id, project, record_json FROM review_events ORDER BY id"
        ):
            yield draft_id, project, json.loads(rec)

    def reviewed_drafts(self) -> Iterator[tuple[dict, dict[str, list[dict]]]]:
        """(draft record, project -> its review events in pull order) of every stored draft with a review
        event, in draft id order: one draft's events at a time, read through the draft index of the
        events (one query, no sort, nothing held but the draft at hand)."""
        current: tuple[str, dict] | None = None
        events: dict[str, list[dict]] = {}
        for draft_id, draft, project, rec in self.conn.execute(
            "SELECT e.draft_id, d.record_json, e.project, e.record_json FROM review_events e "
            "JOIN drafts d ON d.id = e.draft_id ORDER BY e.draft_id, e.id"
        ):
            if current is None or current[0] != draft_id:
                if current is not None:
                    yield current[1], events
                current, events = (draft_id, json.loads(draft)), {}
            events.setdefault(project, []).append(json.loads(rec))
        if current is not None:
            yield current[1], events

    def review_problem_records(self) -> list[dict]:
        """Every annotation review pull could not use, in the order they were first found."""
        cur = self.conn.execute(
            "SELECT project, task_id, annotation_id, revision, reviewer, draft_id, problem, pulled_at "
            "FROM review_problems ORDER BY id"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


class ReviewWrites(Writes):
    """The review stage's writes inside one unit of work (``Catalog.transaction``)."""

    def add_review_tasks(self, rows: list[tuple[str, str, int, int, str, str]]) -> None:
        """Record pushed tasks, (draft id, project, project id, task id, content hash, pushed at) each."""
        self._conn.executemany(
            "INSERT INTO review_tasks (draft_id, project, project_id, task_id, content_hash, pushed_at) "
            "VALUES (?,?,?,?,?,?)",
            rows,
        )

    def add_review_event(self, project: str, rec: dict, pulled_at: str) -> bool:
        """Store one review event record; False when it was stored before."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO review_events (draft_id, project, annotation_id, revision, reviewer, "
            "verdict, record_json, pulled_at) VALUES (?,?,?,?,?,?,?,?)",
            (
                rec["draft_id"],
                project,
                rec["annotation_id"],
                rec["revision"],
                rec["reviewer"],
                rec["verdict"],
                json.dumps(rec, sort_keys=True),
                pulled_at,
            ),
        )
        return bool(cur.rowcount)

    def add_review_problem(self, rec: dict, pulled_at: str) -> bool:
        """Store one annotation review pull could not use (keys as ``ReviewQueries.review_problem_records``
        gives them); False when that problem of that revision was stored before."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO review_problems (project, task_id, annotation_id, revision, reviewer, draft_id, "
            "problem, pulled_at) VALUES (?,?,?,?,?,?,?,?)",
            (rec["project"], rec["task_id"], rec["annotation_id"], rec["revision"], rec["reviewer"],
             rec["draft_id"], rec["problem"], pulled_at),
        )
        return bool(cur.rowcount)
