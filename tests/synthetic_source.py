"""A synthetic ``images2d`` source of any size (grey pictures, one or two elliptic masks each), fast to
write and to ingest: the scale tests (memory at N and 8N, the Dask cluster) build it; also in
SA-Med2D's layout, whose adapter reads its index as a stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("cyst", "nodule")


def make_images2d(root: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """``n`` pictures ``images/case_<i>.png`` of ``size`` px with masks ``masks/case_<i>_<label>.png``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        stem = f"case_{i:06d}"
        picture = np.tile(np.linspace(30, 220, size), (size, 1)) + rng.normal(0, 8, (size, size))
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(root / "images" / f"{stem}.png")
        for label in LABELS[: 1 + i % 2]:
            cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
            ry, rx = rng.uniform(size * 0.08, size * 0.2, 2)
            mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8) * 255
            Image.fromarray(mask).save(root / "masks" / f"{stem}_{label}.png")
    return root


def make_samed2d(root: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """The same pictures in SA-Med2D-20M's layout: ``SAMed2D_v1.json`` index, class table, instance masks."""
    make_images2d(root, n, size, seed)
    index = {}
    for i in range(n):
        stem = f"case_{i:06d}"
        image = f"dermoscopy_00--Synthetic--{stem}--x_0000"
        (root / "images" / f"{stem}.png").rename(root / "images" / f"{image}.png")
        index[f"images/{image}.png"] = []
        for cls, label in enumerate(LABELS[: 1 + i % 2]):
            mask = f"masks/{image}--{cls:04d}_000.png"
            (root / "masks" / f"{stem}_{label}.png").rename(root / mask)
            index[f"images/{image}.png"].append(mask)
    (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    classes = {"Synthetic": {label: i for i, label in enumerate(LABELS)}}
    (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(classes))
    return root
