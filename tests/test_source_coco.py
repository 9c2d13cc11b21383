"""The ``coco`` kind on real photos that ship with scikit-image, with COCO annotations written here.

Annotations (coco_fixtures.py): two coin instances (polygons) and a crowd of coins (uncompressed
RLE) on ``coins.png``; a cup and a table covering more than 40% of ``coffee.png``; one person on
``astronaut.png``. Expected boxes are each polygon's own extent, worked out here, and areas come
from pycocotools' RLE areas.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from coco_fixtures import COIN_A, COIN_B, CUP, PERSON, TABLE, polygon_box, rectangle, write_coco
from ingest_fixtures import ingest, sources_toml
from pycocotools import mask as mask_utils

from vgmed_build.cli import main


def regions(build: Path) -> dict[tuple[str, str], dict]:
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        rows = [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM regions")]
    return {(r["source"]["item"], r["label"]): r for r in rows}


def errors(build: Path, capsys) -> dict[str, str]:
    capsys.readouterr()
    main(["stats", "--build", str(build), "--json", "--with-paths"])
    return {e["item"]: e["message"] for e in json.loads(capsys.readouterr().out)["errors"]}


def assert_boxes_match(boxes: list[list[int]], polygons: list[list[float]]) -> None:
    """Each mask box lies within a pixel of its polygon's extent (x1, y1 exclusive)."""
    expected = sorted(polygon_box(p) for p in polygons)
    assert len(boxes) == len(expected)
    for got, want in zip(sorted(boxes), expected, strict=True):
        assert np.allclose(got, [want[0], want[1], want[2] + 1, want[3] + 1], atol=1.01), (got, want)


def area_of(polygons: list[list[float]], height: int, width: int) -> float:
    rles = [mask_utils.merge(mask_utils.frPyObjects([p], height, width)) for p in polygons]
    return float(mask_utils.area(mask_utils.merge(rles))) / (height * width)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    write_coco(root)
    return root


def test_one_region_per_image_and_category_with_every_instance_box(coco_root, tmp_path, capsys):
    build = tmp_path / "b"
    assert ingest(build, "--source", f"coco:{coco_root}") == 0
    assert errors(build, capsys) == {}                                 # the unannotated picture is no error
    got = regions(build)
    assert set(got) == {("val2017/coins.png", "coin"), ("val2017/coffee.png", "cup"),
                        ("val2017/astronaut.png", "person")}          # the table (> 40%) is dropped
    coin = got[("val2017/coins.png", "coin")]
    assert_boxes_match(coin["boxes"], [COIN_A, COIN_B])                # the crowd is kept out of the boxes
    assert coin["n_components"] == 2 and coin["category"] == "money" and coin["modality"] == "Natural"
    assert coin["side"] == "unknown" and coin["label"] == coin["display_name"] == "coin"
    assert coin["area_ratio"] == pytest.approx(area_of([COIN_A, COIN_B], 303, 384), abs=1e-4)
    cup = got[("val2017/coffee.png", "cup")]
    assert_boxes_match(cup["boxes"], [CUP])
    assert cup["category"] == "kitchen" and (cup["width"], cup["height"]) == (600, 400)
    assert area_of([TABLE], 400, 600) > 0.4                            # what makes the table too large
    assert_boxes_match(got[("val2017/astronaut.png", "person")]["boxes"], [PERSON])


def test_touching_instances_keep_their_own_boxes(tmp_path):
    """Two overlapping people are one connected blob, but the published rule keeps one box each."""
    root = tmp_path / "coco"
    doc = write_coco(root)
    left, right = rectangle(100, 100, 260, 400), rectangle(240, 120, 420, 420)
    doc["annotations"] = [{"id": 1, "image_id": 3, "category_id": 4, "segmentation": [left], "iscrowd": 0},
                          {"id": 2, "image_id": 3, "category_id": 4, "segmentation": [right], "iscrowd": 0}]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc), encoding="utf-8")
    assert ingest(tmp_path / "b", "--source", f"coco:{root}") == 0
    (person,) = regions(tmp_path / "b").values()
    assert_boxes_match(person["boxes"], [left, right])


@pytest.mark.parametrize("crowd, n_boxes", [("include", 3), ("skip", 0)])
def test_crowd_option(coco_root, tmp_path, capsys, crowd, n_boxes):
    cfg = sources_toml(tmp_path / "s.toml", [{"name": "coco", "kind": "coco", "path": str(coco_root),
                                               "options": {"crowd": crowd, "split": "val2017"}}])
    assert ingest(tmp_path / "b", "--sources", str(cfg)) == 0
    coin = regions(tmp_path / "b").get(("val2017/coins.png", "coin"))
    if n_boxes:
        assert len(coin["boxes"]) == n_boxes
        assert [20, 180, 360, 290] in coin["boxes"]                    # the crowd RLE's own extent
    else:  # the picture is read but keeps no object: skipped with its reason, not an error
        assert coin is None
        assert errors(tmp_path / "b", capsys) == {}
        main(["stats", "--build", str(tmp_path / "b"), "--json"])
        assert json.loads(capsys.readouterr().out)["skipped"] == {
            "no object left (crowd = 'skip', min_component_px = 16)": 1}


def test_bad_annotations_are_errors_naming_the_file_and_the_run_goes_on(tmp_path, capsys):
    root = tmp_path / "coco"
    doc = write_coco(root)
    doc["images"].append({"id": 5, "file_name": "missing.png", "width": 10, "height": 10})
    doc["annotations"] += [{"id": 50, "image_id": 5, "category_id": 2, "segmentation": [CUP], "iscrowd": 0},
                           {"id": 13, "image_id": 1, "category_id": 2, "segmentation": [[1, 2, 3]], "iscrowd": 0}]
    doc["images"][1]["width"] = 601                                    # coffee.png is really 600 wide
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc), encoding="utf-8")
    build = tmp_path / "b"
    assert ingest(build, "--source", f"coco:{root}") == 1
    assert errors(build, capsys) == {
        "val2017/missing.png": "val2017/missing.png: picture listed in annotations/instances_val2017.json not found",
        "val2017/coffee.png": "val2017/coffee.png: picture is 600x400 but the annotations say 601x400",
        "val2017/coins.png": "val2017/coins.png: annotation 13: segmentation has no polygon with 3 or more points",
    }
    assert set(regions(build)) == {("val2017/astronaut.png", "person")}

    (root / "annotations" / "instances_val2017.json").write_text("{not json", encoding="utf-8")
    assert ingest(tmp_path / "b2", "--source", f"coco:{root}") == 1
    (message,) = errors(tmp_path / "b2", capsys).values()
    assert message.startswith("annotations/instances_val2017.json: not valid JSON")


def test_changed_annotations_reingest_only_their_picture(tmp_path, capsys):
    """The pictures do not change when an annotation does: the item's annotations join its fingerprint."""
    root = tmp_path / "coco"
    doc = write_coco(root)
    build = tmp_path / "b"
    assert ingest(build, "--source", f"coco:{root}") == 0
    moved = rectangle(100, 100, 300, 300)
    doc["annotations"][-1]["segmentation"] = [moved]                    # the astronaut's person box
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc), encoding="utf-8")
    capsys.readouterr()
    assert ingest(build, "--source", f"coco:{root}") == 0
    assert "1 ingested, 2 unchanged" in capsys.readouterr().out
    assert_boxes_match(regions(build)[("val2017/astronaut.png", "person")]["boxes"], [moved])


def test_instance_masks_from_every_segmentation_form():
    """Polygons, uncompressed RLE (own encoder) and compressed RLE (string counts, as in COCO JSON files)."""
    from coco_fixtures import crowd_mask, uncompressed_rle

    from vgmed_build.regions import mask_box
    from vgmed_build.sources.base import SourceError
    from vgmed_build.sources.coco import instance_mask

    mask = crowd_mask()
    assert np.array_equal(instance_mask(uncompressed_rle(mask), 303, 384, "x"), mask)
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    as_json = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    assert np.array_equal(instance_mask(as_json, 303, 384, "x"), mask)
    assert mask_box(mask) == [20, 180, 360, 290]
    square = instance_mask([rectangle(10, 20, 29, 49)], 100, 100, "x")
    assert mask_box(square) == [10, 20, 29, 49]       # pixels whose centres lie inside: the polygon's own edges
    with pytest.raises(SourceError, match="x: RLE size"):
        instance_mask(uncompressed_rle(mask), 100, 100, "x")
    with pytest.raises(SourceError, match="x: segmentation is neither polygons nor RLE"):
        instance_mask("oops", 100, 100, "x")
