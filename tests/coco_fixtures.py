"""COCO-format annotations over real photos that ship with scikit-image (skimage/data).

The crowd RLE is encoded by the test's own run-length code (COCO's uncompressed format), not by
pycocotools, so decoding it checks the adapter against an independent encoder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import skimage

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
