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
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vgmed_build.catalog import Catalog
from vgmed_build.release_counts import QUALITY_GROUPS, GroupTally, RecordCounts
from vgmed_build.review import agreement
from vgmed_build.review.calibration import calibrate_arrays, clinician_flag
from vgmed_build.review.decision import Decision


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


@dataclass(frozen=True)
class DecidedColumns:
    """One row per decided draft of the build, in draft id order: a few bytes each, never the decisions.

    ``groups[key]``: the draft's code for its value of that quality group (``codes[key]``: value -> code);
    ``judge``: -1 not judged, else whether the judge flagged it; ``truth``: -1 no clinicians' answer yet
    (disputed, pending), else whether they found it wrong as drafted; ``raters``/``rejects``: how many
    clinicians gave a verdict and how many of them rejected it."""

    codes: dict[str, dict]
    groups: dict[str, np.ndarray]
    judge: np.ndarray
    truth: np.ndarray
    raters: np.ndarray
    rejects: np.ndarray


def decided_columns(catalog: Catalog, decisions: Mapping[str, Decision]) -> DecidedColumns:
    """:class:`DecidedColumns` in one pass over the decided drafts (by id), one verdict lookup each."""
    from vgmed_build.judge.verdicts import PASS, current_verdict

    codes: dict[str, dict] = {key: {} for key in QUALITY_GROUPS}
    groups = {key: array("i") for key in QUALITY_GROUPS}
    judge, truth, raters, rejects = array("b"), array("b"), array("i"), array("i")
    for draft_id, draft in catalog.draft_records(only=decisions):
        for key in QUALITY_GROUPS:
            groups[key].append(codes[key].setdefault(draft.get(key), len(codes[key])))
        verdict = current_verdict(catalog, draft)  # one lookup per decided draft
        judge.append(-1 if verdict is None else verdict != PASS)
        d = decisions[draft_id]
        flag = clinician_flag(d)
        truth.append(-1 if flag is None else flag)
        raters.append(len(d.verdicts))
        rejects.append(sum(v == "reject" for v in d.verdicts.values()))
    column = np.frombuffer
    return DecidedColumns(codes, {k: column(v, dtype=np.int32) for k, v in groups.items()},
                          column(judge, dtype=np.int8), column(truth, dtype=np.int8),
                          column(raters, dtype=np.int32), column(rejects, dtype=np.int32))


def _judge(cols: DecidedColumns, rows: np.ndarray) -> dict:
    """The judge against the clinicians on the ``rows`` (a mask) judged by both."""
    both = rows & (cols.judge >= 0) & (cols.truth >= 0)
    c = calibrate_arrays(cols.judge[both] == 1, cols.truth[both] == 1)
    return {"drafts": c["drafts"], "precision": _num(c["precision"]), "recall": _num(c["recall"]),
            "kappa": _num(c["kappa"]), "ci95": {k: [_num(v) for v in c["ci95"][k]] for k in c["ci95"]}}


def _group(tally: GroupTally, cols: DecidedColumns, rows: np.ndarray) -> dict:
    judge = _judge(cols, rows)
    return {
        "records": tally.records,
        "reviewed": tally.reviewed,
        "reviewers_per_item": _num(tally.reviewers / tally.reviewed) if tally.reviewed else None,
        "kappa": _num(agreement.fleiss_of_rejects(cols.raters[rows], cols.rejects[rows])),
        "judge_drafts": judge["drafts"],
        "judge_precision": judge["precision"],
        "judge_recall": judge["recall"],
    }


def release_quality(catalog: Catalog, decisions: Mapping[str, Decision], counts: RecordCounts,
                    sampled: dict | None) -> dict:
    """The manifest's ``quality`` block (see module doc); ``sampled``: the audit estimate of a sampled release.

    Holds a few bytes per decided draft (:class:`DecidedColumns`), never the drafts, the decisions nor
    every verdict."""
    cols = decided_columns(catalog, decisions)
    out: dict = {}
    for key in QUALITY_GROUPS:
        codes = cols.codes[key]
        out[f"by_{key}"] = {
            value: _group(counts.groups[key, value], cols, cols.groups[key] == codes.get(value, -1))
            for value in sorted(v for k, v in counts.groups if k == key)
        }
    out["judge"] = _judge(cols, np.ones(len(cols.judge), dtype=bool)) if (cols.judge >= 0).any() else None
    out["unreviewed"] = counts.by_reviewers.get(0, 0)
    out["sampled"] = None if sampled is None else {
        "target": sampled["target"], "audited": sampled["audited"], "errors": sampled["errors"],
        "error_rate": _num(sampled["error_rate"]), "ci95": [_num(x) for x in sampled["ci95"]],
        "released_unreviewed": sampled["released_unreviewed"], "method": "clopper-pearson",
    }
    return out
