"""Regenerate the bundled natural-image control sample (vgmed_build/sample/coco/), in the COCO layout.

Two real photographs that ship with scikit-image, halved in size and saved as JPEG to keep the
package small, with hand-drawn COCO polygon annotations (coordinates in pixels of the original
pictures, scaled with them):

* ``coffee.png`` (600 x 400): a cup and a spoon (supercategory kitchen), and the dining table under
  them, which covers more than 40% of the picture and is therefore dropped by ingest, as in the
  published control set;
* ``rocket.jpg`` (640 x 427): the rocket on its launch pad and the four lattice masts around it, the
  two beside it and the two cut by the picture's left and right edges (one "mast" region with four
  boxes: one box per instance, the published rule). Every visible instance is annotated: a count
  question counts annotated instances, so a missed one makes its answer wrong (two drawn masts of
  four once gave "two"); the offline templates ask no count where an instance touches the edge.

    .venv/bin/python scripts/make_coco_sample.py [--out vgmed_build/sample/coco]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import skimage
from PIL import Image

SPLIT = "demo"
SCALE = 0.5
CATEGORIES = [
    {"id": 44, "name": "spoon", "supercategory": "kitchen"},
    {"id": 47, "name": "cup", "supercategory": "kitchen"},
    {"id": 67, "name": "dining table", "supercategory": "furniture"},
    {"id": 91, "name": "rocket", "supercategory": "vehicle"},
    {"id": 92, "name": "mast", "supercategory": "outdoor"},
]
# picture -> [(category id, polygon in original pixels)]
OBJECTS = {
    "coffee.png": [
        (47, [180, 60, 200, 30, 250, 16, 330, 16, 390, 30, 410, 60, 400, 120, 380, 190, 340, 240, 290, 260,
              240, 250, 215, 220, 200, 170, 185, 110]),
        (44, [395, 70, 420, 70, 410, 230, 400, 250, 395, 300, 370, 322, 340, 320, 325, 300, 330, 265, 355, 240,
              385, 230]),
        (67, [0, 0, 599, 0, 599, 399, 0, 399]),
    ],
    "rocket.jpg": [
        (91, [312, 130, 320, 122, 328, 130, 334, 160, 336, 400, 304, 400, 306, 160]),
        (92, [190, 130, 206, 130, 206, 400, 190, 400]),
        (92, [438, 120, 454, 120, 454, 400, 438, 400]),
        (92, [46, 0, 90, 0, 78, 426, 0, 426, 0, 330]),
        (92, [560, 0, 598, 0, 639, 250, 639, 426, 578, 426]),
    ],
}


def polygon_bbox(poly: list[float]) -> list[float]:
    xs, ys = poly[0::2], poly[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def polygon_area(poly: list[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def build(out: Path) -> None:
    photos = Path(skimage.__file__).parent / "data"
    (out / SPLIT).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for image_id, (name, objects) in enumerate(OBJECTS.items(), start=1):
        with Image.open(photos / name) as img:
            small = img.convert("RGB").resize((round(img.width * SCALE), round(img.height * SCALE)), Image.LANCZOS)
        file_name = Path(name).stem + ".jpg"
        small.save(out / SPLIT / file_name, quality=88, optimize=True)
        images.append({"id": image_id, "file_name": file_name, "width": small.width, "height": small.height,
                       "license": 0, "source": f"scikit-image skimage/data/{name}"})
        for category, poly in objects:
            scaled = [round(v * SCALE, 1) for v in poly]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": [scaled], "area": polygon_area(scaled),
                                "bbox": polygon_bbox(scaled), "iscrowd": 0})
    doc = {"info": {"description": "vgmed natural-image control sample (scikit-image photos, hand-drawn polygons)"},
           "licenses": [{"id": 0, "name": "coffee: CC0 (Rachel Michetti); rocket: public domain (SpaceX)"}],
           "images": images, "annotations": annotations, "categories": CATEGORIES}
    (out / "annotations" / f"instances_{SPLIT}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "vgmed_build" / "sample" / "coco")
    build(p.parse_args().out)


if __name__ == "__main__":
    main()
