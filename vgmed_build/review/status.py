"""Where the build's review stands, from the catalog alone: progress, decisions, agreement, disputes.

``review status`` prints :func:`summary` as text (:func:`status_lines`) or strict JSON
(:func:`json_safe`); ``review push --adjudication`` shows the adjudicator :func:`adjudication_notes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from vgmed_build.catalog import Catalog
from vgmed_build.review import agreement
from vgmed_build.review.calibration import calibrate, clinician_flags
from vgmed_build.review.decision import STATUSES, Decision, decide, review_events
from vgmed_build.review.state import REVIEW, last_pull_key, problem_line, project_state


def adjudication_notes(catalog: Catalog, decisions: Mapping[str, Decision]) -> dict[str, str]:
    """Per disputed draft: each reviewer's verdict and comment, shown to the adjudicator."""
    events = review_events(catalog)
    notes = {}
    for draft_id, d in decisions.items():
        if d.status != "disputed":
            continue
        latest = {}
        for ev in events[draft_id][REVIEW]:
            latest[ev["reviewer"]] = ev
        parts = [
            f"{r}: {ev['verdict']}" + (f" ({ev['comment']})" if ev["comment"] else "")
            for r, ev in sorted(latest.items())
        ]
        notes[draft_id] = "disputed: " + "; ".join(parts)
    return notes


def checks_vs_clinicians(catalog: Catalog, decisions: Mapping[str, Decision], judge_model: str | None = None) -> dict:
    """The judge's and the lint's flags measured against the clinicians' decisions (review.calibration).

    One judge is measured, never a mix of several: ``judge_model`` (a judge ``model@hash`` or a model
    name, see judge.verdicts.pick_judge), else the one that judged last; ``judge["judge"]`` names it and
    ``judge["judges_run"]`` lists every judge with verdicts stored. ValueError for an unknown ``judge_model``."""
    from vgmed_build.judge.verdicts import current_verdicts, flags, pick_judge

    truth = clinician_flags(decisions)
    drafts = [rec for _, rec in catalog.draft_records(only=truth)]
    records = catalog.judge_verdict_records()
    name = pick_judge(records, judge_model)
    verdicts = current_verdicts(drafts, records, name) if name else {}
    return {
        "judge": {**calibrate({k: flags(v) for k, v in verdicts.items()}, truth), "judge": name,
                  "picked_by": "--judge-model" if judge_model else "latest",
                  "judges_run": sorted({r["judge"] for r in records})},
        "lint": calibrate({d["id"]: d["status"] == "rejected" for d in drafts if d["status"] != "error"}, truth),
    }


def open_problems(catalog: Catalog) -> list[dict]:
    """The annotations review pull could not store (task, reviewer, what is wrong) that no later stored
    revision of the same annotation has replaced: a reviewer who fixed one in Label Studio closes it."""
    latest: dict[tuple[str, int], str] = {}
    for _, project, rec in catalog.review_event_records():
        key = (project, rec["annotation_id"])
        latest[key] = max(latest.get(key, ""), rec["revision"])
    return [
        p for p in catalog.review_problem_records()
        if not p["annotation_id"] or latest.get((p["project"], p["annotation_id"]), "") <= p["revision"]
    ]


def summary(catalog: Catalog, policy: str = "majority", adjudicator: str | None = None, limit: int = 20,
            judge: bool = False, judge_model: str | None = None) -> dict:
    """Progress, decisions and agreement of the build's review, from the catalog alone; with ``judge``,
    also the judge (``judge_model``, default the latest) and the lint against the clinicians
    (:func:`checks_vs_clinicians`)."""
    decisions = decide(catalog, policy, adjudicator)
    ok_ids = catalog.ok_draft_ids()
    pushed = catalog.review_tasks_per_project()
    counts = {s: 0 for s in STATUSES}
    for d in decisions.values():
        counts[d.status] += 1
    unreviewed = len(ok_ids - set(decisions))  # no verdict yet: pending too
    counts["pending"] += unreviewed
    verdicts = {k: d.verdicts for k, d in decisions.items() if d.verdicts}
    binary = {k: {r: ("reject" if v == "reject" else "accept") for r, v in vs.items()} for k, vs in verdicts.items()}
    disputed = [{"draft_id": k, "verdicts": d.verdicts} for k, d in decisions.items() if d.status == "disputed"]
    unusable = [{"draft_id": k, "verdicts": d.verdicts} for k, d in decisions.items() if d.status == "unusable"]
    state = project_state(catalog, REVIEW) or {}
    problems = open_problems(catalog)
    out = {
        "policy": policy,
        "adjudicator": adjudicator,
        "ok_drafts": len(ok_ids),
        "pushed": pushed,
        "reviewers_per_item": state.get("reviewers_per_item"),
        "reviewed_drafts": len(decisions),
        "unreviewed_drafts": unreviewed,
        "fully_reviewed_drafts": sum(len(d.verdicts) >= state.get("reviewers_per_item", 1) for d in decisions.values()),
        "decisions": counts,
        "reviewers": sorted({r for vs in verdicts.values() for r in vs}),
        "agreement_verdict": agreement.summarize(verdicts),
        "agreement_accept_reject": agreement.summarize(binary),
        "disputed": disputed[:limit] if limit else disputed,
        "unusable": unusable[:limit] if limit else unusable,
        # annotations review pull could not store and no later revision replaced: never counted above
        "invalid_annotation_count": len(problems),
        "invalid_annotations": problems[:limit] if limit else problems,
        "last_pull": catalog.get_state(last_pull_key(REVIEW)),
    }
    if judge:
        out["checks"] = checks_vs_clinicians(catalog, decisions, judge_model)
    return out


def json_safe(value: object) -> object:
    """``value`` with every NaN or infinite float replaced by None, so it serialises as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def status_lines(s: dict) -> Iterator[str]:
    """The text report of a :func:`summary`, line by line."""
    pushed = ", ".join(f"{n} to project {project}" for project, n in sorted(s["pushed"].items())) or "none yet"
    per_item = s["reviewers_per_item"] if s["reviewers_per_item"] is not None else "not set (no push yet)"
    yield (
        f"drafts ok: {s['ok_drafts']}; tasks pushed: {pushed}; reviewers per item: {per_item}; "
        f"last pull: {s['last_pull'] or 'never'}"
    )
    yield (
        f"reviewed: {s['reviewed_drafts']} drafts ({s['fully_reviewed_drafts']} by all required reviewers) "
        f"by {len(s['reviewers'])} reviewer(s) {', '.join(s['reviewers'])}"
    )
    yield (
        f"decisions ({s['policy']}): "
        + ", ".join(f"{k} {v}" for k, v in s["decisions"].items())
        + f" (of which {s['unreviewed_drafts']} without any verdict yet)"
    )
    for key, label in (
        ("agreement_verdict", "accept/edit/reject"),
        ("agreement_accept_reject", "accept vs reject"),
    ):
        a = s[key]
        yield (
            f"agreement on {label} over {a['items_multi']} drafts with 2+ reviewers: "
            f"percent {_fmt(a['percent_agreement'])}, Fleiss' kappa {_fmt(a['fleiss'])} "
            f"({a['fleiss_items']} drafts x {a['fleiss_raters']} reviewers)"
        )
        for c in a["cohen"]:
            yield f"  Cohen's kappa {c['raters'][0]} vs {c['raters'][1]}: {_fmt(c['kappa'])} on {c['items']} drafts"
    for name, c in s.get("checks", {}).items():
        yield from check_lines(name, c)
    for key, why in (("disputed", ""), ("unusable", " (accepted, but the reviewed content has no box or no text)")):
        yield f"{key}: {s['decisions'][key]}{why if s['decisions'][key] else ''}"
        for d in s[key]:
            yield f"  {d['draft_id']}: " + ", ".join(f"{r} {v}" for r, v in sorted(d["verdicts"].items()))
    n = s["invalid_annotation_count"]
    yield f"invalid annotations: {n}" + (" (not stored: fix them in Label Studio, then pull again)" if n else "")
    for p in s["invalid_annotations"]:
        yield "  " + problem_line(p)


def _ci(c: dict, key: str) -> str:
    lo, hi = c["ci95"][key]
    return f"{_fmt(c[key])} [{_fmt(lo)}, {_fmt(hi)}]"


def check_lines(name: str, c: dict) -> Iterator[str]:
    """One automatic check (judge or lint) against the clinicians, as text."""
    m = c["confusion"]
    if name == "judge" and not c["judge"]:
        yield "judge measured: none (no verdict stored; run `vgmed-build judge`)"
    elif name == "judge":
        others = [j for j in c["judges_run"] if j != c["judge"]]
        how = "chosen with --judge-model" if c["picked_by"] == "--judge-model" else "the judge that ran last"
        yield (f"judge measured: {c['judge']} ({how})"
               + (f"; also run: {', '.join(others)} (choose with --judge-model)" if others else ""))
    yield (f"{name} vs clinicians on {c['drafts']} decided drafts (flag = {name} flags it; wrong = rejected, "
           f"unusable or edited): flagged & wrong {m['tp']}, flagged & right {m['fp']}, passed & wrong {m['fn']}, "
           f"passed & right {m['tn']}")
    yield (f"  precision of flag {_ci(c, 'precision')}, recall {_ci(c, 'recall')}, Cohen's kappa {_ci(c, 'kappa')} "
           "(bootstrap 95% intervals)")
