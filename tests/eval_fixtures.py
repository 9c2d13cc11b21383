"""A small grounding release on real photographs (scikit-image's bundled images), with planted errors.

Images: square (camera 512x512), wide (coins cropped to 384x200), tall (astronaut cropped to 180x300)
and tiny (moon resized to 40x24). Questions carry boxes in our release format (exclusive xyxy); a
second file in the published format (inclusive xyxy, SLAKE xywh) holds the same boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data


# name -> (pixels, modality, source)
def _images() -> dict[str, tuple[np.ndarray, str, str]]:
    return {
        "square": (data.camera(), "X-ray", "camera-set"),
        "wide": (data.coins()[:200, :384], "CT", "coins-set"),
        "tall": (data.astronaut()[:300, 100:280], "Dermoscopy", "astro-set"),
        "tiny": (np.asarray(Image.fromarray(data.moon()).resize((40, 24))), "MRI", "moon-set"),
    }


# (id, image, question, boxes exclusive xyxy, q_type)
QUESTIONS = [
    ("q-square-1", "square", "Is there a mass in the image?", [[200, 60, 330, 300]], "localization"),
    ("q-square-2", "square", "What is the shape of the mass?", [[10, 10, 60, 40], [400, 400, 500, 480]],
     "attribute"),
    ("q-wide-1", "wide", "Is there a nodule in the image?", [[150, 40, 260, 120]], "localization"),
    ("q-wide-2", "wide", "What is the size of the nodule?", [[300, 150, 384, 200]], "attribute"),
    ("q-tall-1", "tall", "Is there a lesion in the image?", [[20, 200, 90, 290]], "localization"),
    ("q-tiny-1", "tiny", "Is there a cyst in the image?", [[5, 3, 20, 12]], "localization"),
    ("q-tiny-2", "tiny", "What is the color of the cyst?", [[30, 10, 40, 24]], "attribute"),
]
MISSING = ("q-missing", "images/missing.png", "Is there a liver in the image?", [[1, 1, 5, 5]])
OUTSIDE = ("q-outside", "square", "Is there a kidney in the image?", [[600, 600, 700, 700]])


def make_release(root: Path, *, errors: bool = True, published: bool = False) -> Path:
    """Write a release directory; ``published`` writes the VGMED public format instead of ours."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    meta = {}
    for name, (pixels, modality, source) in _images().items():
        Image.fromarray(pixels).save(root / "images" / f"{name}.png")
        meta[name] = (modality, source)
    files: dict[str, list[dict]] = {"localization": [], "attribute": []}
    for qid, name, question, boxes, q_type in QUESTIONS:
        modality, source = meta[name]
        rec = {"id": qid, "image": f"images/{name}.png", "question": question, "q_type": q_type,
               "modality": modality, "label": question.split()[-4] if q_type == "localization" else "x"}
        if published:
            if name == "tall":  # a SLAKE item: xywh
                rec.update(bbox=[[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in boxes],
                           source="SLAKE", image=f"images/{name}.png")
            else:
                rec.update(bbox=[[x0, y0, x1 - 1, y1 - 1] for x0, y0, x1, y1 in boxes], source=source)
            rec.pop("id")
        else:
            rec.update(bbox=boxes, bbox_convention="xyxy_exclusive", source={"dataset": source, "licence": "BSD"})
        files[q_type].append(rec)
    if errors:
        qid, image, question, boxes = MISSING
        files["localization"].append({"id": qid, "image": image, "question": question, "bbox": boxes,
                                      "bbox_convention": "xyxy_exclusive", "modality": "CT", "q_type": "localization"})
        qid, name, question, boxes = OUTSIDE
        files["localization"].append({"id": qid, "image": f"images/{name}.png", "question": question, "bbox": boxes,
                                      "bbox_convention": "xyxy_exclusive", "modality": "X-ray",
                                      "q_type": "localization"})
    for q_type, recs in files.items():
        lines = [json.dumps(r) for r in recs]
        if errors and q_type == "attribute":
            lines.append("{not json")
        (root / f"VGMED_{q_type}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
