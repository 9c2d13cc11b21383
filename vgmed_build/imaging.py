"""Geometry and rendering of 3D volumes: canonical orientation, slicing, square pixels, windowing, PNG.

Display convention (radiological, the one every rendered slice follows):

* axial:    patient left on the image right, anterior at the top (viewed from the feet);
* coronal:  patient left on the image right, superior at the top (viewed from the front);
* sagittal: anterior on the image left, superior at the top (viewed from the patient's left).

Volumes are first reoriented to canonical RAS+ voxel axes (nibabel ``as_closest_canonical``
semantics: axes permuted/flipped, no interpolation), so the same anatomy stored with a flipped
affine renders to the same pixels. Every rendered slice carries a ``pixel -> world`` map so that
laterality is computed from RAS world x, never from image columns.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel.orientations as nio
import numpy as np
from PIL import Image
from scipy import ndimage

from vgmed_build.modality import CT_WINDOWS
from vgmed_build.sources.base import MAX_SIDE_PX, SourceError, Volume

SLICE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
# In-plane voxel axes (row axis, column axis) of each plane; both are displayed reversed (see above).
PLANE_AXES = {"sagittal": (2, 1), "coronal": (2, 0), "axial": (1, 0)}
def canonical(volume: Volume) -> Volume:
    """Reorient a volume (image, labels, masks) to the closest canonical RAS+ voxel order."""
    ornt = nio.io_orientation(volume.affine)
    if np.array_equal(ornt, nio.axcodes2ornt("RAS")):
        return volume
    shape = volume.image.shape[:3]
    affine = volume.affine @ nio.inv_ornt_aff(ornt, shape)

    def apply(arr: np.ndarray | None) -> np.ndarray | None:
        return None if arr is None else np.ascontiguousarray(nio.apply_orientation(arr, ornt))

    masks = None if volume.masks is None else {k: apply(m) for k, m in volume.masks.items()}
    return replace(
        volume, image=apply(volume.image), affine=affine, label_map=apply(volume.label_map), masks=masks
    )


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each voxel axis in mm."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def display_slice(vol: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of a canonical volume in the radiological display orientation (rows, cols)."""
    axis = SLICE_AXIS[plane]
    sl = vol[(slice(None),) * axis + (index,)]  # a view; remaining axes: (column axis, row axis)
    return sl.T[::-1, ::-1]


@dataclass(frozen=True)
class SliceGeometry:
    """Where a rendered slice lies in the world and how its pixels map there."""

    plane: str
    index: int
    shape: tuple[int, int]  # rendered (rows, cols)
    spacing_mm: tuple[float, float]  # rendered (row, col) pixel size
    pixel_to_world: np.ndarray  # (3, 3): RAS mm = M @ [row, col, 1] at pixel centres
    position_mm: float  # world coordinate along the plane normal

    def world_x(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """RAS x (mm) of pixel centres; x > 0 side of the midline is the patient's right."""
        m = self.pixel_to_world[0]
        return m[0] * rows + m[1] * cols + m[2]


def slice_geometry(
    affine: np.ndarray,
    shape: tuple[int, ...],
    plane: str,
    index: int,
    spacing_mm: float | None = None,
    min_side_px: int = 0,
) -> SliceGeometry:
    """Geometry of slice ``index`` of a canonical volume, resampled to square pixels.

    The target pixel size is ``spacing_mm`` or the finer of the two in-plane voxel sizes, made finer
    still when needed so that the short side has at least ``min_side_px`` pixels: a 99 x 117 px slice
    enlarged by the browser is a blur of squares to a reviewer, and too few patches for a model.
    """
    s_axis = SLICE_AXIS[plane]
    r_axis, c_axis = PLANE_AXES[plane]
    spacing = voxel_spacing(affine)
    target = float(spacing_mm or min(spacing[r_axis], spacing[c_axis]))
    n_r, n_c = shape[r_axis], shape[c_axis]
    extent = (n_r * spacing[r_axis], n_c * spacing[c_axis])
    if min_side_px:  # enlarged towards min_side_px, never past MAX_SIDE_PX on the long side
        target = min(target, max(min(extent) / min_side_px, max(extent) / MAX_SIDE_PX))
    out = (max(1, round(extent[0] / target)), max(1, round(extent[1] / target)))
    if max(out) > MAX_SIDE_PX:
        raise SourceError(
            f"a {plane} slice would be rendered at {out[1]} x {out[0]} pixels ({target:.3g} mm each), more than "
            f"{MAX_SIDE_PX} a side; give a larger spacing_mm"
        )
    # Rendered pixel centre (r', c') -> display pixel index -> voxel index -> world.
    scale_r, scale_c = n_r / out[0], n_c / out[1]
    to_display = np.array([[scale_r, 0, 0.5 * scale_r - 0.5], [0, scale_c, 0.5 * scale_c - 0.5], [0, 0, 1]])
    to_voxel = np.zeros((4, 3))
    to_voxel[r_axis] = [-1, 0, n_r - 1]  # rows run against the row axis
    to_voxel[c_axis] = [0, -1, n_c - 1]  # columns run against the column axis
    to_voxel[s_axis] = [0, 0, index]
    to_voxel[3] = [0, 0, 1]
    pixel_to_world = (np.asarray(affine) @ to_voxel @ to_display)[:3]
    centre = pixel_to_world @ np.array([(out[0] - 1) / 2, (out[1] - 1) / 2, 1.0])
    return SliceGeometry(
        plane=plane,
        index=int(index),
        shape=out,
        spacing_mm=(float(spacing[r_axis] * scale_r), float(spacing[c_axis] * scale_c)),
        pixel_to_world=pixel_to_world,
        position_mm=float(centre[s_axis]),
    )


def resample(arr: np.ndarray, shape: tuple[int, int], labels: bool) -> np.ndarray:
    """Resize a 2D slice (or an (H, W, C) image) to ``shape``, pixel edges aligned: linear for images,
    nearest for labels."""
    if arr.shape[:2] == tuple(shape):
        return arr
    zoom = (shape[0] / arr.shape[0], shape[1] / arr.shape[1]) + (1,) * (arr.ndim - 2)
    if labels:
        return ndimage.zoom(arr, zoom, order=0, mode="nearest", grid_mode=True)
    return ndimage.zoom(arr.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)


def enlargement(shape: tuple[int, int], min_side_px: int) -> int:
    """Whole-number factor a 2D image is enlarged by: the largest that keeps the short side within
    ``min_side_px`` and the long side within MAX_SIDE_PX (1 when the image is already at least half
    that). A 2D source is published as given, so it is only ever enlarged by whole pixels: every box
    is exactly ``factor`` times its own."""
    short = min(shape)
    if not (min_side_px and short):
        return 1
    return max(1, min(min_side_px // short, MAX_SIDE_PX // max(shape)))


def ct_window(name: str) -> tuple[float, float]:
    """(low, high) intensity bounds of a named CT window."""
    level, width = CT_WINDOWS[name]
    return level - width / 2, level + width / 2


def auto_ct_preset(body_part: str) -> str:
    """Pick the CT window for a body region named in the sources file."""
    part = body_part.lower()
    for keys, preset in (
        (("brain", "head"), "brain"),
        (("lung", "chest", "thorax"), "lung"),
        (("liver",), "liver"),
        (("bone", "spine", "skeleton"), "bone"),
        (("mediastin", "heart"), "mediastinum"),
        (("abdom", "pelvi", "kidney", "pancrea", "spleen"), "abdomen"),
    ):
        if any(k in part for k in keys):
            return preset
    return "soft_tissue"


def finite_range(pixels: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite values of ``pixels`` (NaN and +-Inf ignored), None when it has none.

    Reductions run over the array in place (no flattened or masked copy of a 79 M-voxel volume); only
    a float array holding +-Inf takes the masked path."""
    if pixels.size == 0:
        return None
    if not np.issubdtype(pixels.dtype, np.floating):
        return pixels.min().item(), pixels.max().item()
    lo, hi = np.fmin.reduce(pixels, axis=None), np.fmax.reduce(pixels, axis=None)  # NaN ignored
    if np.isinf(lo) or np.isinf(hi):
        finite = pixels[np.isfinite(pixels)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (np.nan, np.nan)
    return None if np.isnan(lo) else (lo.item(), hi.item())


def contrast_problem(pixels: np.ndarray) -> str | None:
    """Why ``pixels`` can render nothing (no finite value, or one value everywhere), else None."""
    if pixels.size == 0:
        return "no finite intensity (the image is empty)"
    bounds = finite_range(pixels)
    if bounds is None:
        return "no finite intensity (every value is NaN or infinite)"
    if bounds[0] == bounds[1]:
        return f"no contrast (every finite value is {bounds[0]:g})"
    return None


def affine_problem(affine: np.ndarray) -> str | None:
    """Why a voxel -> world ``affine`` cannot place a volume (not finite, or singular: a zero voxel size
    or two voxel axes along one direction), else None; reorienting and slicing need its inverse."""
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(affine)):
        return "a voxel-to-world affine that is not finite (NaN or infinite entries)"
    sizes = np.linalg.norm(axes, axis=0)
    if np.any(sizes == 0) or abs(np.linalg.det(axes)) <= 1e-6 * np.prod(sizes):
        shown = ", ".join(f"{v:g}" for v in sizes)
        return f"a singular voxel-to-world affine (voxel sizes {shown} mm, axes not independent): it cannot be placed"
    return None


def window_bounds(
    image: np.ndarray, modality: str, body_part: str, window: str | list[float], percentiles: list[float]
) -> tuple[float, float]:
    """Intensity bounds for one volume: CT presets by body region, percentile clipping otherwise.

    Percentiles are taken over the finite voxels only (NaN and +-Inf, found in some float NIfTIs,
    are ignored); callers check :func:`contrast_problem` first, so some voxel is finite.
    """
    if isinstance(window, list):
        level, width = window
        return level - width / 2, level + width / 2
    if window in CT_WINDOWS:
        return ct_window(window)
    if window == "auto" and modality == "CT":
        return ct_window(auto_ct_preset(body_part))
    # Percentiles over a regular subsample: deterministic, and fast on 100M-voxel volumes.
    step = max(1, round((image.size / 2_000_000) ** (1 / 3))) if image.ndim == 3 else 1
    sample = image[::step, ::step, ::step] if image.ndim == 3 else image
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:  # the subsample missed the few finite voxels
        finite = image[np.isfinite(image)]
    lo, hi = np.percentile(finite, percentiles)
    return float(lo), (float(hi) if hi > lo else float(lo) + 1.0)


def to_uint8(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the finite values' min..max, so one NaN pixel does not blank a float
    TIFF) linearly to 0..255: clipped, rounded, NaN -> 0, +-Inf -> 255 / 0, all 0 when the range is
    empty. Computed in the values' own precision (float64 stays float64, anything else is float32), so
    each source renders as it always has."""
    arr = values.astype(np.float64 if values.dtype == np.float64 else np.float32, copy=False)
    if lo is None or hi is None:
        bounds = finite_range(arr) or (0.0, 0.0)
        lo = bounds[0] if lo is None else lo
        hi = bounds[1] if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (arr - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(np.nan_to_num(scaled, nan=0.0)), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grey or RGB PNG with no metadata chunks (no text, time, or ICC profile)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"PNG pixels must be uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` via a temp file + os.replace (never a half file); return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()
