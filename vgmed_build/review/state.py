"""What every review stage shares: the build's two projects, where each lives, the pull mark, and the
drafts a task is made from.

Push, pull, the decisions and the status all read this; none of them imports another to get it, so
deciding (and the release behind it) never depends on the Label Studio push code.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field

from vgmed_build.catalog import Catalog

REVIEW, ADJUDICATION = "review", "adjudication"
PROJECTS = (REVIEW, ADJUDICATION)


@dataclass
class DraftRow:
    """A draft ready to push: its record, the size of its image and its region's record (facts)."""

    draft: dict
    width: int
    height: int
    region: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.draft["id"]


def iter_drafts(catalog: Catalog, ids: Container[str] | None = None, with_rejected: bool = False,
                chunk: int = 256) -> Iterator[DraftRow]:
    """Drafts with status ok (and lint-rejected ones, ``with_rejected``; optionally only ``ids``), with their
    image size, by id, read ``chunk`` at a time (see ``Catalog.ok_drafts_with_images``)."""
    for draft, w, h, region in catalog.ok_drafts_with_images(with_rejected, chunk):
        if ids is None or draft["id"] in ids:
            yield _row(draft, w, h, region)


def drafts_of(catalog: Catalog, ids: Iterable[str]) -> dict[str, DraftRow]:
    """The ok drafts among ``ids`` by id, looked up by id (review pull: one batch of tasks at a time)."""
    return {d["id"]: _row(d, w, h, region) for d, w, h, region in catalog.ok_drafts_with_images_of(sorted(set(ids)))}


def _row(draft: dict, width: int, height: int, region: dict) -> DraftRow:
    """A draft row: the width and height its record gives, else its image's."""
    return DraftRow(draft, int(draft.get("width") or width), int(draft.get("height") or height), region)


def load_drafts(catalog: Catalog, ids: Iterable[str] | None = None, with_rejected: bool = False) -> list[DraftRow]:
    """:func:`iter_drafts` as a list (the benchmarks and tests; push and pull stream theirs)."""
    return list(iter_drafts(catalog, set(ids) if ids is not None else None, with_rejected))


def problem_line(problem: dict) -> str:
    """An annotation review pull could not store (a ``review_problem_records`` row) as one line: the
    task, the annotation and its reviewer, what is wrong."""
    who = problem["reviewer"] or "an unknown reviewer"
    what = f"annotation {problem['annotation_id']}" if problem["annotation_id"] else "an annotation"
    return f"{problem['project']} task {problem['task_id']}: {what} by {who}: {problem['problem']}"


def pull_since_key(name: str) -> str:
    """Catalog state key: the server time up to which ``review pull`` has seen project ``name``."""
    return f"review.pull_since.{name}"


def last_pull_key(name: str) -> str:
    """Catalog state key: when ``review pull`` last stored project ``name``'s events (our clock)."""
    return f"review.last_pull.{name}"


def _project_key(name: str) -> str:
    return f"review.project.{name}"


def project_state(catalog: Catalog, name: str) -> dict | None:
    """Where the build's project ``name`` lives: {"server", "url", "id", "reviewers_per_item"}."""
    raw = catalog.get_state(_project_key(name))
    return json.loads(raw) if raw else None


def save_project_state(catalog: Catalog, name: str, state: dict) -> None:
    with catalog.transaction() as tx:
        tx.set_state(_project_key(name), json.dumps(state))
