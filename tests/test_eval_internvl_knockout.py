"""VGRefine's knockout on InternVL's tiled input: the chosen cells of the metric grid block every image token
that shows only those cells, on every tile and the thumbnail (``TileLayout.cover``), checked against cases
worked out by hand, against an independent pixel-rectangle implementation, and on a tiny model's attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vgmed_eval.adapters import load_adapter
from vgmed_eval.attention import blocked_tokens, capture, knockout
from vgmed_eval.geometry import TileLayout, TokenCover, tile_layout
from vgmed_eval.vgrefine import VGRefineConfig, VGRefiner


def test_hand_worked_cover_on_two_tiles():
    """896 x 448 -> 2 x 1 tiles of 16 x 16 tokens + thumbnail (tokens 512..767). Whole cell (3, 5) is the
    region of mosaic cells (3, 10) and (3, 11), both in tile 0: tokens 3*16+10, 3*16+11, and the
    thumbnail's 512 + 3*16+5. Column-major tiles (v1) read (r, c) at c*16+r."""
    lay = tile_layout(896, 448, tile=448, cells=16, min_tiles=1, max_tiles=12, tiling=True)
    whole = np.zeros((16, 16), bool)
    whole[3, 5] = True
    assert lay.cover("whole").chosen_tokens(whole).tolist() == [58, 59, 565]
    tiles = np.zeros((16, 32), bool)
    tiles[3, 10] = True  # half of the thumbnail token's region: the thumbnail token stays
    assert lay.cover("tiles").chosen_tokens(tiles).tolist() == [58]
    tiles[3, 11] = True
    assert lay.cover("tiles").chosen_tokens(tiles).tolist() == [58, 59, 565]
    tiles[3, 16] = True  # mosaic column 16 is tile 1's column 0: token 256 + 3*16
    assert lay.cover("tiles").chosen_tokens(tiles).tolist() == [58, 59, 304, 565]
    v1 = TileLayout(**{**lay.__dict__, "transposed": True})
    assert v1.cover("whole").chosen_tokens(whole).tolist() == [10 * 16 + 3, 11 * 16 + 3, 512 + 5 * 16 + 3]
    one = tile_layout(300, 300, tile=448, cells=16, min_tiles=1, max_tiles=12, tiling=True)
    assert one.n_tiles == 1 and one.cover("whole").chosen_tokens(whole).tolist() == [3 * 16 + 5]


def _token_rects(lay: TileLayout) -> np.ndarray:
    """Each token's footprint (x0, y0, x1, y1) in original pixels, from the tiles' pixels: tile t at
    (t // cols, t % cols) of the image resized to cols*tile x rows*tile, its tokens tile/cells px each;
    the thumbnail the whole image resized to one tile."""
    w, h, n, px = lay.image_w, lay.image_h, lay.cells, lay.tile / lay.cells
    out = []
    for t in range(lay.n_tiles):
        thumb = lay.thumbnail and t == lay.n_tiles - 1
        tr, tc = (0, 0) if thumb else divmod(t, lay.cols)
        sx, sy = (w / lay.tile, h / lay.tile) if thumb else (w / (lay.cols * lay.tile), h / (lay.rows * lay.tile))
        for k in range(n * n):
            c, r = divmod(k, n) if lay.transposed else divmod(k, n)[::-1]
            x0, y0 = tc * lay.tile + c * px, tr * lay.tile + r * px
            out.append((x0 * sx, y0 * sy, (x0 + px) * sx, (y0 + px) * sy))
    return np.array(out)


def _independent_chosen(lay: TileLayout, name: str, cells: np.ndarray) -> list[int]:
    """Tokens whose footprint is covered by the chosen cells' footprints (overlap areas add up)."""
    grid = lay.grid(name)
    chosen = [grid.cell_to_image(r, c) for r, c in zip(*np.nonzero(cells), strict=True)]
    picked = []
    for i, (x0, y0, x1, y1) in enumerate(_token_rects(lay)):
        area = sum(max(0.0, min(x1, a1) - max(x0, a0)) * max(0.0, min(y1, b1) - max(y0, b0))
                   for a0, b0, a1, b1 in chosen)
        if area >= (x1 - x0) * (y1 - y0) * (1 - 1e-9):
            picked.append(i)
    return picked


@pytest.mark.parametrize("transposed", [False, True])
def test_cover_equals_pixel_rectangles(transposed):
    """Random image sizes (1 to 12 tiles) and random rectangles of chosen cells on both grids: the cover's
    tokens are exactly those whose pixel footprint the chosen cells cover."""
    rng = np.random.default_rng(7)
    for _ in range(12):
        w, h = (int(v) for v in rng.integers(60, 2400, 2))
        lay = tile_layout(w, h, tile=448, cells=16, min_tiles=1, max_tiles=12, tiling=True, transposed=transposed)
        for name in ("whole", "tiles"):
            rows, cols = lay.grid(name).shape
            cells = np.zeros((rows, cols), bool)
            for _ in range(3):
                r0, c0 = int(rng.integers(0, rows)), int(rng.integers(0, cols))
                cells[r0:r0 + int(rng.integers(1, 6)), c0:c0 + int(rng.integers(1, 6))] = True
            got = lay.cover(name).chosen_tokens(cells).tolist()
            assert got == _independent_chosen(lay, name, cells), (w, h, name)
            assert len(got) >= cells.sum()  # every chosen cell's own token at least


def test_identity_cover_and_positions():
    cover = TokenCover.identity(2, 3, [10, 11, 12, 13, 14, 15])
    assert cover.chosen_tokens(np.array([True, False, False, False, False, True])).tolist() == [10, 15]
    placed = tile_layout(896, 448, tile=448, cells=16, min_tiles=1, max_tiles=12, tiling=True).cover("whole")
    placed = placed.at(np.arange(768) + 40)
    whole = np.zeros(256, bool)
    whole[3 * 16 + 5] = True
    assert placed.chosen_tokens(whole).tolist() == [98, 99, 605]
    with pytest.raises(ValueError, match="255 cells chosen on a 16x16 grid"):
        placed.inside(whole[:-1])


@pytest.fixture(scope="module")
def tiled():
    """The tiny InternVL on an image that tiles into 3 x 1 tiles of 8 x 8 tokens + thumbnail."""
    adapter = load_adapter("builtin:tiny-internvl")
    image = Image.fromarray(np.random.default_rng(5).integers(0, 255, (100, 260, 3), dtype=np.uint8))
    return adapter, image


def _cells_and_expected(adapter, image, batch):
    """Whole-grid cells rows 2-3 x cols 1-2, and the token positions the pixel rectangles say they cover."""
    cells = np.zeros((8, 8), bool)
    cells[2:4, 1:3] = True
    lay = adapter.layout(adapter.image_processor, adapter.model.config, image.width, image.height)
    assert (lay.cols, lay.rows, lay.thumbnail) == (3, 1, True)
    span = adapter.image_token_spans(batch.inputs["input_ids"])[0]
    expected = span[_independent_chosen(lay, "whole", cells)]
    assert len(expected) == 4 + 4 * 3  # four thumbnail tokens, each cell three tile tokens wide
    return cells, expected


def test_knocked_out_attention_on_every_tile(tiled):
    """A forward with the block: rows after the image give exactly zero weight to the covered tokens of
    the tiles and the thumbnail, and positive weight to every other image token."""
    adapter, image = tiled
    batch = adapter.build_inputs([image], ["Where is the lesion?"])
    cells, expected = _cells_and_expected(adapter, image, batch)
    span = adapter.image_token_spans(batch.inputs["input_ids"])[0]
    block = blocked_tokens(batch.covers, [cells.reshape(-1)], batch.inputs["input_ids"].shape[1])
    assert sorted(torch.nonzero(block[0]).flatten().tolist()) == sorted(expected.tolist())
    layer = adapter.n_layers - 1
    with torch.no_grad(), knockout(adapter.model, [layer], block, from_position=batch.question_start), \
            capture(adapter.model, [layer], [span]) as cap:
        adapter.model(**batch.inputs)
    weights = cap.maps[layer][0]  # (heads, all image tokens)
    hit = torch.isin(span, expected)
    assert torch.all(weights[:, hit] == 0) and torch.all(weights[:, ~hit] > 0)


def test_vgrefiner_knocks_out_tiles_and_thumbnail(tiled):
    """VGRefiner's knockout of whole-grid cells (prefix cache, batched) equals one full forward with the
    independently computed block, and differs from blocking the thumbnail's tokens alone (the old gap)."""
    adapter, image = tiled
    text = "Where is the lesion?"
    n = adapter.n_layers
    refiner = VGRefiner(adapter, VGRefineConfig(heads=((1, 0),), knockout_layers=(1, n - 1)), max_new_tokens=1,
                        keep_logits=True)
    query = refiner.query(refiner.prefix(image), image, text)
    batch = adapter.build_inputs([image], [text])
    cells, expected = _cells_and_expected(adapter, image, batch)
    _, (knocked,) = refiner.answer_without([query], [cells.reshape(-1)], baseline=False)
    length = batch.inputs["input_ids"].shape[1]

    def forward(positions):
        block = torch.zeros(1, length, dtype=torch.bool)
        block[0, positions] = True
        with torch.no_grad(), knockout(adapter.model, [1, n - 1], block, from_position=batch.question_start):
            return adapter.model(**batch.inputs).logits[0, -1]

    torch.testing.assert_close(knocked.step_logits[0], forward(expected), atol=1e-5, rtol=0)
    thumb_only = batch.grid_positions[0][torch.from_numpy(cells.reshape(-1))]
    assert (forward(thumb_only) - knocked.step_logits[0]).abs().max() > 1e-4
    assert knocked.knocked_out == 4 and knocked.grid_cells == 64
