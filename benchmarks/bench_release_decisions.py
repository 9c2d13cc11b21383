"""What `release` holds per reviewed draft (issue 27): the review decisions it keeps for the whole run and
the review events it reads to make them, measured with tracemalloc on typical events (one box, a short
question, the fields `review pull` stores) through the real `decide_draft`. Drafts nobody reviewed have
no decision and cost nothing here.

    .venv/bin/python benchmarks/bench_release_decisions.py [--drafts 20000]
"""

from __future__ import annotations

import argparse
import json
import tracemalloc

from vgmed_build.review.decision import ADJUDICATION, REVIEW, decide_draft

QUESTION, ANSWER, BOXES = "Where is the left kidney in this CT image?", "left kidney", [[120, 200, 180, 260]]


def event(task: int, reviewer: int) -> dict:
    """One stored review event, as the catalog gives it back (parsed from its JSON)."""
    return json.loads(json.dumps({
        "project": REVIEW, "project_id": 3, "task_id": task, "annotation_id": 5000 + task,
        "revision": "2026-12-01T10:00:00.123456Z", "reviewer": f"r-{reviewer:08x}", "verdict": "accept",
        "question": QUESTION, "answer": ANSWER, "boxes": BOXES, "comment": "", "edited": False,
        "dropped_boxes": 0, "created_at": "2026-12-01T09:59:00.000000Z",
        "updated_at": "2026-12-01T10:00:00.123456Z", "lead_time_s": 12.5,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafts", type=int, default=20000, help="reviewed drafts")
    n = parser.parse_args().drafts
    for reviewers in (1, 2):
        tracemalloc.start()
        events = {f"d-{i:016x}": {REVIEW: [event(i, r) for r in range(reviewers)], ADJUDICATION: []}
                  for i in range(n)}
        drafts = ({"id": k, "question": QUESTION, "answer": ANSWER, "boxes": [list(b) for b in BOXES]} for k in events)
        decisions = {d["id"]: decide_draft(d, events[d["id"]][REVIEW], [], "majority", None, reviewers) for d in drafts}
        both = tracemalloc.get_traced_memory()[0]
        del events
        kept = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert all(d.status == "accepted" for d in decisions.values())
        print(f"{reviewers} reviewer(s) a draft: decisions kept {kept / n:.0f} B, with the events "
              f"{both / n:.0f} B per reviewed draft")


if __name__ == "__main__":
    main()
