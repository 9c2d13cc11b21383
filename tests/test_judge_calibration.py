"""The judge and the lint against the clinicians (`review status --judge`): the statistics on a planted
table checked against scikit-learn and a hand computation, and the command on a planted build."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from judge_fixtures import drafted_build, plant_reviews, plant_verdicts
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_score, recall_score

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.review.calibration import calibrate, calibrate_arrays
from vgmed_build.review.decision import Decision


def _table(tp: int, fp: int, fn: int, tn: int) -> tuple[dict, dict]:
    """flagged / truth dicts holding exactly these confusion counts."""
    cells = [(True, True)] * tp + [(True, False)] * fp + [(False, True)] * fn + [(False, False)] * tn
    return ({f"d{i}": p for i, (p, _) in enumerate(cells)}, {f"d{i}": t for i, (_, t) in enumerate(cells)})


def test_planted_table_against_sklearn_and_by_hand():
    flagged, truth = _table(30, 10, 5, 55)
    truth["extra"] = True  # a decided draft the check never saw: not counted
    c = calibrate(flagged, truth)
    assert c["drafts"] == 100 and c["confusion"] == {"tp": 30, "fp": 10, "fn": 5, "tn": 55}
    # by hand: p_o = 0.85, p_e = (40 * 35 + 60 * 65) / 100^2 = 0.53
    assert c["precision"] == pytest.approx(0.75) and c["recall"] == pytest.approx(30 / 35)
    assert c["kappa"] == pytest.approx((0.85 - 0.53) / (1 - 0.53))
    ids = sorted(flagged)
    y_pred, y_true = [flagged[i] for i in ids], [truth[i] for i in ids]
    assert c["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    assert c["precision"] == pytest.approx(precision_score(y_true, y_pred))
    assert c["recall"] == pytest.approx(recall_score(y_true, y_pred))
    assert confusion_matrix(y_true, y_pred).tolist() == [[55, 10], [5, 30]]
    for key in ("precision", "recall", "kappa"):
        lo, hi = c["ci95"][key]
        assert lo < c[key] < hi and hi - lo < 0.4
    # kappa's bootstrap interval is close to the large-sample normal one (Fleiss, Cohen & Everitt 1969)
    se = math.sqrt(0.85 * 0.15 / (100 * (1 - 0.53) ** 2))
    lo, hi = c["ci95"]["kappa"]
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert calibrate(flagged, truth) == c  # seeded: the same report twice


def test_degenerate_tables_are_nan_not_errors():
    c = calibrate(*_table(0, 0, 0, 20))  # nothing flagged, nothing wrong
    assert math.isnan(c["precision"]) and math.isnan(c["recall"]) and math.isnan(c["kappa"])
    assert calibrate({}, {})["drafts"] == 0


def test_review_status_judge_on_a_planted_build(tmp_path, capsys):
    build = drafted_build(tmp_path, n_images=3)
    with open_catalog(build) as cat:
        ids = sorted(cat.ok_draft_ids())
    assert len(ids) >= 24
    # judge: flags the first 12; clinicians: reject 0-7 (flagged & wrong 8), edit 12-13 (passed & wrong 2),
    # accept the rest; ids[20:] are not reviewed and do not count.
    plant_verdicts(build, {k: ("wrong_target" if i < 12 else "ok") for i, k in enumerate(ids)})
    reviews = {k: ["reject", "reject"] if i < 8 else ["edit", "accept"] if i in (12, 13) else ["accept", "accept"]
               for i, k in enumerate(ids[:20])}
    plant_reviews(build, reviews)
    assert main(["review", "status", "--build", str(build), "--judge", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    judge = s["checks"]["judge"]
    assert judge["confusion"] == {"tp": 8, "fp": 4, "fn": 2, "tn": 6}
    assert judge["precision"] == pytest.approx(8 / 12) and judge["recall"] == pytest.approx(8 / 10)
    lint = s["checks"]["lint"]
    assert lint["drafts"] == 20 and lint["confusion"]["tp"] == 0  # lint passed every reviewed draft
    assert main(["review", "status", "--build", str(build), "--judge"]) == 0
    text = capsys.readouterr().out
    assert "judge vs clinicians on 20 decided drafts" in text and "flagged & wrong 8, flagged & right 4" in text
    assert "precision of flag 0.667 [" in text


def test_review_status_measures_one_judge_the_latest_or_the_one_named(tmp_path, capsys):
    build = drafted_build(tmp_path, n_images=3)
    with open_catalog(build) as cat:
        ids = sorted(cat.ok_draft_ids())[:20]
    # Clinicians reject ids 0-7. Judge "old" (prompt a) flags everything; the same model with another prompt
    # (b) flags none; then "new" flags exactly the rejected ones. Mixing them would give none of these tables.
    plant_reviews(build, {k: ["reject"] if i < 8 else ["accept"] for i, k in enumerate(ids)})
    plant_verdicts(build, {k: "ambiguous" for k in ids}, judge="old@aaaaaaaaaaaa")
    plant_verdicts(build, {k: "ok" for k in ids}, judge="old@bbbbbbbbbbbb")
    plant_verdicts(build, {k: "wrong_answer" if i < 8 else "ok" for i, k in enumerate(ids)}, judge="new@cccccccccccc")

    def status(*more: str) -> dict:
        assert main(["review", "status", "--build", str(build), "--json", *more]) == 0
        return json.loads(capsys.readouterr().out)["checks"]["judge"]

    latest = status("--judge")
    assert latest["judge"] == "new@cccccccccccc" and latest["picked_by"] == "latest"
    assert latest["judges_run"] == ["new@cccccccccccc", "old@aaaaaaaaaaaa", "old@bbbbbbbbbbbb"]
    assert latest["confusion"] == {"tp": 8, "fp": 0, "fn": 0, "tn": 12}
    # A model name picks that model's latest prompt; the full name picks exactly that judge (--judge implied).
    assert status("--judge-model", "old")["confusion"] == {"tp": 0, "fp": 0, "fn": 8, "tn": 12}
    exact = status("--judge-model", "old@aaaaaaaaaaaa")
    assert exact["confusion"] == {"tp": 8, "fp": 12, "fn": 0, "tn": 0} and exact["picked_by"] == "--judge-model"

    assert main(["review", "status", "--build", str(build), "--judge"]) == 0
    assert ("judge measured: new@cccccccccccc (the judge that ran last); also run: old@aaaaaaaaaaaa, "
            "old@bbbbbbbbbbbb (choose with --judge-model)") in capsys.readouterr().out
    assert main(["review", "status", "--build", str(build), "--judge-model", "gpt-9"]) == 2
    err = capsys.readouterr().err
    assert "--judge-model gpt-9: no verdict of that judge is stored" in err and "old@bbbbbbbbbbbb" in err


def test_clinician_flags_counts_edits_as_wrong():
    from vgmed_build.review.calibration import clinician_flags

    def d(status, edited=False):
        return Decision("x", status, "q", "a", [], 1, 1.0, edited)

    got = clinician_flags({"a": d("accepted"), "b": d("accepted", True), "c": d("rejected"), "u": d("unusable"),
                           "p": d("pending"), "s": d("disputed")})
    assert got == {"a": False, "b": True, "c": True, "u": True}


def test_calibrate_arrays_is_calibrate_on_ids_in_order():
    """The release's bool columns (drafts in id order) give calibrate's dict answer exactly: same
    counts, same figures, same bootstrap interval to the last bit."""
    rng = np.random.default_rng(3)
    ids = [f"d{i:04d}" for i in range(300)]
    pred, true = rng.random(300) < 0.4, rng.random(300) < 0.3
    flagged = {k: bool(p) for k, p in zip(ids[::-1], pred[::-1], strict=True)}  # dict order must not matter
    truth = {k: bool(t) for k, t in zip(ids, true, strict=True)}
    assert calibrate_arrays(pred, true) == calibrate(flagged, truth)
    empty = calibrate_arrays(np.zeros(0, bool), np.zeros(0, bool))
    assert empty["drafts"] == 0 and math.isnan(empty["precision"])
