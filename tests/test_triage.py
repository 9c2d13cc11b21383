"""Triaged and sampled review: the selection `review push --triage` makes (function level, no server),
the exact interval against an independent computation, its coverage by simulation, and
`release --policy sampled` end to end on a planted build (manifest, card, refusal)."""

from __future__ import annotations

import json
import math
import random

import pytest
from judge_fixtures import drafted_build, plant_reviews, plant_verdicts

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.judge.verdicts import current_verdicts, flags
from vgmed_build.review.decision import Decision, decide_draft, review_events, spilled_decisions
from vgmed_build.review.triage import (
    audit_estimate,
    audit_size,
    clopper_pearson,
    sampled_release,
    select_for_review,
    triage,
)
from vgmed_build.validate import validate_release


def _binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _bisect(f, lo=0.0, hi=1.0) -> float:
    """The root of an increasing f on [lo, hi]."""
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def _exact_by_hand(k: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson from its definition: P(X >= k | low) = 2.5%, P(X <= k | high) = 2.5%."""
    low = 0.0 if k == 0 else _bisect(lambda p: (1 - _binom_cdf(k - 1, n, p)) - 0.025)
    high = 1.0 if k == n else _bisect(lambda p: 0.025 - _binom_cdf(k, n, p))
    return low, high


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (3, 50), (0, 183), (7, 120), (20, 20)])
def test_clopper_pearson_against_its_definition(k, n):
    assert clopper_pearson(k, n) == pytest.approx(_exact_by_hand(k, n), abs=1e-7)


def test_audit_size_from_a_target():
    n = audit_size(0.02)
    assert n == 183  # 1 - 0.025 ** (1 / n) <= 0.02
    assert clopper_pearson(0, n)[1] <= 0.02 < clopper_pearson(0, n - 1)[1]
    with pytest.raises(ValueError, match="between 0 and 1"):
        audit_size(0)


def test_triage_selects_flagged_unjudged_and_a_uniform_audit():
    ok = [f"d{i:03d}" for i in range(100)]
    flags = {k: i < 10 for i, k in enumerate(ok[:90])}  # d000-d009 flagged, d090-d099 not judged
    t = triage(ok, ["r1", "r2", "r3"], flags, audit=20, lint_audit=2, seed=1)
    assert t.flagged == ok[:10] and t.unjudged == ok[90:]
    assert len(t.audit) == 20 and set(t.audit) <= set(ok[10:90]) and len(t.lint_audit) == 2
    assert sorted(t.audit + t.passed) == ok[10:90]
    assert t.ids == sorted(ok[:10] + ok[90:] + t.audit + t.lint_audit)
    assert triage(ok, ["r1", "r2", "r3"], flags, 20, 2, seed=1) == t  # seeded
    # A later push keeps the recorded audit and only tops it up; an audited draft the judge now flags leaves it.
    flags[t.audit[0]] = True
    again = triage(ok, [], flags, audit=30, previous={"audit": t.audit})
    assert set(t.audit[1:]) <= set(again.audit) and len(again.audit) == 30 and t.audit[0] in again.flagged
    # Uniform: over many seeds every judge-passed draft is audited about equally often.
    hits = {k: 0 for k in ok[10:90] if not flags[k]}
    for seed in range(400):
        for k in triage(ok, [], flags, audit=20, seed=seed).audit:
            hits[k] += 1
    assert max(hits.values()) < 2.2 * min(hits.values())


def _decision(draft_id: str, wrong: bool) -> Decision:
    return Decision(draft_id, "rejected" if wrong else "accepted", "q", "a", [[0, 0, 1, 1]], 1, 1.0, False)


def test_interval_covers_the_unreviewed_error_rate_in_simulated_builds():
    """Many builds with a planted error rate among the judge-passed drafts: the audit's 95% interval
    covers the error rate of the drafts released unreviewed in at least 95% of them."""
    rng = random.Random(7)
    for rate, audit in ((0.02, 150), (0.1, 60)):
        covered, trials = 0, 600
        for trial in range(trials):
            ids = [f"d{i:04d}" for i in range(2000)]
            wrong = {k for k in ids if rng.random() < rate}
            t = triage(ids, [], dict.fromkeys(ids, False), audit=audit, seed=trial)
            est = audit_estimate(t.audit, {k: _decision(k, k in wrong) for k in t.audit}, rate)
            true_rate = sum(k in wrong for k in t.passed) / len(t.passed)
            covered += est["ci95"][0] <= true_rate <= est["ci95"][1]
        assert covered / trials >= 0.95, (rate, covered / trials)


def test_select_for_review_records_and_keeps_the_audit(tmp_path):
    build = drafted_build(tmp_path, n_images=3)
    with open_catalog(build) as cat:
        ids = sorted(cat.ok_draft_ids())
    plant_verdicts(build, {k: "ambiguous" if i < 4 else "ok" for i, k in enumerate(ids[:-2])})
    with open_catalog(build) as cat:
        first = select_for_review(cat, audit=5, target=None)
        assert first.flagged == ids[:4] and first.unjudged == ids[-2:] and len(first.audit) == 5
        again = select_for_review(cat, audit=None, target=0.5)  # 0.5 at 95%: 6 drafts, the 5 kept
        assert set(first.audit) < set(again.audit) and len(again.audit) == audit_size(0.5) == 6
        with pytest.raises(ValueError, match="--audit N or --audit-target"):
            select_for_review(cat, audit=None, target=None)


def _sampled_build(tmp_path, wrong_in_audit: int):
    build = drafted_build(tmp_path, n_images=6)
    with open_catalog(build) as cat:
        ids = sorted(cat.ok_draft_ids())
    plant_verdicts(build, {k: "wrong_target" if i < 3 else "ok" for i, k in enumerate(ids)})
    with open_catalog(build) as cat:
        sel = select_for_review(cat, audit=40, target=None)
    reviews = {k: ["reject"] for k in sel.flagged}
    reviews.update({k: ["reject" if i < wrong_in_audit else "accept"] for i, k in enumerate(sel.audit)})
    plant_reviews(build, reviews)
    return build, ids, sel


def test_sampled_release_states_its_error_rate(tmp_path, capsys):
    build, ids, sel = _sampled_build(tmp_path, wrong_in_audit=0)
    out = tmp_path / "rel"
    args = ["release", "--build", str(build), "--out", str(out), "--created", "2026-01-01T00:00:00Z",
            "--policy", "sampled", "--target-error-rate", "0.1"]
    assert main(args) == 0
    assert validate_release(out).problems == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["review_policy"]["policy"] == "sampled"
    s = manifest["quality"]["sampled"]
    assert s["audited"] == 40 and s["errors"] == 0 and s["released_unreviewed"] == len(sel.passed)
    assert s["ci95"][0] == 0 and s["ci95"][1] == pytest.approx(1 - 0.025 ** (1 / 40), abs=1e-4)
    records = [json.loads(line) for f in ("VGMED_localization.jsonl", "VGMED_attribute.jsonl")
               for line in (out / f).read_text().splitlines()]
    status = {r["id"]: r["review"]["status"] for r in records}
    assert {k for k, v in status.items() if v == "judged"} == set(sel.passed)
    assert {k for k, v in status.items() if v == "accepted"} == set(sel.audit)  # flagged ones were rejected
    assert manifest["quality"]["unreviewed"] == len(sel.passed)
    qt = manifest["quality"]["by_q_type"]
    assert sum(g["records"] for g in qt.values()) == len(records)
    assert sum(g["reviewed"] for g in qt.values()) == 40
    judge = manifest["quality"]["judge"]
    assert judge["precision"] == 1.0 and judge["recall"] == 1.0 and judge["drafts"] == 43
    card = (out / "README.md").read_text()
    assert f"{len(sel.passed)} questions were released without clinician review" in card
    assert "exact (Clopper-Pearson) 95% interval 0.0%-8.8%, target 10.0%" in card


def test_sampled_release_refused_when_the_audit_does_not_support_the_target(tmp_path, capsys):
    build, _, _ = _sampled_build(tmp_path, wrong_in_audit=3)
    out = tmp_path / "rel"
    assert main(["release", "--build", str(build), "--out", str(out), "--policy", "sampled",
                 "--target-error-rate", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "the audit does not support an error rate <= 10.00%: 3 wrong of 40 audited drafts" in err
    assert "nothing was changed" in err and not out.exists()
    # The reviewed drafts alone can still be released; its card says every question was reviewed.
    assert main(["release", "--build", str(build), "--out", str(out), "--policy", "majority"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quality"]["sampled"] is None and manifest["quality"]["unreviewed"] == 0
    assert "Every question in this release was reviewed by a clinician." in (out / "README.md").read_text()


@pytest.mark.labelstudio
def test_push_triage_sends_only_the_selection(labelstudio, tmp_path, monkeypatch, capsys):
    """`review push --triage` against the session's Label Studio: the flagged, unjudged, audited and
    lint-audited drafts become tasks, nothing else; a second push keeps the audit and adds nothing."""
    from vgmed_build.review import api as ls_api
    from vgmed_build.review.server import connect

    build = drafted_build(tmp_path, n_images=2)
    with open_catalog(build) as cat:
        ids = sorted(cat.ok_draft_ids())
        c = cat.conn  # raw SQL of the fixture, inside the catalog's transaction
        with cat.transaction():  # one draft lint rejected, for the lint audit
            c.execute("UPDATE drafts SET status='rejected', reason='planted' WHERE id=?", (ids[-1],))
    ids = ids[:-1]
    plant_verdicts(build, {k: "ambiguous" if i < 2 else "ok" for i, k in enumerate(ids[:-1])})
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", labelstudio.api_key)
    args = ["--no-progress", "review", "push", "--build", str(build), "--url", labelstudio.url, "--triage",
            "--audit", "3", "--lint-audit", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "triage: 2 flagged by the judge, 1 not judged, audit 3 of" in out and "1 lint-rejected audited" in out
    with open_catalog(build) as cat:
        audit = json.loads(cat.get_state("review.audit"))
        tasks = cat.review_tasks("review")
    expected = {*ids[:2], ids[-1], *audit["audit"], *audit["lint_audit"]}
    assert set(tasks) == expected and len(expected) == 7
    server_ids = {t["data"]["draft_id"] for t in ls_api.export_tasks(connect(labelstudio),
                                                                      _project_id(build), all_tasks=True)}
    assert server_ids == expected
    assert main(args) == 0  # the recorded audit is kept: nothing new
    with open_catalog(build) as cat:
        assert set(cat.review_tasks("review")) == expected


def _project_id(build) -> int:
    with open_catalog(build) as cat:
        return json.loads(cat.get_state("review.project.review"))["id"]


def test_sampled_release_and_decisions_looked_up_draft_by_draft_match_whole_table_reads(tmp_path):
    """What `release` now streams (judged drafts and decisions kept in scratch stores, one verdict looked
    up per draft) against the whole-table computation it replaced: every verdict loaded, every event
    grouped in a dict. A later verdict of another judge, and a draft whose text changed after its
    verdict, are where the two could part."""
    build, ids, sel = _sampled_build(tmp_path, wrong_in_audit=0)
    plant_verdicts(build, {k: "ambiguous" for k in sel.passed[:2]}, judge="other@111111111111")  # later: wins
    plant_reviews(build, {sel.passed[2]: ["accept", "edit"], sel.audit[0]: ["reject"]})
    with open_catalog(build) as cat, cat.transaction():  # raw SQL of the fixture: text changed after its verdict
        cat.conn.execute("UPDATE drafts SET record_json=json_set(record_json, '$.answer', 'changed') WHERE id=?",
                         (sel.passed[3],))
    with open_catalog(build) as cat:
        events = review_events(cat)
        whole = {k: decide_draft(d, events[k]["review"], events[k]["adjudication"], "majority", None, 1)
                 for k, d in cat.draft_records(only=events)}
        with spilled_decisions(cat) as spilled:
            assert len(spilled) == len(whole) and list(spilled) == sorted(whole)
            assert {k: spilled[k] for k in spilled} == whole and spilled.get("nope") is None
            judged, estimate = sampled_release(cat, spilled, 0.5)
            with judged:
                ok = [d for _, d in cat.draft_records(only=cat.ok_draft_ids())]
                verdicts = current_verdicts(ok, cat.judge_verdict_records())
                want = {k for k, v in verdicts.items() if not flags(v) and k not in sel.audit and k not in whole}
                assert set(judged) == want and len(judged) == estimate["released_unreviewed"] == len(want)
                assert not {*sel.passed[:4]} & want and set(sel.passed[4:]) <= want
