"""Builds with judge verdicts and clinicians' review events planted in the catalog, as `judge` and
`review pull` store them, for the calibration, triage and sampled-release tests (no server needed)."""

from __future__ import annotations

from drafting_fixtures import make_catalog

from vgmed_build.api import generate
from vgmed_build.catalog import now_iso, open_catalog
from vgmed_build.drafting.plan import GenerateOptions
from vgmed_build.judge.verdicts import verdict_record
from vgmed_build.resources import schema_errors

JUDGE = "test-model@000000000000"


def drafted_build(tmp_path, n_images: int = 4):
    """A build whose regions have template drafts (ok, and some rejected by lint if any)."""
    build = tmp_path / "b"
    make_catalog(build, n_images=n_images).close()
    generate(build, options=GenerateOptions(progress=False, position_questions=True))
    return build


def plant_verdicts(build, verdicts: dict[str, str], judge: str = JUDGE) -> None:
    """Store the judge's verdict per draft id, as `vgmed-build judge` does (``judge``: model@prompt-hash)."""
    with open_catalog(build) as cat:
        drafts = dict(cat.draft_records(only=verdicts))
        model = judge.split("@")[0]
        records = [verdict_record(drafts[k], judge, model, {"verdict": v, "reason": "planted"}, {})
                   for k, v in verdicts.items()]
        with cat.transaction() as tx:
            tx.add_judge_verdicts(records)


def plant_reviews(build, verdicts: dict[str, list[str]]) -> None:
    """Store review events (schemas/review.schema.json): per draft id, one verdict per reviewer; an
    'edit' changes the answer."""
    with open_catalog(build) as cat:
        drafts = dict(cat.draft_records(only=verdicts))
        n = cat.conn.execute("SELECT COUNT(*) FROM review_events").fetchone()[0]
        with cat.transaction() as tx:
            for draft_id, votes in verdicts.items():
                d = drafts[draft_id]
                for i, verdict in enumerate(votes):
                    n += 1
                    rec = {"draft_id": draft_id, "project": "review", "project_id": 1, "task_id": n,
                           "annotation_id": n, "revision": "2026-01-01T00:00:00Z", "reviewer": f"r-{i:08x}",
                           "verdict": verdict, "question": d["question"],
                           "answer": d["answer"] + " (edited)" if verdict == "edit" else d["answer"],
                           "boxes": d["boxes"], "comment": None, "edited": verdict == "edit", "dropped_boxes": 0,
                           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                           "lead_time_s": 3.0}
                    assert not schema_errors("review", rec), schema_errors("review", rec)
                    tx.add_review_event("review", rec, now_iso())
