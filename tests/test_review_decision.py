"""Decision policies on hand-made review events (pure; the server tests cover pulled events)."""

from __future__ import annotations

import pytest

from vgmed_build.review.decision import decide_draft

DRAFT = {
    "id": "0123456789abcdef",
    "question": "Where is the liver?",
    "answer": "yes",
    "boxes": [[1, 2, 3, 4]],
}


def ev(reviewer, verdict, t="2026-01-01T00:00:01Z", question=None, boxes=None, comment=None):
    q = question or DRAFT["question"]
    b = boxes or DRAFT["boxes"]
    return {
        "reviewer": reviewer,
        "verdict": verdict,
        "updated_at": t,
        "question": q,
        "answer": "yes",
        "boxes": b,
        "comment": comment,
        "edited": (q, b) != (DRAFT["question"], DRAFT["boxes"]),
    }


@pytest.mark.parametrize(
    "verdicts, policy, required, status, agreement",
    [
        (["accept", "accept"], "unanimous", 2, "accepted", 1.0),
        (["accept", "edit"], "unanimous", 2, "accepted", 1.0),  # edit = acceptance of the edit
        (["accept", "reject"], "unanimous", 2, "disputed", 0.5),
        (["reject", "reject"], "unanimous", 2, "rejected", 1.0),
        (["accept"], "unanimous", 2, "pending", 1.0),
        (["accept", "reject"], "unanimous", 3, "disputed", 0.5),  # already split: no need to wait
        (["accept", "accept", "reject"], "majority", 3, "accepted", 2 / 3),
        (["accept", "reject"], "majority", 2, "disputed", 0.5),
        (["accept", "accept"], "majority", 3, "accepted", 1.0),  # 2 of 3 already decide
        (["accept"], "majority", 3, "pending", 1.0),
        (["reject", "reject", "edit"], "majority", 3, "rejected", 2 / 3),
    ],
)
def test_policies(verdicts, policy, required, status, agreement):
    events = [ev(f"r-{i:08x}", v) for i, v in enumerate(verdicts)]
    d = decide_draft(DRAFT, events, [], policy, None, required)
    assert d.status == status
    assert d.agreement == pytest.approx(agreement)
    assert d.n_reviewers == len(verdicts)


def test_latest_revision_of_each_reviewer_counts_once():
    events = [
        ev("r-a", "reject", "2026-01-01T00:00:01Z"),
        ev("r-b", "accept"),
        ev("r-a", "accept", "2026-01-02T00:00:00Z"),
    ]
    d = decide_draft(DRAFT, events, [], "unanimous", None, 2)
    assert d.status == "accepted" and d.n_reviewers == 2 and d.verdicts == {"r-a": "accept", "r-b": "accept"}


def test_accepted_draft_carries_the_latest_edit():
    events = [
        ev(
            "r-a",
            "edit",
            "2026-01-01T00:00:02Z",
            question="Where is the liver on this CT?",
            boxes=[[1, 2, 5, 6]],
        ),
        ev("r-b", "accept", "2026-01-01T00:00:03Z"),
    ]
    d = decide_draft(DRAFT, events, [], "majority", None, 2)
    assert d.status == "accepted" and d.edited
    assert d.question == "Where is the liver on this CT?" and d.boxes == [[1, 2, 5, 6]]
    untouched = decide_draft(DRAFT, [ev("r-b", "accept")], [], "majority", None, 1)
    assert not untouched.edited and untouched.question == DRAFT["question"]


def test_adjudicator_policy_and_adjudication_project():
    events = [ev("r-a", "accept"), ev("r-b", "reject")]
    assert decide_draft(DRAFT, events, [], "adjudicator", "r-b", 2).status == "rejected"
    assert decide_draft(DRAFT, events, [], "adjudicator", "r-a", 2).status == "accepted"
    assert (
        decide_draft(DRAFT, events, [], "adjudicator", "r-zz", 2).status == "disputed"
    )  # not reviewed: unanimity
    adj = [ev("r-c", "edit", "2026-01-03T00:00:00Z", question="Edited by the adjudicator?")]
    for policy in ("majority", "unanimous"):
        d = decide_draft(DRAFT, events, adj, policy, None, 2)
        assert d.status == "accepted" and d.adjudicated and d.question == "Edited by the adjudicator?"
        assert d.n_reviewers == 3 and d.agreement == pytest.approx(0.5)
    with pytest.raises(ValueError, match="adjudicator"):
        decide_draft(DRAFT, events, [], "adjudicator", None, 2)
    with pytest.raises(ValueError, match="unknown review policy"):
        decide_draft(DRAFT, events, [], "vote", None, 2)


def test_accept_keeps_the_drafted_content_whatever_its_result_holds():
    # An API client sends the verdict alone; a reviewer deleted the box and still chose accept.
    bare = {**ev("r-a", "accept"), "question": "", "answer": "", "boxes": []}
    d = decide_draft(DRAFT, [bare], [], "majority", None, 1)
    assert d.status == "accepted" and not d.edited
    assert (d.question, d.answer, d.boxes) == (DRAFT["question"], DRAFT["answer"], DRAFT["boxes"])
    adjudicated = decide_draft(DRAFT, [ev("r-b", "reject")], [bare], "majority", None, 1)
    assert adjudicated.status == "accepted" and adjudicated.boxes == DRAFT["boxes"]


def test_an_edit_without_boxes_or_text_is_unusable_not_dropped():
    no_box = {**ev("r-a", "edit", question="Where is the liver here?"), "boxes": []}
    assert decide_draft(DRAFT, [no_box], [], "majority", None, 1).status == "unusable"
    no_text = {**ev("r-a", "edit"), "answer": "  "}
    assert decide_draft(DRAFT, [no_text], [], "majority", None, 1).status == "unusable"
    assert decide_draft(DRAFT, [], [no_box], "majority", None, 1).status == "unusable"  # adjudicator's edit
    # Another reviewer accepted it as drafted: the usable content wins, the broken edit is passed over.
    both = decide_draft(DRAFT, [no_box, ev("r-b", "accept", "2026-01-01T00:00:00Z")], [], "majority", None, 2)
    assert both.status == "accepted" and both.boxes == DRAFT["boxes"] and not both.edited
    # A usable earlier edit is preferred to a later broken one.
    good = ev("r-c", "edit", "2026-01-01T00:00:00Z", boxes=[[2, 2, 9, 9]])
    mixed = decide_draft(DRAFT, [good, {**no_box, "updated_at": "2026-01-02T00:00:00Z"}], [], "majority", None, 2)
    assert mixed.status == "accepted" and mixed.boxes == [[2, 2, 9, 9]]
