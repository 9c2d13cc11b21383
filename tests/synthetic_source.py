"""A synthetic ``images2d`` source of any size (grey pictures, one or two elliptic masks each), fast to
write and to ingest: the scale tests (memory at N and 8N, the Dask cluster) build it."""

from __future__ import annotations

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
