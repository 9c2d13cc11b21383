"""The dataset card states how much review stands behind a release, in numbers (reviewed of total,
reviewers per question, agreement), never "clinicians reviewed every draft"; a preview says so."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from release_fixtures import make_build

from vgmed_build.card import render_card, review_text
from vgmed_build.catalog import open_catalog
from vgmed_build.release import ReleaseOptions, build_release
from vgmed_build.validate import validate_release


def manifest(total: int, review: dict | None, preview: bool) -> dict:
    counts = {"records": total, "images": 3, "by_file": {}, "by_q_type": {"localization": total},
              "by_modality": {"MRI": total}, "by_source": {"demo": total}, "by_review_status": {},
              "localization_answers": {"no": total // 2, "yes": total - total // 2}}
    if review is not None:
        counts["review"] = review
    return {"name": "VGMED", "version": "0.1.0", "preview": preview, "tool": {"name": "vgmed", "version": "x"},
            "review_policy": {"policy": "majority", "adjudicator": None, "include_unreviewed": preview},
            "bbox_convention": "xyxy_exclusive", "configs": {"localization": "VGMED_localization.jsonl",
                                                              "attribute": "VGMED_attribute.jsonl"},
            "counts": counts}


def test_the_demo_review_case_is_stated_in_numbers():
    # Issue 22: one reviewer saw 14 of the 92 drafts of a preview.
    card = render_card(manifest(92, {"reviewed": 14, "by_reviewers": {"0": 78, "1": 14}, "mean_agreement": 1.0},
                                True), [("demo", "CC0")])
    assert "reviewed every draft" not in card
    assert ("Clinicians reviewed 14 of the 92 questions (14 by 1 reviewer); mean agreement with the final "
            "verdict 1.00. This is a PREVIEW: 78 of the 92 questions have had no review at all.") in card
    assert card.splitlines()[card.splitlines().index("---", 1) + 1].startswith("**PREVIEW")
    assert "46 'no', 46 'yes'" in card


def test_a_full_review_with_two_reviewers_and_partial_agreement():
    text = review_text(manifest(10, {"reviewed": 10, "by_reviewers": {"2": 8, "3": 2}, "mean_agreement": 0.75},
                                False))
    assert text == ("Clinicians reviewed 10 of the 10 questions (8 by 2 reviewers, 2 by 3 reviewers); mean "
                    "agreement with the final verdict 0.75.")
    none = review_text(manifest(5, {"reviewed": 0, "by_reviewers": {"0": 5}, "mean_agreement": None}, True))
    assert none == ("None of the 5 questions has been reviewed by a clinician yet. This is a PREVIEW: 5 of the 5 "
                    "questions have had no review at all.")
    # A manifest written before the numbers were recorded claims nothing.
    assert "does not record" in review_text(manifest(5, None, False))


def test_a_real_release_counts_its_reviews(tmp_path):
    build_dir, decisions, drafts = make_build(tmp_path)
    # One decision by a single reviewer who half agreed, one left unreviewed (a preview).
    first, second = sorted(decisions)[:2]
    decisions[first] = dataclasses.replace(decisions[first], n_reviewers=1, agreement=0.5)
    del decisions[second]
    out = tmp_path / "rel"
    with open_catalog(build_dir, create=False) as catalog:
        build_release(catalog, out, decisions, ReleaseOptions(include_unreviewed=True, created="2026-01-01T00:00:00Z"))
    records = [json.loads(line) for name in ("VGMED_localization.jsonl", "VGMED_attribute.jsonl")
               for line in (out / name).read_text(encoding="utf-8").splitlines()]
    reviewers = Counter(r["review"]["n_reviewers"] for r in records)
    reviewed = [r for r in records if r["review"]["n_reviewers"]]
    expected = {"reviewed": len(reviewed), "by_reviewers": {str(k): v for k, v in sorted(reviewers.items())},
                "mean_agreement": round(sum(r["review"]["agreement"] for r in reviewed) / len(reviewed), 4)}
    written = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["counts"]["review"]
    assert written == expected
    assert reviewers[0] == 1 and len(reviewed) == len(records) - 1
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"Clinicians reviewed {len(reviewed)} of the {len(records)} questions" in card
    assert "This is a PREVIEW: 1 of the" in card
    assert validate_release(out).problems == []
