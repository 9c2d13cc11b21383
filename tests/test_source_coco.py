"""The ``coco`` kind on real photos that ship with scikit-image, with COCO annotations written here.

Annotations: two coin instances (polygons) and a crowd of coins (uncompressed RLE, encoded by the
test's own run-length code) on ``coins.png``; a cup and a table covering more than 40% of
``coffee.png``; one person on ``astronaut.png``. Expected boxes are each polygon's own extent, worked
out here, and areas come from pycocotools' RLE areas.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import skimage
from ingest_fixtures import ingest, sources_toml
from pycocotools import mask as mask_utils

from vgmed_build.cli import main

PHOTOS = Path(skimage.__file__).parent / "data"


def circle(cx: float, cy: float, r: float, n: int = 24) -> list[float]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [round(float(v), 2) for xy in zip(cx + r * np.cos(t), cy + r * np.sin(t), strict=True) for v in xy]


def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def polygon_box(poly: list[float]) -> list[float]:
    xs, ys = poly[0::2], poly[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


COIN_A, COIN_B = circle(60, 60, 30), circle(170, 75, 28)
CUP, TABLE = circle(300, 170, 90), rectangle(0, 120, 599, 399)
PERSON = rectangle(150, 60, 380, 420)


def crowd_mask() -> np.ndarray:
    mask = np.zeros((303, 384), dtype=bool)
    mask[180:290, 20:360] = True
    return mask


def write_coco(root: Path, split: str = "val2017") -> dict:
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("coins.png", "coffee.png", "astronaut.png"):
        shutil.copy(PHOTOS / name, root / split / name)
    images = [{"id": 1, "file_name": "coins.png", "width": 384, "height": 303},
              {"id": 2, "file_name": "coffee.png", "width": 600, "height": 400},
              {"id": 3, "file_name": "astronaut.png", "width": 512, "height": 512},
              {"id": 4, "file_name": "unannotated.png", "width": 10, "height": 10}]
    categories = [{"id": 1, "name": "coin", "supercategory": "money"},
                  {"id": 2, "name": "cup", "supercategory": "kitchen"},
                  {"id": 3, "name": "dining table", "supercategory": "furniture"},
                  {"id": 4, "name": "person", "supercategory": "person"}]

    def ann(i, image, cat, seg, crowd=0):
        return {"id": i, "image_id": image, "category_id": cat, "segmentation": seg, "iscrowd": crowd,
                "area": 0.0, "bbox": polygon_box(seg[0]) if isinstance(seg, list) else [0, 0, 0, 0]}

    annotations = [ann(10, 1, 1, [COIN_A]), ann(11, 1, 1, [COIN_B]), ann(12, 1, 1, uncompressed_rle(crowd_mask()), 1),
                   ann(20, 2, 2, [CUP]), ann(21, 2, 3, [TABLE]), ann(30, 3, 4, [PERSON])]
    doc = {"info": {"description": "test"}, "images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc), encoding="utf-8")
    return doc


def regions(build: Path) -> dict[tuple[str, str], dict]:
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        rows = [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM regions")]
    return {(r["source"]["item"], r["label"]): r for r in rows}


def errors(build: Path, capsys) -> dict[str, str]:
    capsys.readouterr()
    main(["stats", "--build", str(build), "--json"])
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
    ingest(tmp_path / "b", "--sources", str(cfg))
    coin = regions(tmp_path / "b").get(("val2017/coins.png", "coin"))
    if n_boxes:
        assert len(coin["boxes"]) == n_boxes
        assert [20, 180, 360, 290] in coin["boxes"]                    # the crowd RLE's own extent
    else:
        assert coin is None
        assert errors(tmp_path / "b", capsys)["val2017/coins.png"].startswith(
            "val2017/coins.png: no object left (crowd = 'skip'")


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
