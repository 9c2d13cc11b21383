"""What a release states about its quality (manifest ``quality``, the card's Review section), per
question type and modality: how many records a clinician reviewed and by how many reviewers, their
agreement (Fleiss' kappa on accept vs reject), the judge's measured precision and recall against the
clinicians, and for a ``--policy sampled`` release the audit's estimate of the error rate of the records
nobody reviewed with its exact (Clopper-Pearson) 95% interval.

Agreement and the judge's figures are measured on every decided draft of the build in the group (a
rejected draft counts there, though it is not in the release); the counts are the release's records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from vgmed_build.catalog import Catalog
from vgmed_build.release_counts import QUALITY_GROUPS, GroupTally, RecordCounts
from vgmed_build.review import agreement
from vgmed_build.review.calibration import calibrate, clinician_flags
from vgmed_build.review.decision import Decision


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def _judge(flagged: Mapping[str, bool], truth: Mapping[str, bool]) -> dict:
    c = calibrate(flagged, truth)
    return {"drafts": c["drafts"], "precision": _num(c["precision"]), "recall": _num(c["recall"]),
            "kappa": _num(c["kappa"]), "ci95": {k: [_num(v) for v in c["ci95"][k]] for k in c["ci95"]}}


def _group(tally: GroupTally, ids: set[str], decisions: Mapping[str, Decision],
           judge_flags: Mapping[str, bool]) -> dict:
    votes = {k: {r: ("reject" if v == "reject" else "accept") for r, v in d.verdicts.items()}
             for k, d in decisions.items() if k in ids and d.verdicts}
    truth = clinician_flags({k: d for k, d in decisions.items() if k in ids})
    judge = _judge({k: v for k, v in judge_flags.items() if k in ids}, truth)
    return {
        "records": tally.records,
        "reviewed": tally.reviewed,
        "reviewers_per_item": _num(tally.reviewers / tally.reviewed) if tally.reviewed else None,
        "kappa": _num(agreement.summarize(votes)["fleiss"]),
        "judge_drafts": judge["drafts"],
        "judge_precision": judge["precision"],
        "judge_recall": judge["recall"],
    }


def release_quality(catalog: Catalog, decisions: Mapping[str, Decision], counts: RecordCounts,
                    sampled: dict | None) -> dict:
    """The manifest's ``quality`` block (see module doc); ``sampled``: the audit estimate of a sampled release.

    Holds a few facts per decided draft (its groups, the judge's flag, the clinicians' votes), never the
    drafts nor every verdict: memory grows with what clinicians reviewed, not with the release."""
    from vgmed_build.judge.verdicts import PASS, current_verdict

    groups: dict[str, tuple] = {}  # decided draft id -> its value of each of QUALITY_GROUPS
    judge_flags: dict[str, bool] = {}
    for draft_id, draft in catalog.draft_records(only=decisions):
        groups[draft_id] = tuple(draft.get(key) for key in QUALITY_GROUPS)
        verdict = current_verdict(catalog, draft)  # one lookup per decided draft
        if verdict is not None:
            judge_flags[draft_id] = verdict != PASS
    out: dict = {}
    for i, key in enumerate(QUALITY_GROUPS):
        out[f"by_{key}"] = {
            value: _group(counts.groups[key, value], {k for k, g in groups.items() if g[i] == value}, decisions,
                          judge_flags)
            for value in sorted(v for k, v in counts.groups if k == key)
        }
    out["judge"] = _judge(judge_flags, clinician_flags(decisions)) if judge_flags else None
    out["unreviewed"] = counts.by_reviewers.get(0, 0)
    out["sampled"] = None if sampled is None else {
        "target": sampled["target"], "audited": sampled["audited"], "errors": sampled["errors"],
        "error_rate": _num(sampled["error_rate"]), "ci95": [_num(x) for x in sampled["ci95"]],
        "released_unreviewed": sampled["released_unreviewed"], "method": "clopper-pearson",
    }
    return out
