"""InternVL (MedRegA's family): dynamic tiling geometry against transformers' real image processor and
processor, pixel shuffle order, the adapter's inputs and logits, and the commands end to end."""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_fixtures import make_release
from PIL import Image
from transformers import GotOcr2ImageProcessorPil, InternVLProcessor
from transformers.image_utils import PILImageResampling
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from vgmed_eval.adapters import adapter_from_args, load_adapter
from vgmed_eval.adapters.internvl import InternVLAdapter
from vgmed_eval.attention import capture
from vgmed_eval.cli import main
from vgmed_eval.distributed import SINGLE
from vgmed_eval.geometry import TileLayout, tile_grid, tile_layout
from vgmed_eval.protocol import VGMED
from vgmed_eval.reproduce import Options, plan_steps

NEAREST = PILImageResampling.NEAREST
SIZES = {"square": (300, 300), "wide": (700, 260), "tall": (200, 610), "small": (60, 40), "very-wide": (1300, 150)}


def test_tile_grid_matches_transformers():
    """Our tiling rule equals transformers' get_optimal_tiled_canvas on many sizes and tile bounds."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        w, h = (int(v) for v in rng.integers(8, 3000, 2))
        lo, hi = sorted(int(v) for v in rng.integers(1, 13, 2))
        assert tile_grid(w, h, 448, lo, hi) == get_optimal_tiled_canvas((h, w), (448, 448), lo, hi), (w, h, lo, hi)


def test_known_layouts():
    """Answers worked out by hand: 2:1 image -> 2 x 1 tiles + thumbnail; box on the right half."""
    lay = tile_layout(896, 448, tile=448, cells=16, min_tiles=1, max_tiles=12, tiling=True)
    assert (lay.cols, lay.rows, lay.thumbnail, lay.n_tokens) == (2, 1, True, 3 * 256)
    cells = lay.tile_cells((448, 0, 896, 224))  # the right tile's top half, the thumbnail's top-right quarter
    assert set(cells) == {1, 2}
    assert cells[1][:8].all() and not cells[1][8:].any()
    assert cells[2][:8, 8:].all() and cells[2].sum() == 64
    mosaic = lay.mosaic().box_to_cells((448, 0, 896, 224))
    assert mosaic.shape == (16, 32) and mosaic[:8, 16:].all() and mosaic.sum() == 128
    # a square image is one tile, no thumbnail: whole grid == the tile
    one = tile_layout(500, 500, tile=448, cells=16, min_tiles=1, max_tiles=12, tiling=True)
    assert (one.cols, one.rows, one.thumbnail, one.n_tokens) == (1, 1, False, 256)
    assert np.array_equal(one.token_index("whole"), np.arange(256))
    # tiling off (MedRegA): one 448 px tile whatever the shape
    off = tile_layout(896, 448, tile=448, cells=16, min_tiles=1, max_tiles=12, tiling=False)
    assert (off.cols, off.rows, off.n_tokens) == (1, 1, 256)
    # the tiles grid of a 2 x 1 layout: cell (0, 16) is the first token of tile 1; (15, 15) the last of tile 0
    idx = lay.token_index("tiles").reshape(16, 32)
    assert idx[0, 16] == 256 and idx[15, 15] == 255 and idx[0, 0] == 0
    assert np.array_equal(lay.token_index("whole"), 512 + np.arange(256))
    with pytest.raises(ValueError, match="choose whole or tiles"):
        lay.grid("thumb")


def _tile_values(ip, image: Image.Image, cells: int) -> np.ndarray:
    """The real processor's tiles, regrouped per cell: (tiles, cells, cells, values)."""
    px = ip(images=[image], resample=NEAREST, crop_to_patches=True, return_tensors="np")["pixel_values"]
    t, c, s, _ = px.shape
    k = s // cells
    return px.reshape(t, c, cells, k, cells, k).transpose(0, 2, 4, 1, 3, 5).reshape(t, cells, cells, -1)


def _unambiguous(lay: TileLayout, box) -> bool:
    """Every mapped edge at least one output pixel away from a cell boundary, on the mosaic and the thumbnail."""
    for geom in (lay.mosaic(), lay.whole()):
        cx0, cy0, cx1, cy1 = geom.to_canvas(box)
        if cx1 - cx0 < 2 or cy1 - cy0 < 2:
            return False
        for edge, cell in ((cx0, geom.cell_w), (cx1, geom.cell_w), (cy0, geom.cell_h), (cy1, geom.cell_h)):
            if 1e-6 < abs(edge - round(edge / cell) * cell) < 1.01:
                return False
    return True


@pytest.mark.parametrize("size_name", list(SIZES))
def test_box_cells_match_real_processor(size_name):
    """White box on black: the cells of each tile (and of the thumbnail) that the real GotOcr2 processor
    paints white are exactly the cells TileLayout.tile_cells names, at the real 448 px / 16 x 16 size."""
    ip = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True, max_patches=12)
    w, h = SIZES[size_name]
    lay = tile_layout(w, h, tile=448, cells=16, min_tiles=1, max_tiles=12, tiling=True)
    black, white = (_tile_values(ip, Image.fromarray(np.full((h, w, 3), v, np.uint8)), 16) for v in (0, 255))
    assert black.shape[0] == lay.n_tiles
    rng = np.random.default_rng(zlib.crc32(size_name.encode()))
    checked = 0
    for _ in range(80):
        bw, bh = int(rng.integers(2, w // 2 + 2)), int(rng.integers(2, h // 2 + 2))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        box = (x0, y0, x0 + bw, y0 + bh)
        if not _unambiguous(lay, box):
            continue
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[y0:y0 + bh, x0:x0 + bw] = 255
        values = _tile_values(ip, Image.fromarray(pixels), 16)
        real = ((values > (black + white) / 2) & (white > black)).any(-1)
        ours = np.zeros_like(real)
        for t, mask in lay.tile_cells(box).items():
            ours[t] = mask
        assert np.array_equal(ours, real), f"{size_name} box {box}"
        checked += 1
        if checked == 6:
            break
    assert checked >= 4


def test_pixel_shuffle_order():
    """transformers' pixel shuffle makes 2 x 2 patches one token in row-major order (the layout's v2);
    InternVL 1.x ('ps_version v1') leaves the token grid transposed, which the layout also knows."""
    model = load_adapter("builtin:tiny-internvl").model.model
    n = 8
    r, c = torch.meshgrid(torch.arange(2 * n), torch.arange(2 * n), indexing="ij")
    feats = torch.stack([r, c], -1).float()[None]  # (1, rows, cols, 2): each patch carries its position
    out = model.pixel_shuffle(feats, 0.5).reshape(n * n, 4, 2)  # per token: its 4 patches' (row, col)
    v2 = TileLayout(image_w=1, image_h=1, cols=1, rows=1, tile=16 * n, cells=n, thumbnail=False)
    v1 = TileLayout(image_w=1, image_h=1, cols=1, rows=1, tile=16 * n, cells=n, thumbnail=False, transposed=True)
    cell_r, cell_c = np.divmod(np.arange(n * n), n)
    token = v2.token_index("whole")
    assert torch.equal(out[token, 0], torch.tensor(np.stack([2 * cell_r, 2 * cell_c], -1)).float())
    original_v1 = out.reshape(n, n, 4, 2).transpose(0, 1).reshape(n * n, 4, 2)  # without the final swap
    assert torch.equal(original_v1[v1.token_index("whole"), 0], out[token, 0])


def _processor(adapter) -> InternVLProcessor:
    """transformers' own InternVLProcessor (its video processor needs torchvision: the class check is skipped)."""
    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda *a, **k: None
    try:
        return InternVLProcessor(image_processor=adapter.image_processor, tokenizer=adapter.tokenizer,
                                 image_seq_length=adapter.model.config.image_seq_length,
                                 chat_template=adapter.chat_template.replace("<image>", "<IMG_CONTEXT>"))
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


def test_inputs_and_logits_equal_transformers_processor():
    """Square, wide (2 x 1 tiles + thumbnail) and tall images in one batch: the adapter's tokens, pixels
    and logits equal those of transformers' InternVLProcessor + forward; the grid points at the thumbnail."""
    adapter = load_adapter("builtin:tiny-internvl")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in [(200, 200), (300, 120),
                                                                                          (90, 250)]]
    texts = ["Is there a liver in the image?", "Where is the lesion?", "What is the size of the mass?"]
    batch = adapter.build_inputs(images, texts)
    prompts = [adapter.prompt(t).replace("<image>", "<IMG_CONTEXT>") for t in texts]
    ref = _processor(adapter)(images=images, text=prompts, padding=True, return_tensors="pt")
    assert torch.equal(batch.inputs["input_ids"], ref["input_ids"])
    assert torch.equal(batch.inputs["pixel_values"], ref["pixel_values"])
    assert ref["pixel_values"].shape[0] == 1 + 3 + 4  # one tile; 2 x 1 + thumbnail; 1 x 3 + thumbnail
    with torch.no_grad():
        ours = adapter.model(**batch.inputs).logits
        theirs = adapter.model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                               pixel_values=ref["pixel_values"]).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    ctx = adapter.image_token_id
    for b, positions in enumerate(batch.grid_positions):
        span = torch.nonzero(batch.inputs["input_ids"][b] == ctx).flatten()
        assert torch.equal(positions, span[-64:])  # the whole-image grid: the thumbnail (or the only tile)


def test_tiles_grid_positions_follow_the_tiles():
    """grid 'tiles': cell (r, c) of the mosaic reads the token of tile (r // 8, c // 8) at (r % 8, c % 8);
    checked on the pixels: the processor's tile holding that token shows that mosaic cell's pixels."""
    adapter = load_adapter("builtin:tiny-internvl")
    adapter.grid = "tiles"
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (100, 260, 3), dtype=np.uint8))
    batch = adapter.build_inputs([image], ["Where is the lesion?"])
    geom = batch.geometries[0]
    assert geom.shape == (8, 24)  # 3 x 1 tiles of 8 x 8 tokens
    resized = np.asarray(image.resize((3 * 224, 224), Image.BICUBIC)).astype(np.float32)
    span = torch.nonzero(batch.inputs["input_ids"][0] == adapter.image_token_id).flatten().tolist()
    ip = adapter.image_processor
    mean, std = np.array(ip.image_mean) * 255, np.array(ip.image_std) * 255
    px = batch.inputs["pixel_values"].numpy()
    for cell, pos in zip([(0, 0), (3, 9), (7, 23), (5, 16)], [geom.cols * r + c for r, c in [(0, 0), (3, 9), (7, 23),
                                                                                               (5, 16)]],
                         strict=True):
        k = span.index(int(batch.grid_positions[0][pos]))
        tile, within = divmod(k, 64)
        tr, tc = divmod(within, 8)
        shown = px[tile, :, tr * 28:(tr + 1) * 28, tc * 28:(tc + 1) * 28].transpose(1, 2, 0) * std + mean
        r, c = cell
        expected = resized[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28]
        np.testing.assert_allclose(shown, expected, atol=1.5)


def test_grounding_and_maps_on_tiles_grid(tmp_path):
    """Capture on the tiles grid: maps have the mosaic's shape, and the whole-grid maps are the thumbnail's."""
    adapter = load_adapter("builtin:tiny-internvl")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (120, 300, 3), dtype=np.uint8))
    whole = adapter.build_inputs([image], ["Is there a liver?"])
    adapter.grid = "tiles"
    tiles = adapter.build_inputs([image], ["Is there a liver?"])
    assert torch.equal(whole.inputs["input_ids"], tiles.inputs["input_ids"])
    with torch.no_grad(), capture(adapter.model, [2], whole.grid_positions + tiles.grid_positions) as cap:
        adapter.model(**{k: torch.cat([v, v]) for k, v in whole.inputs.items()})
    assert cap.maps[2].shape == (2, adapter.n_heads, 8 * 16)  # NaN beyond the 64 cells of the whole grid
    assert torch.isnan(cap.maps[2][0, :, 64:]).all() and not torch.isnan(cap.maps[2][1]).any()


def test_reproduce_end_to_end(tmp_path):
    """grounding (release + control), heads, VQA with VGRefine: the whole chain on the tiny InternVL."""
    make_release(tmp_path / "release")
    make_release(tmp_path / "control", errors=False)
    out = tmp_path / "out"
    fix = Path(__file__).parent / "fixtures" / "vqa" / "slake"
    argv = ["reproduce", "--model", "builtin:tiny-internvl", "--vgmed", str(tmp_path / "release"), "--out", str(out),
            "--control-release", str(tmp_path / "control"), "--top-k", "3", "--max-new-tokens", "2",
            "--bootstrap", "20", "--batch-size", "4", "--benchmark", f"slake={fix}"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert all(s["status"] == "done" for s in report["steps"].values())
    summary = json.loads((out / "grounding" / "summary.json").read_text())
    # the whole image is stretched onto the grid (no crop, unlike tiny-llava's 6): all 7 scorable boxes count
    assert summary["n_ok"] == 7 and "box_covers_no_cell" not in summary["errors_by_kind"]
    refined = (out / "vqa" / "slake" / "predictions_vgrefine.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in refined]
    assert rows and json.loads((out / "heads.json").read_text())["family"] == "internvl"


def _model_args(model: str, grid: str | None) -> argparse.Namespace:
    return argparse.Namespace(model=model, dtype="auto", device="cpu", chat_template=None, device_map=None,
                              max_memory=None, offload_folder=None, min_pixels=None, max_pixels=None,
                              internvl_grid=grid)


def test_internvl_grid_option_reaches_the_adapter():
    """--internvl-grid through adapter_from_args: tiles sets the mosaic grid, nothing keeps whole, and a family
    with one grid refuses tiles (whole is its only grid) with the option's name."""
    whole = adapter_from_args(_model_args("builtin:tiny-internvl", None), SINGLE, VGMED)
    assert whole.grid == "whole" and whole.geometry(384, 200).shape == (8, 8)
    tiles = adapter_from_args(_model_args("builtin:tiny-internvl", "tiles"), SINGLE, VGMED)
    assert tiles.grid == "tiles" and tiles.geometry(384, 200).shape == (8, 16)  # 2 x 1 tiles on the tiny model
    assert InternVLAdapter.grid == "whole"  # the instance changed, not the family's default
    assert adapter_from_args(_model_args("builtin:tiny-qwen2_vl", "whole"), SINGLE, VGMED).family == "qwen2_vl"
    with pytest.raises(ValueError, match="--internvl-grid tiles applies to InternVL-family models only, not qwen2_vl"):
        adapter_from_args(_model_args("builtin:tiny-qwen2_vl", "tiles"), SINGLE, VGMED)


def test_grounding_on_the_tiles_grid_from_the_command_line(tmp_path, capsys):
    """`grounding --internvl-grid tiles`: each image is measured on its own mosaic (square 512 -> 2 x 2 tiles,
    wide 384 x 200 and tiny 40 x 24 -> 2 x 1, tall 180 x 300 -> 1 x 2), recorded in run.json; without
    the option every image has the 8 x 8 whole grid. A one-grid model refuses tiles (exit 2)."""
    import pandas as pd

    make_release(tmp_path / "release")
    shapes = {}
    for grid in (None, "tiles"):
        out = tmp_path / f"out-{grid}"
        argv = ["grounding", "--release", str(tmp_path / "release"), "--model", "builtin:tiny-internvl", "--out",
                str(out), "--layers", "1", "--bootstrap", "5", "--chance-draws", "0", "--no-progress"]
        assert main(argv + (["--internvl-grid", grid] if grid else [])) == 0  # bad items are recorded, not fatal
        rows = pd.read_parquet(out / "per_layer.parquet")
        shapes[grid] = {r.image.split("/")[-1]: (r.grid_rows, r.grid_cols) for r in rows.itertuples()}
        assert json.loads((out / "run.json").read_text())["flags"]["internvl_grid"] == grid
    assert set(shapes[None].values()) == {(8, 8)}
    assert shapes["tiles"] == {"square.png": (16, 16), "wide.png": (8, 16), "tall.png": (16, 8), "tiny.png": (8, 16)}
    argv = ["grounding", "--release", str(tmp_path / "release"), "--model", "builtin:tiny-qwen2_vl", "--out",
            str(tmp_path / "qwen"), "--internvl-grid", "tiles", "--no-progress"]
    assert main(argv) == 2
    assert "--internvl-grid tiles applies to InternVL-family models only" in capsys.readouterr().err


def test_internvl_grid_in_help_and_reproduce_plan(tmp_path, capsys):
    """Every model-loading command explains the option; reproduce passes it to grounding and VQA only when given."""
    for command in ("grounding", "vqa", "causal", "reproduce"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--internvl-grid {whole,tiles}" in capsys.readouterr().out
    base = Options(model="builtin:tiny-internvl", vgmed=tmp_path, out=tmp_path / "out",
                   benchmarks={"slake": tmp_path})
    for grid in (None, "tiles"):
        steps = plan_steps(replace(base, internvl_grid=grid))
        assert [s.name for s in steps] == ["grounding", "heads", "vqa slake"]
        for step in steps:
            given = step.argv[step.argv.index("--internvl-grid") + 1] if "--internvl-grid" in step.argv else None
            assert given == (grid if step.name != "heads" else None), step.name
