"""The Hounsfield units of each rendered CT slice, kept beside its PNG for the review screen's windows.

A released CT slice is one 8-bit PNG in one window (the sources file's, or the body part's preset);
what that window clips (lung in a mediastinal window, bone detail) is gone from it. So ingest also
writes the slice's resampled Hounsfield units, rounded to whole HU, as a 16-bit greyscale PNG under
``images/_hu/`` of the build (value + 32768; same size as the slice, no metadata), and the review
screen renders its soft-tissue / lung / bone views from those (vgmed_build/review/images.py). The
release never takes them: it copies only the images its records name.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import numpy as np

HU_DIR = "_hu"  # under the build's images/ folder, beside the sources' folders
HU_OFFSET = 32768  # stored value = HU + HU_OFFSET, so -32768..32767 HU fit a 16-bit PNG


def beside(image: str, folder: str) -> str:
    """``image`` (build-relative, images/<source>/<name>.png) moved into images/<folder>/<source>/."""
    rel = PurePosixPath(image)
    inner = rel.relative_to("images") if rel.parts[:1] == ("images",) else PurePosixPath(rel.name)
    return str(PurePosixPath("images", folder, inner))


def hu_path(image: str) -> str:
    """Where the Hounsfield units of the CT slice ``image`` lie (build-relative)."""
    return beside(image, HU_DIR)


def encode_hu(values: np.ndarray) -> bytes:
    """A 2D slice of Hounsfield units as a 16-bit PNG: rounded, clipped to -32768..32767, NaN as -1024
    (air); nothing but the pixels. Fast compression (level 1): at level 6 these review-only files made a
    512 x 512 x 300 CT ingest 6.2x its box-extraction floor (quick guard: <= 4x); level 1 gives 2.8x."""
    from PIL import Image

    if values.ndim != 2:
        raise ValueError(f"a CT slice must be 2D, got shape {values.shape}")
    hu = np.nan_to_num(values.astype(np.float64), nan=-1024.0, posinf=32767.0, neginf=-32768.0)
    stored = np.clip(np.rint(hu) + HU_OFFSET, 0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_hu(data: bytes) -> np.ndarray:
    """The Hounsfield units (float32) of a PNG written by :func:`encode_hu`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        stored = np.asarray(im, dtype=np.int64)
    return (stored - HU_OFFSET).astype(np.float32)
