"""Turn review events into one decision per draft (the release stage reads these).

Each reviewer counts once per draft, with the latest revision of their annotation. "edit" counts as
acceptance of the edited text. Policies:

- ``unanimous``: accepted (or rejected) when every reviewer agrees and the required number of
  reviewers (``--reviewers-per-item`` at push) have answered; any disagreement is disputed.
- ``majority``: accepted (rejected) once more than half of ``max(required, answered)`` reviewers
  accept (reject); a tie among all required reviewers is disputed.
- ``adjudicator``: the named reviewer's verdict wins when they reviewed the draft; otherwise the
  draft is decided as under ``unanimous``.

Under every policy a verdict from the adjudication project (``review push --adjudication``) settles
the draft: the latest one wins. Until enough reviewers answered and nothing settles it, a draft is
``pending``. Accepted drafts carry the reviewed text and boxes: the adjudicator's, else the latest
edit among the accepting reviewers, else the draft's own. "accept" means "correct as drafted": it
keeps the drafted text and boxes whatever its result holds (an API client may send the verdict
alone; a reviewer may have deleted the box). An accepted draft whose reviewed content cannot be
released (an edit that removed every box or emptied the text) is ``unusable``: counted, never
released, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from vgmed_build.catalog import Catalog
from vgmed_build.catalog.scratch import ScratchMap
from vgmed_build.review.state import ADJUDICATION, REVIEW, project_state

POLICIES = ("unanimous", "majority", "adjudicator")
ACCEPTING = frozenset({"accept", "edit"})
STATUSES = ("accepted", "rejected", "unusable", "disputed", "pending")


@dataclass
class Decision:
    draft_id: str
    status: str  # one of STATUSES
    question: str
    answer: str
    boxes: list[list[int]]
    n_reviewers: int
    agreement: float  # share of reviewers whose verdict agrees with the outcome (the larger side if open)
    edited: bool
    verdicts: dict[str, str] = field(default_factory=dict)  # reviewer -> latest verdict (review project)
    adjudicated: bool = False


def check_policy(policy: str, adjudicator: str | None) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown review policy {policy!r}; expected one of {POLICIES}")
    if policy == "adjudicator" and not adjudicator:
        raise ValueError("policy 'adjudicator' needs the adjudicator's reviewer id (e.g. r-1a2b3c4d)")


def _side(verdict: str) -> str:
    return "accepted" if verdict in ACCEPTING else "rejected"


def content_problem(question: str, answer: str, boxes: list[list[int]]) -> str | None:
    """Why reviewed content cannot enter a release (no box, empty text), or None when it can."""
    if not boxes:
        return "no boxes"
    if not question.strip() or not answer.strip():
        return "empty question or answer"
    return None


def reviewed_content(draft: dict, event: dict) -> tuple[str, str, list[list[int]]]:
    """What an accepting event stands for: the drafted content for "accept", the submitted one for "edit"."""
    if event["verdict"] == "accept":
        return draft["question"], draft["answer"], draft["boxes"]
    return event["question"], event["answer"], event["boxes"]


def _accepted_content(draft: dict, winner: dict | None, votes: dict[str, dict]) -> tuple[str, str, list] | None:
    """The content an accepted draft carries, or None when every candidate is unusable.

    The adjudicator's verdict decides alone; otherwise the latest usable edit among the accepting
    reviewers, else the drafted content when someone accepted it as drafted.
    """
    if winner is not None:
        content = reviewed_content(draft, winner)
        return content if content_problem(*content) is None else None
    accepting = sorted((ev for ev in votes.values() if ev["verdict"] in ACCEPTING), key=lambda ev: ev["updated_at"])
    for ev in reversed([ev for ev in accepting if ev["verdict"] == "edit"]):
        content = reviewed_content(draft, ev)
        if content_problem(*content) is None:
            return content
    if any(ev["verdict"] == "accept" for ev in accepting):
        return draft["question"], draft["answer"], draft["boxes"]
    return None


def _latest(events: list[dict]) -> dict[str, dict]:
    """Latest event per reviewer (events come in pull order; revisions are ISO timestamps)."""
    out: dict[str, dict] = {}
    for ev in events:
        cur = out.get(ev["reviewer"])
        if cur is None or ev["updated_at"] >= cur["updated_at"]:
            out[ev["reviewer"]] = ev
    return out


def decide_draft(
    draft: dict,
    review: list[dict],
    adjudication: list[dict],
    policy: str = "majority",
    adjudicator: str | None = None,
    required: int = 1,
) -> Decision:
    """Decide one draft from its review events and adjudication events (pure)."""
    check_policy(policy, adjudicator)
    votes = _latest(review)
    sides = [_side(ev["verdict"]) for ev in votes.values()]
    n_acc, n_rej, n = sides.count("accepted"), sides.count("rejected"), len(sides)
    winner: dict | None = None
    adj = _latest(adjudication)
    if adj:
        winner = max(adj.values(), key=lambda ev: ev["updated_at"])
    elif policy == "adjudicator" and adjudicator in votes:
        winner = votes[adjudicator]
    if winner is not None:
        status = _side(winner["verdict"])
    elif policy == "majority":
        quorum = max(required, n)
        status = (
            "accepted"
            if 2 * n_acc > quorum
            else "rejected"
            if 2 * n_rej > quorum
            else "pending"
            if n < required
            else "disputed"
        )
    else:  # unanimous, and adjudicator without the adjudicator's verdict
        status = "disputed" if n_acc and n_rej else "pending" if n < required else ("accepted" if n_acc else "rejected")

    question, answer, boxes = draft["question"], draft["answer"], draft["boxes"]
    if status in ("accepted", "rejected"):
        agreement = (sides.count(status) / n) if n else 1.0
    else:
        agreement = max(n_acc, n_rej) / n if n else 0.0
    if status == "accepted":
        content = _accepted_content(draft, winner, votes)
        if content is None:
            status = "unusable"
        else:
            question, answer, boxes = content
    return Decision(
        draft_id=draft["id"],
        status=status,
        question=question,
        answer=answer,
        boxes=[list(b) for b in boxes],
        n_reviewers=len(set(votes) | set(adj)),
        agreement=agreement,
        edited=(question, answer, boxes) != (draft["question"], draft["answer"], draft["boxes"]),
        verdicts={r: ev["verdict"] for r, ev in votes.items()},
        adjudicated=bool(adj) or (winner is not None),
    )


def review_events(catalog: Catalog) -> dict[str, dict[str, list[dict]]]:
    """All review events per draft and project, in pull order."""
    out: dict[str, dict[str, list[dict]]] = {}
    for draft_id, project, rec in catalog.review_event_records():
        out.setdefault(draft_id, {REVIEW: [], ADJUDICATION: []}).setdefault(project, []).append(rec)
    return out


def decisions_by_draft(catalog: Catalog, policy: str = "majority",
                       adjudicator: str | None = None) -> Iterator[Decision]:
    """One decision per draft that has at least one review event, in draft id order, each decided from
    that draft's events alone (read one draft at a time: nothing grows with the reviewed drafts)."""
    check_policy(policy, adjudicator)
    state = project_state(catalog, REVIEW) or {}
    required = int(state.get("reviewers_per_item", 1))
    for draft, events in catalog.reviewed_drafts():
        ev = {REVIEW: [], ADJUDICATION: [], **events}
        yield decide_draft(draft, ev[REVIEW], ev[ADJUDICATION], policy, adjudicator, required)


def decide(catalog: Catalog, policy: str = "majority", adjudicator: str | None = None) -> dict[str, Decision]:
    """One decision per draft that has at least one review event, keyed by draft id."""
    return {d.draft_id: d for d in decisions_by_draft(catalog, policy, adjudicator)}


def spilled_decisions(catalog: Catalog, policy: str = "majority", adjudicator: str | None = None) -> ScratchMap:
    """:func:`decide` kept in a scratch store (the caller closes it): what `release` looks up draft by
    draft, held on disk whatever the number of reviewed drafts."""
    return ScratchMap.of(((d.draft_id, d) for d in decisions_by_draft(catalog, policy, adjudicator)),
                         encode=asdict, decode=lambda v: Decision(**v))
