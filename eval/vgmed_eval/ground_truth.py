"""Ground truth on a model's token grid (``--gt``), and equal-area random regions for chance levels.

``box``: the cells the boxes touch, by the exact published rule (:meth:`GridGeometry.boxes_to_cells`);
``mask``: the cells the region's mask touches; ``soft``: each cell weighted by the fraction of its area
the mask covers (the boxes when the record has no mask). Mask and soft go through the same chain as
the boxes (pad, resize, crop, patch merge): every pixel of the target is a rectangle of the original
image, mapped to the canvas, and its overlap with each cell is computed exactly, one axis at a time
(the overlap of two axis-aligned rectangles is the product of the overlaps of their sides).

A target is a :class:`Shape`: cells of a rectilinear grid over the original image (``x_edges``,
``y_edges``) and which of them are inside. A mask is its own pixel grid (cropped to its bounding box);
boxes become one by coordinate compression, so overlapping boxes are never counted twice. Moving the
target by ``(dx, dy)`` pixels moves its edges only, which is how the random regions of the chance
level are placed (:func:`random_offsets`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from vgmed_eval.geometry import GeometryError, GridGeometry, NoCellError, clip_box
from vgmed_eval.numerics import CELL_TOLERANCE
from vgmed_eval.protocol import GT_KINDS

# Overlaps shorter than this fraction of a cell side are floating-point noise of an edge that lands on
# a cell boundary (the same tolerance as the box rule's).


class NoMaskError(GeometryError):
    kind = "no_mask"


@dataclass(frozen=True)
class Shape:
    """A target as inside-flags over a rectilinear grid of the original image (pixel-edge coordinates)."""

    x_edges: np.ndarray  # (nx + 1,) increasing
    y_edges: np.ndarray  # (ny + 1,) increasing
    inside: np.ndarray  # (ny, nx) bool

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the inside part."""
        cols, rows = np.flatnonzero(self.inside.any(0)), np.flatnonzero(self.inside.any(1))
        return (float(self.x_edges[cols[0]]), float(self.y_edges[rows[0]]),
                float(self.x_edges[cols[-1] + 1]), float(self.y_edges[rows[-1] + 1]))

    def moved(self, dx: float, dy: float) -> Shape:
        return Shape(self.x_edges + dx, self.y_edges + dy, self.inside)


def mask_shape(mask: np.ndarray) -> Shape:
    """A boolean (height, width) mask as a :class:`Shape` of its bounding box's pixels."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise NoCellError("the mask is empty")
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return Shape(np.arange(c0, c1 + 1, dtype=np.float64), np.arange(r0, r1 + 1, dtype=np.float64),
                 mask[r0:r1, c0:c1])


def boxes_shape(boxes, width: int, height: int) -> Shape:
    """Pixel-edge boxes (clipped to the image) as a :class:`Shape` by coordinate compression."""
    clipped = [b for b in (clip_box(box, width, height) for box in boxes) if b[2] > b[0] and b[3] > b[1]]
    if not clipped:
        raise NoCellError(f"boxes {[list(b) for b in boxes]} have no area inside the {width}x{height} image")
    xs = np.unique([v for b in clipped for v in (b[0], b[2])])
    ys = np.unique([v for b in clipped for v in (b[1], b[3])])
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside = np.zeros((cy.size, cx.size), dtype=bool)
    for x0, y0, x1, y1 in clipped:
        inside |= ((cy > y0) & (cy < y1))[:, None] & ((cx > x0) & (cx < x1))[None, :]
    return Shape(xs, ys, inside)


def _overlaps(edges: np.ndarray, scale: float, offset: float, cell: float, n: int) -> np.ndarray:
    """(len(edges) - 1, n) canvas length of each interval of ``edges`` inside each of ``n`` cells."""
    canvas = np.asarray(edges, dtype=np.float64) * scale + offset
    lo, hi = canvas[:-1, None], canvas[1:, None]
    starts = np.arange(n, dtype=np.float64)[None, :] * cell
    length = np.clip(np.minimum(hi, starts + cell) - np.maximum(lo, starts), 0.0, None)
    return np.where(length > CELL_TOLERANCE * cell, length, 0.0)


def coverage(geometry: GridGeometry, shape: Shape) -> np.ndarray:
    """(rows, cols) fraction of each cell's canvas area that the shape covers (0..1)."""
    ox = _overlaps(shape.x_edges, geometry.scale_x, geometry.offset_x, geometry.cell_w, geometry.cols)
    oy = _overlaps(shape.y_edges, geometry.scale_y, geometry.offset_y, geometry.cell_h, geometry.rows)
    covered = oy.T @ shape.inside.astype(np.float64) @ ox
    return np.clip(covered / (geometry.cell_w * geometry.cell_h), 0.0, 1.0)


@dataclass(frozen=True)
class Target:
    """What a question's ground truth is made from: edge boxes and, when the release has it, the mask."""

    boxes: list
    mask: np.ndarray | None = None

    def shape(self, width: int, height: int) -> Shape:
        return mask_shape(self.mask) if self.mask is not None else boxes_shape(self.boxes, width, height)


def ground_truth(kind: str, geometry: GridGeometry, target: Target, shape: Shape | None = None,
                 offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The (rows, cols) ground truth of ``kind``: bool for box / mask, cell weights for soft.

    ``offset``: the target moved by ``(dx, dy)`` pixels (a chance-level draw); ``shape``: the target's
    :class:`Shape` when the caller has it already. :class:`GeometryError` when it covers no cell.
    """
    dx, dy = offset
    if kind == "box":
        return geometry.boxes_to_cells([(x0 + dx, y0 + dy, x1 + dx, y1 + dy) for x0, y0, x1, y1 in target.boxes])
    if kind not in GT_KINDS:
        raise ValueError(f"unknown ground truth {kind!r}; choose one of {', '.join(GT_KINDS)}")
    if kind == "mask" and target.mask is None:
        raise NoMaskError("--gt mask: the record has no mask (a published or box-only release); use --gt box or soft")
    shape = (shape or target.shape(geometry.image_w, geometry.image_h)).moved(dx, dy)
    cover = coverage(geometry, shape)
    if not cover.any():
        raise NoCellError(f"the {'mask' if target.mask is not None else 'boxes'} cover no cell of the "
                          f"{geometry.rows}x{geometry.cols} grid (cropped away by the preprocessing)")
    return cover > 0 if kind == "mask" else cover


def question_rng(seed: int, qid: str) -> np.random.Generator:
    """The random generator of question ``qid``'s random regions under ``seed``: the same regions in any
    order, batch or process (grounding's chance level, causal's random knockouts)."""
    return np.random.default_rng([seed, zlib.crc32(qid.encode("utf-8"))])


def random_offsets(rng: np.random.Generator, extent: tuple[float, float, float, float], width: int, height: int,
                   n: int) -> list[tuple[int, int]]:
    """``n`` whole-pixel moves that keep a target of ``extent`` inside the ``width`` x ``height`` image,
    uniform over all such moves (the target's own place included)."""
    x0, y0, x1, y1 = extent
    lo_x, hi_x = -int(np.floor(x0)), int(np.floor(width - x1))
    lo_y, hi_y = -int(np.floor(y0)), int(np.floor(height - y1))
    return [(int(dx), int(dy)) for dx, dy in zip(rng.integers(lo_x, max(hi_x, lo_x) + 1, size=n),
                                                 rng.integers(lo_y, max(hi_y, lo_y) + 1, size=n), strict=True)]


@dataclass(frozen=True)
class Truths:
    """What one question is scored against on one grid: the ``--gt`` ground truth, every kind the
    question has (mask needs a mask), and the ``--gt`` kind on equal-area random placements."""

    kind: str
    primary: np.ndarray
    by_kind: dict[str, np.ndarray]
    chance: list[np.ndarray]


def question_truths(kind: str, geometry: GridGeometry, target: Target, rng: np.random.Generator,
                    draws: int) -> Truths:
    """:class:`Truths` of one question (:class:`GeometryError` when its ``kind`` covers no cell).

    A chance draw moves the whole target (boxes, or mask) by whole pixels to a place where it lies
    inside the image, uniformly over such places; a draw the preprocessing crops off every cell is
    redrawn (at most ``4 * draws`` tries), so the random regions lie inside the content the model sees.
    """
    width, height = geometry.image_w, geometry.image_h
    primary = ground_truth(kind, geometry, target)
    shape = target.shape(width, height)
    by_kind = {kind: primary}
    for other in GT_KINDS:
        if other != kind:
            try:
                by_kind[other] = ground_truth(other, geometry, target, shape)
            except GeometryError:
                continue
    extent = boxes_shape(target.boxes, width, height).extent if kind == "box" else shape.extent
    chance: list[np.ndarray] = []
    for offset in random_offsets(rng, extent, width, height, 4 * draws) if draws else []:
        try:
            chance.append(ground_truth(kind, geometry, target, shape, offset))
        except GeometryError:
            continue
        if len(chance) == draws:
            break
    return Truths(kind, primary, by_kind, chance)
