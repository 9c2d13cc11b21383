"""Localization questions about absent structures (answer "no"): drafted only where ingest saw no
labelled pixel of the structure, balanced with the "yes" questions where the source has absent
structures, flagged in the draft and the release record, accepted by validate, and passed over by the
grounding reader (there is no region to attend to)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from ingest_fixtures import SAMPLE_SOURCES, ingest

from vgmed_build.cli import main
from vgmed_build.drafting.plan import absent_targets
from vgmed_build.resources import schema_errors

STRUCTURES = [{"label": n} for n in ("left grey matter", "left white matter", "right grey matter",
                                      "right white matter")]


def test_absent_targets_take_different_structures_per_image():
    left = ["left grey matter", "left white matter"]
    picks = [absent_targets({"image_id": "ab" * 8, "label": lab, "image_labels": left}, STRUCTURES, 1) for lab in left]
    assert sorted(p[0] for p in picks) == ["right grey matter", "right white matter"]  # one each, different
    every = ["left grey matter", "left white matter", "right grey matter", "right white matter"]
    full = {"image_id": "ab" * 8, "label": "left grey matter", "image_labels": every}
    assert absent_targets(full, STRUCTURES, 1) == []
    # A build made before ingest recorded the image's labels: nothing is known to be absent.
    assert absent_targets({"image_id": "ab" * 8, "label": "left grey matter"}, STRUCTURES, 1) == []
    # A structure too small to be a region but labelled in the image is present, never asked as absent.
    small = absent_targets({"image_id": "cd" * 8, "label": "left grey matter",
                            "image_labels": [*left, "right white matter"]}, STRUCTURES, 2)
    assert small == ["right grey matter"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("absent")
    build = root / "b"
    assert ingest(build, "--sources", str(SAMPLE_SOURCES)) == 0
    assert main(["generate", "--build", str(build), "--no-progress"]) == 0
    assert main(["release", "--build", str(build), "--out", str(root / "rel"), "--include-unreviewed",
                 "--created", "2026-01-01T00:00:00Z"]) == 0
    return root


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_drafts_are_flagged_and_name_a_structure_missing_from_the_image(demo):
    assert main(["drafts", "--build", str(demo / "b"), "--out", str(demo / "drafts.jsonl")]) == 0
    drafts = records(demo / "drafts.jsonl")
    assert main(["regions", "--build", str(demo / "b"), "--out", str(demo / "regions.jsonl")]) == 0
    regions = {r["id"]: r for r in records(demo / "regions.jsonl")}
    absent = [d for d in drafts if d.get("absent")]
    assert absent and all(not schema_errors("draft", d) for d in drafts)
    for d in absent:
        host = regions[d["region_id"]]
        assert d["answer"] == "no" and d["boxes"] == [] and d["side"] == "unknown" and d["q_type"] == "localization"
        assert d["label"] not in host["image_labels"]  # no labelled pixel of it in the image
        assert d["display_name"] in d["question"] and d["status"] == "ok"
        same_source = {r["label"] for r in regions.values() if r["source"]["name"] == host["source"]["name"]}
        assert d["label"] in same_source
    # Per image, the absent structures asked about are different ones.
    per_image = Counter((regions[d["region_id"]]["image_id"], d["label"]) for d in absent)
    assert max(per_image.values()) == 1


def test_release_balances_yes_and_no_where_the_source_has_absent_structures(demo):
    rel = demo / "rel"
    loc = records(rel / "VGMED_localization.jsonl") + records(rel / "COCO_localization.jsonl")
    assert all(r["absent"] == (r["answer"] == "no") for r in loc)
    by_source = Counter((r["plane"], r["modality"], r["answer"]) for r in loc)
    # Sagittal MNI slices hold one half of the brain: the other half's two structures are asked "no";
    # the photos: the other photo's objects.
    for plane, modality in (("sagittal", "MRI"), ("2d", "Natural")):
        assert by_source[(plane, modality, "yes")] == by_source[(plane, modality, "no")] > 0
    # Axial and coronal tissue halves and the CT's two structures lie on every slice: nothing is absent.
    assert by_source[("axial", "MRI", "no")] == by_source[("coronal", "MRI", "no")] == 0
    for r in loc:
        if r["absent"]:
            assert r["bbox"] == [] and r["area_ratio"] == 0 and r["side"] == "unknown"
    assert main(["validate", str(rel)]) == 0
    manifest = json.loads((rel / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["localization_answers"] == {
        "no": sum(r["answer"] == "no" for r in loc), "yes": sum(r["answer"] == "yes" for r in loc)}


def test_the_demo_localization_answers_near_balance(demo):
    """What a model that always answers "yes" scores on the demo: the counts per source, and overall. Only
    an image with an absent structure can be asked "no" (at most as often as "yes" on it), and the axial
    and coronal MNI slices and the CT slice hold every structure of their source: the sample takes few of
    them (each structure's largest axial slice) and many sagittal ones (every 4th), which hold half."""
    assert main(["regions", "--build", str(demo / "b"), "--out", str(demo / "regions-count.jsonl")]) == 0
    regions = records(demo / "regions-count.jsonl")
    rel = demo / "rel"
    medical = Counter(r["answer"] for r in records(rel / "VGMED_localization.jsonl"))
    photos = Counter(r["answer"] for r in records(rel / "COCO_localization.jsonl"))
    print(f"demo localization answers: medical {dict(medical)}, photos {dict(photos)}")
    assert (medical["yes"], medical["no"]) == (45, 35) and (photos["yes"], photos["no"]) == (4, 4)
    assert (medical["yes"] + photos["yes"]) / (medical.total() + photos.total()) < 0.56  # was 64 / 86 = 74 %
    # Independent count: one "yes" per region, and per image as many "no" as it has regions, up to the
    # structures of its source with no labelled pixel in it.
    structures: dict[str, set[str]] = {}
    images: dict[str, list[dict]] = {}
    for r in regions:
        structures.setdefault(r["source"]["name"], set()).add(r["label"])
        images.setdefault(r["image_id"], []).append(r)
    no = sum(min(len(rs), len(structures[rs[0]["source"]["name"]] - set(rs[0]["image_labels"])))
             for rs in images.values())
    assert (len(regions), no) == (medical["yes"] + photos["yes"], medical["no"] + photos["no"])


def test_validate_refuses_an_absent_record_with_boxes(demo, tmp_path, capsys):
    import shutil

    rel = tmp_path / "rel"
    shutil.copytree(demo / "rel", rel)
    path = rel / "COCO_localization.jsonl"
    lines = records(path)
    bad = next(r for r in lines if r["absent"])
    bad["bbox"] = [[1, 1, 5, 5]]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    capsys.readouterr()
    assert main(["validate", str(rel)]) == 1
    assert "schema: bbox: [[1, 1, 5, 5]] is expected to be empty" in capsys.readouterr().out


def test_grounding_reads_only_questions_with_a_region(demo):
    from vgmed_eval.release_io import read_release

    questions, errors = read_release(demo / "rel", ("localization",))
    loc = records(demo / "rel" / "VGMED_localization.jsonl")
    assert errors == []
    assert len(questions) == sum(not r["absent"] for r in loc) < len(loc)
    assert all(q.boxes for q in questions)
