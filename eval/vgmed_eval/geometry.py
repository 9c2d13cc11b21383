"""Exact mapping from original-image pixels to a model's visual token grid (pure functions).

Every supported family preprocesses an image with a chain of axis-aligned steps (pad to square,
resize, centre crop). Each step is an affine map per axis, so the whole chain is
``canvas = scale * original + offset``: the canvas is the pixel array the vision tower sees, and
the LLM's token grid tiles it with cells of ``cell_w x cell_h`` canvas pixels (patch size times
patch merging). Boxes are pixel-edge ``[x0, y0, x1, y1]`` with x1/y1 exclusive.

The published VGMED code rescales boxes straight onto the square input and ignores the
pad-to-square step; the chain here follows the processor's real steps instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from vgmed_build.errors import VgmedError
from vgmed_eval.numerics import CELL_TOLERANCE


class GeometryError(VgmedError, ValueError):
    """A box that cannot be placed on the token grid; ``kind`` names the reason for summaries."""

    kind = "geometry"


class BoxOutsideError(GeometryError):
    kind = "box_outside_image"


class NoCellError(GeometryError):
    kind = "box_covers_no_cell"


@dataclass(frozen=True)
class GridGeometry:
    """Original pixel edges -> canvas pixels -> token-grid cells, for one image size."""

    image_w: int
    image_h: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    canvas_w: int
    canvas_h: int
    cell_w: float
    cell_h: float
    rows: int
    cols: int
    # "authors": cell edges computed as the authors' code does (origin and size scaled separately, in
    # floats, no tolerance: 90 * 1.4 = 125.99999999999999 falls in cell 8, not 9), for --cell-edges authors
    cell_edges: str = "exact"

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def to_canvas(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Map a pixel-edge box to canvas coordinates (not clipped)."""
        x0, y0, x1, y1 = box
        return (
            x0 * self.scale_x + self.offset_x,
            y0 * self.scale_y + self.offset_y,
            x1 * self.scale_x + self.offset_x,
            y1 * self.scale_y + self.offset_y,
        )

    def cell_span(self, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """Cell index range ``(r0, c0, r1, c1)`` (r1/c1 exclusive) the box touches; empty when r1<=r0."""
        clipped = clip_box(box, self.image_w, self.image_h)
        cx0, cy0, cx1, cy1 = self.to_canvas(clipped)
        eps = CELL_TOLERANCE
        if self.cell_edges == "authors":
            x0, y0, x1, y1 = clipped
            cx1, cy1 = cx0 + (x1 - x0) * self.scale_x, cy0 + (y1 - y0) * self.scale_y
            eps = 0.0
        cx0, cx1 = max(cx0, 0.0), min(cx1, float(self.canvas_w))
        cy0, cy1 = max(cy0, 0.0), min(cy1, float(self.canvas_h))
        c0 = max(0, math.floor(cx0 / self.cell_w + eps))
        c1 = min(self.cols, math.ceil(cx1 / self.cell_w - eps))
        r0 = max(0, math.floor(cy0 / self.cell_h + eps))
        r1 = min(self.rows, math.ceil(cy1 / self.cell_h - eps))
        if cx1 <= cx0 or cy1 <= cy0:
            return r0, c0, r0, c0
        return r0, c0, r1, c1

    def box_to_cells(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Boolean ``(rows, cols)`` mask of the cells whose canvas footprint overlaps the box."""
        mask = np.zeros((self.rows, self.cols), dtype=bool)
        r0, c0, r1, c1 = self.cell_span(box)
        if r1 > r0 and c1 > c0:
            mask[r0:r1, c0:c1] = True
        return mask

    def boxes_to_cells(self, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
        """Union of :meth:`box_to_cells`; raises :class:`GeometryError` when the result is empty."""
        mask = np.zeros((self.rows, self.cols), dtype=bool)
        for box in boxes:
            if box_outside(box, self.image_w, self.image_h):
                raise BoxOutsideError(f"box {list(box)} lies outside the {self.image_w}x{self.image_h} image")
            mask |= self.box_to_cells(box)
        if not mask.any():
            raise NoCellError(
                f"boxes {[list(b) for b in boxes]} cover no cell of the {self.rows}x{self.cols} grid "
                "(cropped away by the preprocessing or empty)"
            )
        return mask

    def cell_to_image(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Pixel-edge footprint of one cell in the original image (for overlays)."""
        x0 = (col * self.cell_w - self.offset_x) / self.scale_x
        x1 = ((col + 1) * self.cell_w - self.offset_x) / self.scale_x
        y0 = (row * self.cell_h - self.offset_y) / self.scale_y
        y1 = ((row + 1) * self.cell_h - self.offset_y) / self.scale_y
        return x0, y0, x1, y1


def clip_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))


def box_outside(box, width: int, height: int) -> bool:
    """True when the box has no area inside the image."""
    x0, y0, x1, y1 = clip_box(box, width, height)
    return x1 <= x0 or y1 <= y0


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Output (h, w) of transformers' ``shortest_edge`` resize (the long side is truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int, *, qwen_vl_utils: bool = False
) -> tuple[int, int]:
    """Qwen-VL dynamic resolution: both sides multiples of ``factor``, area within bounds.

    ``qwen_vl_utils``: the copy in the qwen-vl-utils package (its ``fetch_image``), which keeps each
    rounded side at least one ``factor`` before checking the bounds (transformers' copy does not: a
    side under ``factor / 2`` rounds to 0 and the image is scaled up to ``min_pixels`` instead) and,
    when shrinking, floors without that minimum."""
    if max(height, width) / min(height, width) > 200:
        raise GeometryError(f"aspect ratio of {width}x{height} exceeds 200, which Qwen-VL rejects")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if qwen_vl_utils:
        h_bar, w_bar = max(factor, h_bar), max(factor, w_bar)
    least = 0 if qwen_vl_utils else factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(least, math.floor(height / beta / factor) * factor)
        w_bar = max(least, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def stretch_geometry(width: int, height: int, out_h: int, out_w: int, rows: int, cols: int) -> GridGeometry:
    """Resize straight to ``out_h x out_w`` (aspect not kept), grid tiles the whole canvas."""
    return GridGeometry(
        image_w=width, image_h=height,
        scale_x=out_w / width, scale_y=out_h / height, offset_x=0.0, offset_y=0.0,
        canvas_w=out_w, canvas_h=out_h, cell_w=out_w / cols, cell_h=out_h / rows, rows=rows, cols=cols,
    )


def clip_geometry(
    width: int,
    height: int,
    *,
    resize: int | tuple[int, int],
    crop: tuple[int, int] | None,
    patch: int,
    pad_to_square: bool,
) -> GridGeometry:
    """CLIP/LLaVA preprocessing: optional pad-to-square, resize, optional centre crop.

    ``resize`` is a shortest-edge length (int) or an exact ``(h, w)``; ``crop`` is ``(h, w)``.
    Padding mirrors ``LlavaImageProcessor.pad_to_square`` (image centred, offset floored); the crop
    mirrors transformers' ``center_crop`` (offset ``(size - crop) // 2``).
    """
    off_x = off_y = 0.0
    pad_w, pad_h = width, height
    if pad_to_square and width != height:
        side = max(width, height)
        off_x, off_y = float((side - width) // 2), float((side - height) // 2)
        pad_w = pad_h = side
    new_h, new_w = shortest_edge_size(pad_h, pad_w, resize) if isinstance(resize, int) else resize
    crop_h, crop_w = crop if crop is not None else (new_h, new_w)
    if crop_h > new_h or crop_w > new_w:
        raise GeometryError(f"crop {crop_w}x{crop_h} larger than the resized {new_w}x{new_h} image")
    sx, sy = new_w / pad_w, new_h / pad_h
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    return GridGeometry(
        image_w=width, image_h=height,
        scale_x=sx, scale_y=sy, offset_x=off_x * sx - left, offset_y=off_y * sy - top,
        canvas_w=crop_w, canvas_h=crop_h, cell_w=float(patch), cell_h=float(patch),
        rows=crop_h // patch, cols=crop_w // patch,
    )


# qwen-vl-utils' fetch_image bounds, in tokens of (2 x patch)^2 pixels, when a message gives none
QWEN_VL_UTILS_TOKENS = (4, 16384)


def qwen_pre_resize(width: int, height: int, patch: int) -> tuple[int, int]:
    """``(w, h)`` that qwen-vl-utils' ``fetch_image`` resizes a picture to before the processor sees it
    (``process_vision_info(..., image_patch_size=patch)`` with no min / max pixels in the message, as
    the authors' runs call it): smart_resize with factor 2 x patch and its default bounds."""
    factor = 2 * patch  # qwen-vl-utils' SPATIAL_MERGE_SIZE is a constant 2
    low, high = (n * factor * factor for n in QWEN_VL_UTILS_TOKENS)
    h, w = smart_resize(height, width, factor, low, high, qwen_vl_utils=True)
    return w, h


def qwen_geometry(
    width: int, height: int, *, patch: int, merge: int, min_pixels: int, max_pixels: int, pre_resize: bool = False
) -> GridGeometry:
    """Qwen2-VL / 2.5-VL / 3-VL: smart_resize, then ``merge x merge`` patches form one LLM token.

    ``pre_resize``: the picture first goes through qwen-vl-utils' resize (:func:`qwen_pre_resize`), and
    the processor's smart_resize applies to that (the authors' runs: a different grid on some sizes,
    e.g. 300 x 200 gives 10 x 6 tokens instead of 9 x 6). Two stretches make one, so the canvas is the
    pre-resized picture with ``rows x cols`` cells, the frame the authors' code maps boxes in (their
    float arithmetic is then reproduced exactly); the processor stretches each cell onto one token."""
    factor = patch * merge
    in_w, in_h = qwen_pre_resize(width, height, patch) if pre_resize else (width, height)
    out_h, out_w = smart_resize(in_h, in_w, factor, min_pixels, max_pixels)
    canvas_h, canvas_w = (in_h, in_w) if pre_resize else (out_h, out_w)
    return stretch_geometry(width, height, canvas_h, canvas_w, out_h // factor, out_w // factor)


def published_geometry(model: GridGeometry, mapping: str, cell_edges: str = "exact") -> GridGeometry:
    """The authors' box-to-grid mapping on the model's own grid: ``resize`` stretches the whole image onto
    the grid (their later code), ``pad`` pads it to a centred square first (their earliest notebook);
    ``model`` keeps the model's real preprocessing geometry (vgmed's default). ``cell_edges="authors"``
    computes the edges with the authors' float arithmetic (see :class:`GridGeometry`)."""
    if cell_edges != "exact":
        return replace(published_geometry(model, mapping), cell_edges=cell_edges)
    if mapping == "model":
        return model
    width, height = model.image_w, model.image_h
    canvas_w, canvas_h = model.cols * model.cell_w, model.rows * model.cell_h
    if mapping == "resize":
        return stretch_geometry(width, height, round(canvas_h), round(canvas_w), model.rows, model.cols)
    if mapping != "pad":
        raise ValueError(f"unknown box mapping {mapping!r}; choose model, resize or pad")
    side = max(width, height)
    sx, sy = canvas_w / side, canvas_h / side
    return GridGeometry(
        image_w=width, image_h=height, scale_x=sx, scale_y=sy,
        offset_x=((side - width) // 2) * sx, offset_y=((side - height) // 2) * sy,
        canvas_w=round(canvas_w), canvas_h=round(canvas_h), cell_w=model.cell_w, cell_h=model.cell_h,
        rows=model.rows, cols=model.cols,
    )


def tile_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """InternVL's dynamic tiling: the (cols, rows) arrangement of ``tile``-px tiles for an image.

    Candidates are every cols x rows with ``min_tiles <= cols * rows <= max_tiles``, visited by tile
    count; the one whose aspect ratio is closest to the image's wins, and on an exact tie a later
    (larger) one replaces it when the image's area exceeds half the larger canvas (so small images
    are not blown up). Same rule as InternVL's ``find_closest_aspect_ratio`` and transformers'
    ``get_optimal_tiled_canvas``.
    """
    candidates = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                         if min_tiles <= c * r <= max_tiles), key=lambda g: g[0] * g[1])
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), math.inf
    for cols, rows in candidates:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


TILE_GRIDS = ("whole", "tiles")  # the metric grids of a tiled (InternVL-style) input, TileLayout.grid


@dataclass(frozen=True)
class TokenCover:
    """Which cells of a metric grid each image token shows, so that a knockout of chosen cells reaches
    every token showing them (InternVL's tiles and thumbnail both show each region of the image).

    Token ``i`` (at ``tokens[i]``: its index among the image tokens, or its sequence position once
    placed with :meth:`at`) shows exactly the cells ``rows r0..r1-1 x cols c0..c1-1`` of the
    ``rows x cols`` metric grid, ``blocks[i] = (r0, r1, c0, c1)``.
    """

    rows: int
    cols: int
    tokens: np.ndarray  # (T,) int
    blocks: np.ndarray  # (T, 4) int: r0, r1, c0, c1

    @classmethod
    def identity(cls, rows: int, cols: int, tokens) -> TokenCover:
        """One token per cell, row-major (every grid without other image tokens)."""
        r, c = np.divmod(np.arange(rows * cols), cols)
        return cls(rows, cols, np.asarray(tokens, dtype=np.int64).reshape(-1), np.stack([r, r + 1, c, c + 1], 1))

    def at(self, positions) -> TokenCover:
        """The same cover with each token's index among the image tokens replaced by its position."""
        return replace(self, tokens=np.asarray(positions, dtype=np.int64).reshape(-1)[self.tokens])

    def inside(self, cells) -> np.ndarray:
        """(T,) bool: the tokens whose whole region lies within the chosen ``cells`` ((N,) or
        ``(rows, cols)`` bool); a token that also shows a cell not chosen is kept."""
        grid = np.asarray(cells, dtype=np.int64)
        if grid.size != self.rows * self.cols:
            raise ValueError(f"{grid.size} cells chosen on a {self.rows}x{self.cols} grid; give one per cell")
        grid = grid.reshape(self.rows, self.cols)
        total = np.zeros((self.rows + 1, self.cols + 1), dtype=np.int64)
        total[1:, 1:] = grid.cumsum(0).cumsum(1)
        r0, r1, c0, c1 = self.blocks.T
        chosen = total[r1, c1] - total[r0, c1] - total[r1, c0] + total[r0, c0]
        return chosen == (r1 - r0) * (c1 - c0)

    def chosen_tokens(self, cells) -> np.ndarray:
        """The ``tokens`` entries :meth:`inside` selects."""
        return self.tokens[self.inside(cells)]


@dataclass(frozen=True)
class TileLayout:
    """How an InternVL-style model tiles one image: ``cols x rows`` tiles of ``tile`` px, each
    ``cells x cells`` LLM tokens (after pixel shuffle), in row-major tile order, then a thumbnail tile
    (the whole image resized to one tile) when there is more than one tile.

    Two grids can carry the metrics: ``whole`` (the ``cells x cells`` grid of the whole image: the
    single tile, or the thumbnail) and ``tiles`` (the mosaic of all tiles, ``rows*cells x
    cols*cells``). Both are stretches of the image (aspect not kept), so each is a
    :class:`GridGeometry`; :meth:`token_index` says where each of its cells sits among the image's
    tokens.
    """

    image_w: int
    image_h: int
    cols: int
    rows: int
    tile: int
    cells: int
    thumbnail: bool
    transposed: bool = False  # InternVL 1.x pixel shuffle ("ps_version v1"), VILA: tokens of a tile column-major
    # The vision tower's patch side (0: the tile divides into cells exactly). Tokens merge 2 x 2 patches;
    # the tower sees whole patches only: VILA's SigLIP at 384 px sees 27 x 27 patches of 14 px (378 px,
    # the last 6 cut off), padded to 28 x 28 before the merge, so its 14 x 14 cells are 28 px and the
    # last row and column are half image, half padding.
    patch: int = 0

    def _stretch(self, cols: int, rows: int) -> GridGeometry:
        """The image resized to ``cols x rows`` tiles; one cell per token."""
        if not self.patch:
            return stretch_geometry(self.image_w, self.image_h, rows * self.tile, cols * self.tile,
                                    rows * self.cells, cols * self.cells)
        seen, cell = (self.tile // self.patch) * self.patch, 2 * self.patch
        if cols * rows > 1 and seen != self.tile:
            raise GeometryError(f"tiles of {self.tile} px are not whole {self.patch} px patches")
        return GridGeometry(image_w=self.image_w, image_h=self.image_h, scale_x=cols * self.tile / self.image_w,
                            scale_y=rows * self.tile / self.image_h, offset_x=0.0, offset_y=0.0,
                            canvas_w=cols * seen, canvas_h=rows * seen, cell_w=float(cell), cell_h=float(cell),
                            rows=rows * self.cells, cols=cols * self.cells)

    @property
    def n_tiles(self) -> int:
        return self.cols * self.rows + int(self.thumbnail)

    @property
    def n_tokens(self) -> int:
        return self.n_tiles * self.cells * self.cells

    def mosaic(self) -> GridGeometry:
        """The tiles together: the image resized to ``cols*tile x rows*tile``, one cell per token."""
        return self._stretch(self.cols, self.rows)

    def whole(self) -> GridGeometry:
        """The whole image on one tile (the only tile, or the thumbnail)."""
        return self._stretch(1, 1)

    def grid(self, name: str) -> GridGeometry:
        if name == "whole":
            return self.whole()
        if name == "tiles":
            return self.mosaic()
        raise ValueError(f"unknown tile grid {name!r}; choose {' or '.join(TILE_GRIDS)}")

    def _in_tile(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Token offset of a cell inside its tile."""
        return col * self.cells + row if self.transposed else row * self.cells + col

    def token_index(self, name: str) -> np.ndarray:
        """For each cell of grid ``name`` (row-major), its index among the image's ``n_tokens`` tokens."""
        n = self.cells
        if name == "whole":
            r, c = np.divmod(np.arange(n * n), n)
            first = (self.n_tiles - 1) * n * n  # the thumbnail is last; a single tile is first and last
            return first + self._in_tile(r, c)
        self.grid(name)
        r, c = np.divmod(np.arange(self.rows * n * self.cols * n), self.cols * n)
        tile = (r // n) * self.cols + c // n
        return tile * n * n + self._in_tile(r % n, c % n)

    def cover(self, name: str) -> TokenCover:
        """Which cells of grid ``name`` each of the image's ``n_tokens`` tokens shows (token order).

        Exact, no pixel arithmetic: the whole grid and the mosaic are stretches of the same image,
        so a ``whole`` cell is exactly a ``rows x cols`` block of mosaic cells. In mosaic cells a tile
        token is one cell and a thumbnail token a ``rows x cols`` block; on the ``whole`` grid both
        then fall inside one cell (a tile token shows part of it).
        """
        n = self.cells
        tile, k = np.divmod(np.arange(self.n_tokens), n * n)
        r, c = np.divmod(k, n)
        if self.transposed:
            r, c = c, r
        thumb = tile == self.cols * self.rows  # never true without a thumbnail
        tr, tc = np.divmod(tile, self.cols)
        hr, hc = np.where(thumb, self.rows, 1), np.where(thumb, self.cols, 1)  # block size in mosaic cells
        r0 = np.where(thumb, r * self.rows, tr * n + r)
        c0 = np.where(thumb, c * self.cols, tc * n + c)
        r1, c1 = r0 + hr, c0 + hc
        if name == "whole":  # mosaic cells -> whole cells: floor the start, ceil the end
            r0, r1, c0, c1 = r0 // self.rows, -(-r1 // self.rows), c0 // self.cols, -(-c1 // self.cols)
        grid = self.grid(name)
        return TokenCover(grid.rows, grid.cols, np.arange(self.n_tokens), np.stack([r0, r1, c0, c1], 1))

    def tile_cells(self, box) -> dict[int, np.ndarray]:
        """Which tiles a pixel-edge box reaches and which ``cells x cells`` cells of each (tile index in
        the model's order; the thumbnail, when there is one, is the last index)."""
        mosaic = self.mosaic().box_to_cells(box)
        out = {}
        for t in range(self.cols * self.rows):
            tr, tc = divmod(t, self.cols)
            part = mosaic[tr * self.cells:(tr + 1) * self.cells, tc * self.cells:(tc + 1) * self.cells]
            if part.any():
                out[t] = part
        if self.thumbnail:
            whole = self.whole().box_to_cells(box)
            if whole.any():
                out[self.n_tiles - 1] = whole
        return out


def tile_layout(width: int, height: int, *, tile: int, cells: int, min_tiles: int, max_tiles: int,
                tiling: bool, transposed: bool = False, patch: int = 0) -> TileLayout:
    """The :class:`TileLayout` InternVL's preprocessing gives an image (``tiling`` off: one tile)."""
    cols, rows = tile_grid(width, height, tile, min_tiles, max_tiles) if tiling and max_tiles > 1 else (1, 1)
    return TileLayout(image_w=width, image_h=height, cols=cols, rows=rows, tile=tile, cells=cells,
                      thumbnail=cols * rows > 1, transposed=transposed, patch=patch)
