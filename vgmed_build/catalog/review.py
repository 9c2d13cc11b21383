"""The review stage's catalog queries (Label Studio tasks and the clinicians' verdicts)."""

from __future__ import annotations

import json

from vgmed_build.catalog.base import CatalogBase

WITHDRAWN_TASKS_KEY = "review.withdrawn_tasks"  # state: [[project_id, task_id], ...] the next push deletes


class ReviewQueries(CatalogBase):
    # --- review -------------------------------------------------------------------------------
    def withdrawn_tasks(self) -> list[tuple[int, int]]:
        """(project_id, task_id) of tasks whose items were withdrawn and are still on the server."""
        return [tuple(t) for t in json.loads(self.get_state(WITHDRAWN_TASKS_KEY, "[]"))]

    def forget_withdrawn_tasks(self, done: list[tuple[int, int]]) -> None:
        left = [list(t) for t in self.withdrawn_tasks() if t not in set(done)]
        with self.transaction() as c:
            self.set_state(WITHDRAWN_TASKS_KEY, json.dumps(left), conn=c)
