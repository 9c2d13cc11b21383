"""Region masks in the release (issue 25): real ingest of a photo with hand-drawn masks -> release ->
validate -> Parquet export, each mask checked pixel for pixel against the mask drawn here and against
pycocotools' own decoder; a changed mask is caught by validate; box-only records stay valid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ingest_fixtures import ingest, sources_toml
from PIL import Image
from pycocotools import mask as coco_mask
from test_source_images2d import SIZE, retina, write

from vgmed_build.cli import main
from vgmed_build.release import build_record
from vgmed_build.release_format import LOCALIZATION_FILE, decode_mask, encode_mask, mask_problem
from vgmed_build.validate import validate_release


def drawn_masks() -> dict[str, np.ndarray]:
    """Two structures: a disc (one rectangle) and a 'lesion' of two parts, one of them an L shape."""
    disc = np.zeros((SIZE[1], SIZE[0]), bool)
    disc[40:70, 120:150] = True
    lesion = np.zeros_like(disc)
    lesion[100:130, 20:30] = True
    lesion[120:130, 30:60] = True  # the foot of the L
    lesion[20:35, 60:75] = True
    return {"disc": disc, "lesion": lesion}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("masks")
    retina(root / "data", "images/eye1.jpg")
    masks = drawn_masks()
    for name, mask in masks.items():
        write(root / "data" / f"masks/eye1_{name}.png", mask.astype(np.uint8) * 255)
    sources = sources_toml(root / "sources.toml", [{"name": "fundus", "kind": "images2d", "path": str(root / "data"),
                                                    "modality": "Fundus", "dataset": "drawn", "licence": "CC0"}])
    build = root / "build"
    assert ingest(build, "--sources", str(sources)) == 0
    # --unbalanced keep: the one image holds both structures (no "no" to balance a "yes"), and the masks
    # are checked on the localization records.
    assert main(["generate", "--build", str(build), "--drafter", "templates", "--unbalanced", "keep"]) == 0
    out = root / "release"
    assert main(["release", "--build", str(build), "--out", str(out), "--include-unreviewed"]) == 0
    return out, masks


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOCALIZATION_FILE).read_text("utf-8").splitlines()]


def test_every_region_ships_its_exact_mask(released):
    out, drawn = released
    recs = [r for r in records(out) if not r["absent"]]
    assert {r["label"] for r in recs} == set(drawn)
    for r in recs:
        width, height = r["width"], r["height"]
        factor = width // SIZE[0]  # small images are enlarged by a whole factor at ingest (nearest for masks)
        assert (width, height) == (SIZE[0] * factor, SIZE[1] * factor)
        expected = np.kron(drawn[r["label"]], np.ones((factor, factor), bool))
        mine = decode_mask(r["mask"])
        theirs = coco_mask.decode(coco_mask.frPyObjects(r["mask"], height, width)).astype(bool)
        assert np.array_equal(mine, expected) and np.array_equal(theirs, expected)
        assert r["mask"]["size"] == [height, width]
        assert abs(expected.sum() / (width * height) - r["area_ratio"]) < 1e-6
        assert Image.open(out / r["image"]).size == (width, height)
    assert len([r for r in recs if r["label"] == "lesion"][0]["bbox"]) == 2  # two parts, one mask


def test_validate_checks_the_mask_and_export_carries_it(released, tmp_path):
    out, _ = released
    assert validate_release(out).problems == []
    assert main(["export", str(out), "--format", "parquet", "--out", str(tmp_path / "pq")]) == 0
    table = pq.read_table(tmp_path / "pq" / "VGMED_localization.parquet").to_pylist()
    by_id = {r["id"]: r for r in records(out)}
    for row in table:
        assert row["mask"] == by_id[row["id"]].get("mask")

    # a mask moved by one pixel leaves the boxes: validate names the file, line and why
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    lines = records(out)
    index = next(i for i, r in enumerate(lines) if r["label"] == "disc" and not r["absent"])
    r = lines[index]
    r["mask"] = encode_mask(np.roll(decode_mask(r["mask"]), -r["bbox"][0][0] - 1, axis=1))
    (changed / LOCALIZATION_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines), "utf-8")
    problems = [p.format() for p in validate_release(changed).problems]
    assert any(p.startswith(f"{LOCALIZATION_FILE}:{index + 1}: mask has ") and "outside the record's boxes" in p
               for p in problems), problems


@pytest.mark.parametrize("bad, why", [
    ({"size": [5, 7], "counts": [3, 4]}, "cover 7 pixels, not the 35"),
    ({"size": [5, 7], "counts": [11, -2, 26]}, "not a list of run lengths"),
    ({"size": [7, 5], "counts": [35]}, "mask is 5x7, the image 7x5"),
    ({"size": [5, 7], "counts": [35]}, "mask is empty"),
    ([1, 2], "not a COCO RLE object"),
])
def test_mask_problems_name_what_is_wrong(bad, why):
    assert why in mask_problem(bad, [(0, 0, 7, 5)], 7, 5, 0.1)


def test_rle_matches_pycocotools_both_ways():
    rng = np.random.default_rng(3)
    for _ in range(30):
        h, w = rng.integers(1, 12, size=2)
        m = rng.random((h, w)) < rng.random()
        ours = encode_mask(m)
        assert np.array_equal(coco_mask.decode(coco_mask.frPyObjects(ours, int(h), int(w))).astype(bool), m)
        theirs = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert coco_mask.area(theirs) == m.sum() and np.array_equal(decode_mask(ours), m)


def test_no_mask_for_moved_boxes_absent_structures_or_old_builds():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 4:8] = True
    region = {"id": "r", "image_id": "0123456789abcdef", "width": 30, "height": 20, "label": "x", "modality": "CT",
              "area_ratio": 20 / 600, "boxes": [[4, 5, 8, 10]], "mask": encode_mask(mask), "source": {}}
    draft = {"id": "d", "question": "Is there an x?", "answer": "yes", "boxes": [[4, 5, 8, 10]],
             "q_type": "localization", "label": "x"}
    review = {"status": "unreviewed", "n_reviewers": 0, "agreement": 0.0, "edited": False}
    assert build_record(draft, region, None, review, "exclusive")["mask"] == region["mask"]
    moved = {**draft, "boxes": [[3, 5, 8, 10]]}
    assert "mask" not in build_record(moved, region, None, review, "exclusive")
    old = {k: v for k, v in region.items() if k != "mask"}
    assert "mask" not in build_record(draft, old, None, review, "exclusive")
