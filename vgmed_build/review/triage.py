"""Triaged and sampled review: clinicians see what the checks flag plus a uniform audit sample of the
rest, and the audit measures the error rate of the drafts nobody reviewed.

``review push --triage`` pushes every ok draft the judge flags (or has not judged), a uniform random
sample of the drafts the judge passed (the *audit*, its size given or derived from a target error
rate), and optionally a sample of the drafts lint rejected (so the lint can be measured too). The audit
is recorded in the catalog; a later push keeps it and only tops it up. ``release --policy sampled``
then releases the judge-passed drafts nobody reviewed, only when the audit's exact (Clopper-Pearson)
95% interval of the error rate lies at or below the target: an audited draft is wrong when the
clinicians rejected it, found it unusable, or accepted it only after an edit.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vgmed_build.catalog import Catalog
from vgmed_build.catalog.scratch import ScratchMap
from vgmed_build.review.calibration import clinician_flags
from vgmed_build.review.decision import Decision

AUDIT_KEY = "review.audit"
CONFIDENCE = 0.95


def clopper_pearson(errors: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact two-sided interval of a binomial proportion (scipy's 'exact' = Clopper-Pearson, the
    same as statsmodels' proportion_confint(method='beta')); (0, 1) with no observation."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(errors, n).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def audit_size(target: float, confidence: float = CONFIDENCE) -> int:
    """The smallest audit whose interval, with no error found, lies at or below ``target``: then
    1 - ((1 - confidence) / 2) ** (1 / n) <= target (2% at 95%: 183 drafts). Each error found needs more."""
    if not 0 < target < 1:
        raise ValueError(f"the target error rate must lie between 0 and 1 (got {target})")
    n = max(1, math.ceil(math.log((1 - confidence) / 2) / math.log(1 - target)))
    while clopper_pearson(0, n, confidence)[1] > target:  # guard the closed form against rounding
        n += 1
    return n


@dataclass
class Triage:
    """Which drafts go to review, and why."""

    flagged: list[str] = field(default_factory=list)  # the judge flags them
    unjudged: list[str] = field(default_factory=list)  # no verdict on their current text
    audit: list[str] = field(default_factory=list)  # uniform sample of the judge-passed drafts
    passed: list[str] = field(default_factory=list)  # judge-passed, not audited: released unreviewed under sampled
    lint_audit: list[str] = field(default_factory=list)  # uniform sample of the lint-rejected drafts

    @property
    def ids(self) -> list[str]:
        return sorted({*self.flagged, *self.unjudged, *self.audit, *self.lint_audit})


def _sample(pool: list[str], kept: Iterable[str], size: int, rng: random.Random) -> list[str]:
    """``kept`` (those still in the pool), topped up to ``size`` with a uniform sample of the rest."""
    pool_set = set(pool)
    chosen = sorted(k for k in kept if k in pool_set)
    rest = sorted(pool_set - set(chosen))
    return sorted(chosen + rng.sample(rest, min(len(rest), max(0, size - len(chosen)))))


def triage(ok_ids: Iterable[str], rejected_ids: Iterable[str], flags: Mapping[str, bool], audit: int,
           lint_audit: int = 0, seed: int = 0, previous: Mapping[str, list[str]] | None = None) -> Triage:
    """The selection (pure): ``flags`` maps a judged draft to whether its current verdict flags it;
    ``previous`` is the recorded audit ({"audit": [...], "lint_audit": [...]}), kept and topped up."""
    previous = previous or {}
    out = Triage()
    passed = []
    for i in sorted(ok_ids):
        if i not in flags:
            out.unjudged.append(i)
        elif flags[i]:
            out.flagged.append(i)
        else:
            passed.append(i)
    rng = random.Random(seed)
    out.audit = _sample(passed, previous.get("audit", []), audit, rng)
    out.passed = sorted(set(passed) - set(out.audit))
    out.lint_audit = _sample(sorted(rejected_ids), previous.get("lint_audit", []), lint_audit, rng)
    return out


def recorded_audit(catalog: Catalog) -> dict:
    """The audit recorded by the last ``review push --triage`` ({} before any)."""
    return json.loads(catalog.get_state(AUDIT_KEY) or "{}")


def record_audit(catalog: Catalog, selection: Triage, target: float | None, seed: int) -> None:
    with catalog.transaction() as tx:
        tx.set_state(AUDIT_KEY, json.dumps({"audit": selection.audit, "lint_audit": selection.lint_audit,
                                            "population": len(selection.audit) + len(selection.passed),
                                            "target": target, "seed": seed}))


def audit_estimate(audit_ids: Iterable[str], decisions: Mapping[str, Decision], target: float | None) -> dict:
    """The error rate of the judge-passed drafts, estimated from the decided audit drafts, with its exact
    95% interval, and whether it supports ``target`` (the interval's upper end at or below it)."""
    truth = clinician_flags({k: decisions[k] for k in audit_ids if k in decisions})
    n, errors = len(truth), sum(truth.values())
    low, high = clopper_pearson(errors, n)
    audit_ids = list(audit_ids)
    return {
        "audit": len(audit_ids),
        "audited": n,
        "undecided": len(audit_ids) - n,
        "errors": errors,
        "error_rate": errors / n if n else None,
        "ci95": [low, high],
        "target": target,
        "supported": target is not None and n > 0 and high <= target,
    }


def sampled_release(catalog: Catalog, decisions: Mapping[str, Decision],
                    target: float | None) -> tuple[ScratchMap, dict]:
    """For ``release --policy sampled``: the judge-passed drafts to release unreviewed (ok drafts with a
    current 'ok' verdict, not audited, with no review event) and the audit estimate. The drafts wait in
    a scratch store (the caller closes it), each looked up as release streams them: a release of
    millions of drafts never holds their ids. Raises ValueError when there is no audit or it does not
    support the target."""
    from vgmed_build.judge.verdicts import PASS, current_verdict

    recorded = recorded_audit(catalog)
    if not recorded.get("audit"):
        raise ValueError("--policy sampled needs an audit sample: run `review push --triage --audit N` (or "
                         "--audit-target RATE), have it reviewed, and `review pull`")
    target = target if target is not None else recorded.get("target")
    if target is None:
        raise ValueError("--policy sampled needs a target error rate: --target-error-rate RATE")
    estimate = audit_estimate(recorded["audit"], decisions, target)
    if not estimate["supported"]:
        low, high = estimate["ci95"]
        raise ValueError(
            f"the audit does not support an error rate <= {target:.2%}: {estimate['errors']} wrong of "
            f"{estimate['audited']} audited drafts ({estimate['undecided']} not decided yet), exact 95% interval "
            f"[{low:.2%}, {high:.2%}]; review a larger audit (`review push --triage --audit N`) or release "
            "the reviewed drafts only (--policy majority)")
    audited = set(recorded["audit"])
    judged = ScratchMap.of((d["id"], None) for d in catalog.drafts("ok") if d["id"] not in audited
                           and d["id"] not in decisions and current_verdict(catalog, d) == PASS)
    estimate["released_unreviewed"] = len(judged)
    return judged, estimate


def select_for_review(catalog: Catalog, audit: int | None, target: float | None, lint_audit: int = 0,
                      seed: int = 0) -> Triage:
    """The triage of the build's drafts for ``review push --triage`` (audit size ``audit``, else derived from
    ``target``), recorded in the catalog before anything is pushed so that a rerun keeps the same sample."""
    from vgmed_build.judge.verdicts import current_verdicts, flags

    if audit is None:
        if target is None:
            raise ValueError("--triage needs the audit size: --audit N or --audit-target RATE")
        audit = audit_size(target)
    if audit < 0 or lint_audit < 0:
        raise ValueError("--audit and --lint-audit must be 0 or more")
    ok_ids = catalog.ok_draft_ids()
    ok = [d for _, d in catalog.draft_records(only=ok_ids)]
    verdicts = current_verdicts(ok, catalog.judge_verdict_records())
    selection = triage(ok_ids, catalog.rejected_draft_ids(), {k: flags(v) for k, v in verdicts.items()}, audit,
                       lint_audit, seed, recorded_audit(catalog))
    record_audit(catalog, selection, target, seed)
    return selection
