"""From label maps to regions: per-slice areas, slice selection, component boxes, laterality.

Pure and vectorised. Boxes are pixel-edge ``[x0, y0, x1, y1]`` of the rendered slice with x1/y1
exclusive (a mask that is only column 5 gives x0 = 5, x1 = 6); centroids use the same edge
coordinates (that pixel's centroid x is 5.5). Patient side comes from RAS world x through the slice's
pixel -> world map, never from image columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cc3d
import numpy as np

from vgmed_build.imaging import SliceGeometry

# Largest label value counted with a dense per-slice bincount; above it a slice is counted by sorting.
_MAX_DENSE_VALUE = 1 << 20


@dataclass
class RegionGeometry:
    """One label on one rendered slice: its kept components and the facts questions are built from."""

    value: int
    boxes: list[list[int]]  # one [x0, y0, x1, y1] per kept component, sorted
    area_px: int  # pixels of the kept components
    area_ratio: float  # area_px / image pixels
    centroid: tuple[float, float]  # [x, y] in edge coordinates
    side: Literal["left", "right", "midline", "bilateral", "unknown"]
    mask: np.ndarray | None = None  # (height, width) bool: the kept components' pixels (with_masks only)


def mask_box(mask: np.ndarray) -> list[int]:
    """Pixel-edge [x0, y0, x1, y1] (x1, y1 exclusive) of a mask's foreground (one object's box)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def slice_label_areas(label_map: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel count of every label value on every slice along ``axis``, in one pass over the volume.

    Returns ``(values, areas)``: the label values present (background 0 excluded) and an
    ``(n_slices, len(values))`` count array. One ``bincount`` per slice counts all labels at once
    (the slice is in cache for its max and its bincount), instead of one pass per label.
    """
    n_slices = label_map.shape[axis]
    per_slice: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(n_slices):
        sl = np.ravel(label_map[(slice(None),) * axis + (k,)], order="K")
        if sl.size and int(sl.max()) > _MAX_DENSE_VALUE:  # sparse huge values: sort instead
            per_slice.append(np.unique(sl, return_counts=True))
            continue
        counts = np.bincount(sl) if sl.size else np.zeros(1, np.int64)
        present = np.flatnonzero(counts)
        per_slice.append((present, counts[present]))
    values = np.unique(np.concatenate([v for v, _ in per_slice] + [np.zeros(0, np.int64)]))
    values = values[values != 0].astype(np.int64)
    areas = np.zeros((n_slices, values.size), dtype=np.int64)
    for k, (vals, counts) in enumerate(per_slice):
        nonzero = vals != 0
        areas[k, np.searchsorted(values, vals[nonzero])] = counts[nonzero]
    return values, areas


def select_slices(areas: np.ndarray, policy: str, min_area: float, every_n: int = 1) -> dict[int, list[int]]:
    """Choose slices per structure (columns of ``areas``): slice index -> structure columns.

    ``largest``: each structure's largest-area slice (first one on ties); ``all``: every slice where
    the structure covers ``min_area``; ``every_n``: those slices whose index is a multiple of n.
    A structure never covering ``min_area`` is not selected.
    """
    ok = areas >= max(min_area, 1e-9)
    if policy == "largest":
        best = areas.argmax(axis=0)
        cols = np.flatnonzero(ok[best, np.arange(areas.shape[1])])
        pairs = zip(best[cols].tolist(), cols.tolist(), strict=True)
    elif policy in ("all", "every_n"):
        if policy == "every_n":
            ok = ok & (np.arange(areas.shape[0]) % every_n == 0)[:, None]
        pairs = zip(*(a.tolist() for a in np.nonzero(ok)), strict=True)
    else:
        raise ValueError(f"unknown slice policy {policy!r}")
    chosen: dict[int, list[int]] = {}
    for s, col in pairs:
        chosen.setdefault(s, []).append(col)
    return chosen


def extract_regions(
    label_slice: np.ndarray,
    values: list[int] | None = None,
    *,
    min_component_px: int = 0,
    max_area_ratio: float = 1.0,
    connectivity: int = 2,
    geometry: SliceGeometry | None = None,
    midline_mm: float = 0.0,
    margin_mm: float = 5.0,
    with_masks: bool = False,
) -> dict[int, RegionGeometry]:
    """Regions of ``values`` (default: all non-zero) on one rendered label slice.

    All labels are split into connected components at once (pixels connect only to equal values),
    then sizes, centroids and boxes come from bincounts over the foreground and find_objects.
    Components under ``min_component_px`` are dropped, then labels covering more than
    ``max_area_ratio`` of the image. Without ``geometry`` the side is 'unknown'. ``with_masks``: each
    region also carries its pixel mask (what the release ships for mask ground truth).
    """
    height, width = label_slice.shape
    lab = label_slice
    if values is not None:  # keep only the wanted labels: one lookup-table gather, not one pass per value
        top = max(int(label_slice.max()), max(values, default=0))
        if top > _MAX_DENSE_VALUE:
            lab = np.where(np.isin(label_slice, values), label_slice, 0)
        else:
            lut = np.zeros(top + 1, dtype=label_slice.dtype)
            lut[list(values)] = list(values)
            lab = lut[label_slice]
    rows_any, cols_any = lab.any(axis=1), lab.any(axis=0)
    if not rows_any.any():
        return {}
    r0, r1 = np.flatnonzero(rows_any)[[0, -1]]
    c0, c1 = np.flatnonzero(cols_any)[[0, -1]]
    crop = lab[r0 : r1 + 1, c0 : c1 + 1].copy(order="K")  # contiguous in the layout of the source
    # One multi-label labelling (pixels connect only to equal values) with sizes, boxes and centroids
    # from the same compiled library; background is component 0.
    cc = cc3d.connected_components(crop, connectivity=4 if connectivity == 1 else 8)
    stats = cc3d.statistics(cc, no_slice_conversion=True)
    all_sizes = stats["voxel_counts"].astype(np.int64)
    kept = np.flatnonzero(all_sizes[1:] >= min_component_px) + 1
    sizes = all_sizes[kept]
    bounds = stats["bounding_boxes"][kept].astype(np.int64)      # row0, row1, col0, col1 (inclusive)
    boxes = np.stack([bounds[:, 2] + c0, bounds[:, 0] + r0, bounds[:, 3] + 1 + c0, bounds[:, 1] + 1 + r0], axis=1)
    cy = stats["centroids"][kept, 0] + r0                        # pixel-centre (index) coordinates
    cx = stats["centroids"][kept, 1] + c0
    # A component's label value: its first pixel on its top row.
    comp_value = np.empty(kept.size, dtype=np.int64)
    for j, (i, (top, _, left, right)) in enumerate(zip(kept.tolist(), bounds.tolist(), strict=True)):
        row = cc[top, left : right + 1]
        comp_value[j] = crop[top, left + int(np.argmax(row == i))]
    sides = (
        _component_sides(geometry, boxes, cy, cx, midline_mm, margin_mm)
        if geometry is not None
        else np.full(kept.size, "unknown")
    )
    regions: dict[int, RegionGeometry] = {}
    total = height * width
    for value in np.unique(comp_value).tolist():
        idx = np.flatnonzero(comp_value == value)
        area = int(sizes[idx].sum())
        if area / total > max_area_ratio:
            continue
        order = np.lexsort(boxes[idx].T[::-1])
        idx = idx[order]
        weights = sizes[idx] / area
        regions[value] = RegionGeometry(
            value=int(value),
            boxes=boxes[idx].tolist(),
            area_px=area,
            area_ratio=area / total,
            centroid=(float(weights @ cx[idx]) + 0.5, float(weights @ cy[idx]) + 0.5),
            side=_region_side(sides[idx], sizes[idx]),
            mask=_region_mask(cc, kept[idx], boxes[idx], r0, c0, (height, width)) if with_masks else None,
        )
    return regions


def _region_mask(cc: np.ndarray, components: np.ndarray, boxes: np.ndarray, r0: int, c0: int,
                 shape: tuple[int, int]) -> np.ndarray:
    """Full-image mask of ``components`` of the cropped labelling ``cc`` (read only inside their boxes)."""
    x0, y0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
    x1, y1 = int(boxes[:, 2].max()), int(boxes[:, 3].max())
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = np.isin(cc[y0 - r0:y1 - r0, x0 - c0:x1 - c0], components)
    return mask


def _component_sides(
    geometry: SliceGeometry, boxes: np.ndarray, cy: np.ndarray, cx: np.ndarray, midline: float, margin: float
) -> np.ndarray:
    """Side of each component: wholly on one side of the midline, or straddling it.

    A straddling component is 'midline' when its centroid lies within ``margin`` mm of the
    midline, otherwise it belongs to the side of its centroid. RAS: x > midline is the patient's right.
    """
    corner_r = np.stack([boxes[:, 1], boxes[:, 1], boxes[:, 3] - 1, boxes[:, 3] - 1], axis=1)
    corner_c = np.stack([boxes[:, 0], boxes[:, 2] - 1, boxes[:, 0], boxes[:, 2] - 1], axis=1)
    corner_x = geometry.world_x(corner_r, corner_c)
    xmin, xmax = corner_x.min(axis=1), corner_x.max(axis=1)
    x = geometry.world_x(cy, cx)
    straddling = np.where(np.abs(x - midline) <= margin, "midline", np.where(x > midline, "right", "left"))
    return np.where(xmin > midline, "right", np.where(xmax < midline, "left", straddling))


def _region_side(sides: np.ndarray, sizes: np.ndarray) -> str:
    """Left and right components -> bilateral; otherwise the side of the largest component."""
    present = set(sides.tolist())
    if {"left", "right"} <= present:
        return "bilateral"
    return str(sides[int(np.argmax(sizes))])


def mask_slice_areas(masks: list[np.ndarray], axis: int) -> np.ndarray:
    """``(n_slices, n_masks)`` pixel counts of possibly overlapping boolean masks along ``axis``."""
    in_plane = tuple(a for a in range(3) if a != axis)
    return np.stack([np.count_nonzero(m, axis=in_plane) for m in masks], axis=1)
