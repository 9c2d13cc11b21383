"""Box <-> Label Studio rectangle geometry, annotation reading, and the labeling config (offline)."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET

import pytest
from label_studio_sdk.label_interface import LabelInterface

from vgmed_build.review.convert import box_labels, boxes_to_results, draft_prediction, read_annotation, rectangle_to_box
from vgmed_build.review.tasks import FACT_KEYS, label_config, region_facts


def test_pixel_boxes_survive_the_round_trip_exactly():
    rng = random.Random(3)
    for _ in range(2000):
        w, h = rng.randint(1, 4096), rng.randint(1, 4096)
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = [x0, y0, rng.randint(x0 + 1, w), rng.randint(y0 + 1, h)]
        (res,) = boxes_to_results([box], w, h)
        assert rectangle_to_box(res["value"], w, h) == box


def test_known_percentages():
    # A 200 x 100 image; box columns 50..149, rows 10..29 -> x 25 %, y 10 %, width 50 %, height 20 %.
    (res,) = boxes_to_results([[50, 10, 150, 30]], 200, 100)
    v = res["value"]
    assert (v["x"], v["y"], v["width"], v["height"]) == pytest.approx((25, 10, 50, 20))
    assert res["original_width"] == 200 and res["original_height"] == 100


def test_clamping_and_boxes_outside_the_image():
    # Dragged past the right and bottom edges: clamped to the image (x1/y1 exclusive = width/height).
    assert rectangle_to_box({"x": 90, "y": 95, "width": 30, "height": 20}, 200, 100) == [180, 95, 200, 100]
    assert rectangle_to_box({"x": -10, "y": -5, "width": 20, "height": 10}, 200, 100) == [0, 0, 20, 5]
    assert rectangle_to_box({"x": 120, "y": 10, "width": 5, "height": 5}, 200, 100) is None


def test_rotated_rectangle_becomes_its_bounding_box():
    # 90 degrees clockwise about the top-left corner (100, 20): a 40 x 10 px rectangle now spans
    # x 90..100 and y 20..60 (image 200 x 100 px).
    value = {"x": 50, "y": 20, "width": 20, "height": 10, "rotation": 90}
    assert rectangle_to_box(value, 200, 100) == [90, 20, 100, 60]


def test_read_annotation():
    results = draft_prediction("Where is the liver?", "yes", [[10, 20, 30, 40]], 100, 50) + [
        {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["edit"]}},
        {"from_name": "comment", "to_name": "image", "type": "textarea", "value": {"text": ["box too big"]}},
        {
            "from_name": "bbox",
            "to_name": "image",
            "type": "rectanglelabels",
            "value": {"x": 150, "y": 0, "width": 10, "height": 10, "rectanglelabels": ["target"]},
        },
    ]
    c = read_annotation(results, 100, 50)
    assert (c.verdict, c.question, c.answer, c.comment) == (
        "edit",
        "Where is the liver?",
        "yes",
        "box too big",
    )
    assert c.boxes == [[10, 20, 30, 40]] and c.dropped_boxes == 1
    verdict_only = read_annotation([{"from_name": "verdict", "value": {"choices": ["accept"]}}], 100, 50)
    assert verdict_only.verdict == "accept" and verdict_only.question is None and verdict_only.boxes == []


def test_label_config_is_valid_and_accepts_the_prediction():
    li = LabelInterface(label_config())
    li.validate()
    assert {c.name for c in li.controls} == {"bbox", "question", "answer", "verdict", "comment", "window"}
    # the image, and a CT slice's other windows (test_ct_windows.py); uploads get the config without them
    assert [o.name for o in li.objects] == ["image", "window_soft_tissue", "window_lung", "window_bone"]
    assert [o.name for o in LabelInterface(label_config(windows=False)).objects] == ["image"]
    verdict = li.get_control("verdict")
    assert verdict.labels == ["accept", "edit", "reject"] and verdict.attr["required"] == "true"
    # the box labels and colours the config declares are those pushing and drawing use (convert.py)
    bbox = next(e for e in ET.fromstring(label_config()).iter("RectangleLabels") if e.get("name") == "bbox")
    assert [(e.get("value"), e.get("background")) for e in bbox.iter("Label")] == box_labels()
    # the facts the config shows are those every task's data holds, for a present and an absent structure
    assert set(re.findall(r'"\$(facts_\w+)"', label_config())) == set(FACT_KEYS)
    draft = {"modality": "CT", "side": "left", "display_name": "liver", "label": "liver", "q_type": "attribute",
             "body_part": "abdomen", "boxes": [[1, 2, 3, 4]]}
    for d in (draft, {**draft, "absent": True, "boxes": []}):
        assert tuple(region_facts(d, {}, 10, 10)) == FACT_KEYS
    pred = {"result": draft_prediction("q?", "a", [[1, 2, 3, 4], [5, 6, 7, 8]], 10, 10)}
    assert li.validate_prediction(pred, return_errors=True) == []
    broken = {
        "result": [
            {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["maybe"]}}
        ]
    }
    assert li.validate_prediction(broken, return_errors=True)
