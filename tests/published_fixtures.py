"""The published VGMED release laid out as downloaded, from real records (tests/fixtures/published-vgmed).

``make_older``: the submission layout unchanged (``SLAKE_*_questions.jsonl``, ``COCO_*_questions.jsonl``,
``image`` = SLAKE folder id / COCO integer id) with pictures under a separate ``--images`` folder.
``make_hub``: the hub layout (``VGMED_*.jsonl`` with ``image`` = ``Slake1.0/imgs/<id>/source.jpg``,
``COCO_*.jsonl``) plus a few non-SLAKE xyxy records on non-square pictures, pictures under the root.
Pictures are noise of the right size (the real ones cannot be had).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FIX = Path(__file__).parent / "fixtures" / "published-vgmed"
SLAKE_SIZES = {"xmlab428": (512, 512), "xmlab286": (512, 512)}
COCO_SIZES = {94871: (480, 640), 219525: (640, 427)}
# Non-SLAKE hub records are [x0, y0, x1, y1]; none of these is public, so these are made up here.
XYXY_IMAGES = {"SA-Med2D/ct/ct_0001.png": (320, 200), "PolypDB/endo_0001.png": (180, 300)}
XYXY_RECORDS = [
    {"image": "SA-Med2D/ct/ct_0001.png", "label": "kidney", "modality": "CT",
     "question": "Is there a kidney in the image?", "bbox": [[40, 30, 119, 89]]},
    {"image": "PolypDB/endo_0001.png", "label": "polyp", "modality": "Endoscopy",
     "question": "Can a polyp be found in this image?", "bbox": [[10, 200, 59, 279], [100, 20, 149, 59]]},
]


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIX / name).read_text(encoding="utf-8").splitlines()]


def picture(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_older(root: Path, images: Path) -> tuple[Path, Path]:
    """The older layout in ``root``, pictures in ``images`` (one COCO picture under val2014/)."""
    root.mkdir(parents=True, exist_ok=True)
    for path in FIX.glob("*.jsonl"):
        shutil.copyfile(path, root / path.name)
    for seed, (sid, size) in enumerate(SLAKE_SIZES.items()):
        picture(images / sid / "source.jpg", size, seed)
    picture(images / "COCO_val2014_000000094871.jpg", COCO_SIZES[94871], 10)
    picture(images / "val2014" / "COCO_val2014_000000219525.jpg", COCO_SIZES[219525], 11)
    return root, images


def make_hub(root: Path, pictures_under_root: bool = True) -> Path:
    """The hub layout: VGMED_*.jsonl (SLAKE records with their Slake1.0 paths + xyxy records), COCO_*.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    for q_type in ("localization", "attribute"):
        slake = [{**r, "image": f"Slake1.0/imgs/{r['image']}/source.jpg"}
                 for r in records(f"SLAKE_{q_type}_questions.jsonl")]
        extra = XYXY_RECORDS if q_type == "localization" else []
        (root / f"VGMED_{q_type}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in slake + extra))
        shutil.copyfile(FIX / f"COCO_{q_type}_questions.jsonl", root / f"COCO_{q_type}.jsonl")
    if pictures_under_root:
        for seed, (sid, size) in enumerate(SLAKE_SIZES.items()):
            picture(root / "Slake1.0" / "imgs" / sid / "source.jpg", size, seed)
        for seed, (rel, size) in enumerate(XYXY_IMAGES.items()):
            picture(root / rel, size, 20 + seed)
        for seed, (cid, size) in enumerate(COCO_SIZES.items()):
            picture(root / f"COCO_val2014_{cid:012d}.jpg", size, 10 + seed)
    return root


def authors_boxes(record: dict, xywh: bool) -> list[list[float]]:
    """The authors' reading, written out: xywh -> [x, y, x + w, y + h]; xyxy values used as edges."""
    return [[x, y, x + w, y + h] for x, y, w, h in record["bbox"]] if xywh else [list(b) for b in record["bbox"]]


def authors_cells(boxes: list[list[float]], width: int, height: int, pad: bool, grid: int = 24
                  ) -> set[tuple[int, int]]:
    """The authors' gt_tokens formula, written out: (pad to square,) resize to 336, 336 / grid px cells
    (14 px for their 24 x 24 grid), floor of the min edge / ceil of the max edge."""
    import math

    side_w, side_h, dx, dy = width, height, 0, 0
    if pad:
        side_w = side_h = max(width, height)
        dx, dy = (side_w - width) // 2, (side_h - height) // 2
    cells = set()
    for x0, y0, x1, y1 in boxes:
        sx0, sx1 = (x0 + dx) * 336 / side_w, (x1 + dx) * 336 / side_w
        sy0, sy1 = (y0 + dy) * 336 / side_h, (y1 + dy) * 336 / side_h
        cell = 336 / grid
        for col in range(math.floor(sx0 / cell), min(math.ceil(sx1 / cell), grid)):
            for row in range(math.floor(sy0 / cell), min(math.ceil(sy1 / cell), grid)):
                cells.add((col, row))
    return cells
