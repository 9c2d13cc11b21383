"""A build with a coco source next to a medical one: natural templates, control files, evaluator reading.

Real chain on real data: the MNI template (nilearn) as an MSD source and scikit-image photos as a
COCO source -> generate (offline templates) -> preview release -> validate -> the evaluator's reader.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from coco_fixtures import write_coco
from ingest_fixtures import REPO, ingest, mni, write_msd

from vgmed_build.cli import main
from vgmed_build.release_format import CONFIGS, CONTROL_CONFIGS
from vgmed_eval.release_io import read_release


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def template_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.startswith("#")]


def filled(template: str, label: str) -> str:
    """The question a clinician expects from ``template`` for this test's labels, worked out here: the
    medical labels are grey / white matter (mass nouns: no article, singular verb), the natural ones
    countable singulars that the published COCO phrasings name through the bare {obj}."""
    mass = label.split(" of ")[0].endswith("matter")
    a_obj = label if mass else ("an " if label[0] in "aeiou" else "a ") + label
    text = (template.replace("{a_obj}", a_obj).replace("{the_obj}", "the " + label)
            .replace("{is}", "is").replace("{obj}", label))
    return text[:1].upper() + text[1:]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("control")
    t1, labels, affine = mni(2)
    write_msd(root / "Task", {"mni": (t1, labels, affine)})
    write_coco(root / "coco")
    build = root / "build"
    assert ingest(build, "--source", f"msd:{root / 'Task'}", "--modality", "MRI") == 0
    assert ingest(build, "--source", f"coco:{root / 'coco'}") == 0
    # Every "yes" kept: the MNI volume's slices hold all four structures (nothing absent to balance them),
    # and this test is about where the questions go, not their balance (test_absent_questions.py).
    assert main(["generate", "--build", str(build), "--drafter", "templates", "--attributes-per-region", "4",
                 "--unbalanced", "keep"]) == 0
    out = root / "release"
    assert main(["release", "--build", str(build), "--out", str(out), "--include-unreviewed"]) == 0
    return build, out


def test_natural_regions_go_to_the_control_files_with_their_own_templates(release):
    build, out = release
    medical = {q: lines(out / name) for q, name in CONFIGS.items()}
    natural = {q: lines(out / name) for q, name in CONTROL_CONFIGS.items()}
    assert CONTROL_CONFIGS == {"localization": "COCO_localization.jsonl", "attribute": "COCO_attribute.jsonl"}
    assert medical["localization"] and natural["localization"] and natural["attribute"]
    assert {r["modality"] for recs in medical.values() for r in recs} == {"MRI"}
    assert {r["modality"] for recs in natural.values() for r in recs} == {"Natural"}
    assert {r["label"] for r in natural["localization"]} == {"coin", "cup", "person"}
    # Localization questions use the published COCO phrasings, the medical ones the medical set.
    published = template_lines(REPO / "prompts" / "natural" / "localization.txt")
    medical_set = template_lines(REPO / "prompts" / "localization.txt")
    for r in natural["localization"]:
        assert r["question"] in {filled(t, r["label"]) for t in published}, r["question"]
    for r in medical["localization"]:
        assert r["question"] in {filled(t, r["label"]) for t in medical_set}, r["question"]
    assert "Is a {obj} shown in the picture?" in published and "Is a {obj} shown in the picture?" not in medical_set
    # Attribute answers of the natural profile, checked against the region geometry worked out here.
    by_question = {r["question"]: r for r in natural["attribute"] if r["label"] == "coin"}
    count = by_question["How many coin objects can be seen in the picture?"]
    assert count["answer"] == "two" and len(count["bbox"]) == 2     # two coins, the crowd kept out
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        (region,) = [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM regions WHERE label='coin'")]
    # Position is asked only where every object lies in one part of the picture: the second coin
    # (x 142..198) crosses the centre line (x 192 of 384), so "left" would be arguable and is not asked.
    assert max(b[2] for b in region["boxes"]) > region["width"] / 2 > min(b[0] for b in region["boxes"])
    assert "In which horizontal part of the picture is the coin?" not in by_question


def test_manifest_marks_the_control_set_and_validate_accepts_it(release, capsys):
    _, out = release
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["configs"] == {**CONFIGS, "control_localization": "COCO_localization.jsonl",
                                   "control_attribute": "COCO_attribute.jsonl"}
    assert manifest["counts"]["by_modality"]["Natural"] == sum(len(lines(out / n)) for n in CONTROL_CONFIGS.values())
    assert "COCO_localization.jsonl" in (out / "README.md").read_text(encoding="utf-8")
    assert main(["validate", str(out)]) == 0


def test_evaluator_reads_either_set_from_the_same_release(release):
    build, out = release
    medical, errors = read_release(out)
    assert not errors and {q.modality for q in medical} == {"MRI"}
    natural, errors = read_release(out, control=True)
    assert not errors and {q.modality for q in natural} == {"Natural"}
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        boxes = {json.loads(r)["label"]: json.loads(r)["boxes"] for (r,) in
                 conn.execute("SELECT record_json FROM regions")}
    for q in natural:
        assert sorted(list(b) for b in q.boxes) == sorted(boxes[q.label])   # pixel-edge xyxy as ingested
