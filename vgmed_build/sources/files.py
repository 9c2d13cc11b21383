"""Reading the files sources are made of, shared by every adapter: paths as shown in keys and
messages, JSON side files, 2D images and mask files. Each reader raises :class:`SourceError` naming
the file (relative to the source root) and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vgmed_build.imaging import to_uint8
from vgmed_build.sources.base import SourceError


def rel(path: Path, root: Path) -> str:
    """A path as shown in messages and keys: relative to the source root, never absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def inside(root: Path, name: str) -> Path | None:
    """``root / name`` when it is a path inside ``root`` (after symbolic links), else None: a path an
    index file lists (``../other/x.png``, ``/etc/...``) is never read from outside its source."""
    path = root / name
    try:
        return path if path.resolve().is_relative_to(root.resolve()) else None
    except (OSError, RuntimeError):  # a symbolic link loop
        return None


def read_json(path: Path, root: Path) -> Any:
    """A JSON side file (index, class table, question list) of a source."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"cannot read JSON ({exc})", path=rel(path, root)) from None


# What Pillow raises for a file it cannot or will not read; DecompressionBombError (a picture of more
# than twice Image.MAX_IMAGE_PIXELS, ~358 M pixels, declared by a few hundred bytes) is not an OSError.
PIL_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def read_image(path: Path, name: str) -> np.ndarray:
    """Pixels as uint8, (H, W) or (H, W, 3). Alpha is dropped; >8-bit grey is scaled min..max."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif mode in ("1", "LA"):
                img = img.convert("L")
            arr = np.asarray(img)
    except PIL_ERRORS as exc:
        raise SourceError(f"cannot read image ({exc})", path=name) from None
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise SourceError(f"unsupported image layout {arr.shape}", path=name)
    if arr.dtype != np.uint8:
        arr = to_uint8(arr.astype(np.float64))
    return np.ascontiguousarray(arr)


def read_mask(path: Path, name: str) -> np.ndarray:
    """A mask file as a 2D integer array. RGB masks are refused unless all channels are equal."""
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)  # palette images give their indices, as label maps should
    except PIL_ERRORS as exc:
        raise SourceError(f"cannot read mask ({exc})", path=name) from None
    if arr.ndim == 3:
        channels = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        if not all(np.array_equal(channels[..., 0], channels[..., c]) for c in range(channels.shape[2])):
            raise SourceError("RGB mask with differing channels; save masks as one grey channel", path=name)
        arr = channels[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise SourceError("mask holds non-integer values", path=name)
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise SourceError(f"unsupported mask type {arr.dtype}", path=name)
    if arr.size and arr.min() < 0:
        raise SourceError("mask holds negative values", path=name)
    return arr


def sized_mask(arr: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``arr``, a mask of the image of ``shape`` (rows, cols): another size is the mask file ``name``'s error."""
    if arr.shape != shape:
        raise SourceError(
            f"mask size {arr.shape[1]}x{arr.shape[0]} differs from the image's {shape[1]}x{shape[0]}",
            path=name,
        )
    return arr


def binary_mask(arr: np.ndarray, name: str, threshold: int | None) -> np.ndarray:
    """0 / one other value (1 or 255 usually) -> bool; anything else is refused unless thresholded."""
    if threshold is not None:
        return arr > threshold
    foreground = arr != 0
    first = arr.flat[int(np.argmax(foreground))]  # some foreground value (0 if there is none)
    if np.logical_and(foreground, arr != first).any():  # linear passes; np.unique would sort every pixel
        values = np.unique(arr)
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise SourceError(
            f"binary mask holds {values.size} values ({shown}); "
            "set options.binary_threshold for lossy masks or use mask_type = 'index'",
            path=name,
        )
    return foreground
