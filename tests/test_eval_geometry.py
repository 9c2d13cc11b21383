"""Box -> grid cells against each family's REAL image processor.

An image is black except a white box; the real processor (transformers' PIL backend, nearest
resampling so that every output pixel is a copy of one input pixel) turns it into model input, and a
cell is "bright" when one of its pixels is closer to the white than to the black rendering. The
cells computed by the adapter's geometry must equal the bright cells. Boxes whose mapped edges fall
within one output pixel of a cell boundary are skipped: there the sampling filter, not the geometry,
decides whether a sliver shows up.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ImageProcessorPil,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    LlavaConfig,
    LlavaImageProcessorPil,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    Qwen2VLImageProcessorPil,
    SiglipVisionConfig,
)
from transformers.image_utils import PILImageResampling

from vgmed_eval.adapters import MODEL_ADAPTERS
from vgmed_eval.geometry import BoxOutsideError, GridGeometry, NoCellError

NEAREST = PILImageResampling.NEAREST
SIZES = {"square": (200, 200), "wide": (300, 120), "tall": (90, 250), "tiny": (20, 12)}


def _clip(side):
    return CLIPVisionConfig(image_size=side, patch_size=14)


def _pinpoints(s):
    return [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]


# name -> (family, image processor, model config); real checkpoint sizes where cheap, tiny sizes too.
SETUPS = {
    "llava-hf-clip-336": ("llava", CLIPImageProcessorPil(size={"shortest_edge": 336},
                                                         crop_size={"height": 336, "width": 336}),
                          LlavaConfig(vision_config=_clip(336))),
    "llava-pad-336": ("llava", LlavaImageProcessorPil(size={"shortest_edge": 336}, do_pad=True,
                                                      crop_size={"height": 336, "width": 336}),
                      LlavaConfig(vision_config=_clip(336))),
    "llava-next-336": ("llava_next", LlavaNextImageProcessorPil(size={"shortest_edge": 336},
                                                                crop_size={"height": 336, "width": 336},
                                                                image_grid_pinpoints=_pinpoints(336)),
                       LlavaNextConfig(vision_config=_clip(336), image_grid_pinpoints=_pinpoints(336))),
    "qwen2-vl": ("qwen2_vl", Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 256), None),
    "qwen2.5-vl-tiny": ("qwen2_5_vl", Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 16,
                                                               max_pixels=28 * 28 * 64), None),
    "qwen3-vl": ("qwen3_vl", Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, image_mean=[0.5] * 3,
                                                      image_std=[0.5] * 3, min_pixels=32 * 32 * 16,
                                                      max_pixels=32 * 32 * 256), None),
    "gemma3-896": ("gemma3", Gemma3ImageProcessorPil(size={"height": 896, "width": 896}),
                   Gemma3Config(vision_config=SiglipVisionConfig(image_size=896, patch_size=14),
                                mm_tokens_per_image=256)),
    # the authors' gt_tokens_huatuo_bio: a 224 px tower with 16 px patches (BiomedCLIP ViT-B/16) -> 14 x 14
    "llava-224-patch16": ("llava", CLIPImageProcessorPil(size={"shortest_edge": 224},
                                                         crop_size={"height": 224, "width": 224}),
                          LlavaConfig(vision_config=CLIPVisionConfig(image_size=224, patch_size=16))),
    # InternVL / MedRegA: the whole-image grid (the only 448 px tile, or the thumbnail after the tiles)
    "internvl-448": ("internvl", GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True,
                                                          max_patches=12), InternVLConfig(image_seq_length=256)),
    "internvl-448-no-tiling": ("internvl", GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}),
                               InternVLConfig(image_seq_length=256)),
    "gemma3-tiny": ("gemma3", Gemma3ImageProcessorPil(size={"height": 224, "width": 224}),
                    Gemma3Config(vision_config=SiglipVisionConfig(image_size=224, patch_size=14),
                                 mm_tokens_per_image=64)),
}


def cell_values(family: str, ip, config, image: Image.Image, geom: GridGeometry) -> np.ndarray:
    """Processor output regrouped per grid cell: (rows, cols, values)."""
    if family == "internvl":  # the last tile: the thumbnail, or the only tile
        px = ip(images=[image], resample=NEAREST, crop_to_patches=ip.crop_to_patches,
                return_tensors="np")["pixel_values"][-1]
    elif family == "gemma3":
        px = ip(images=[image], resample=NEAREST, do_pan_and_scan=False, return_tensors="np")["pixel_values"][0]
    elif family.startswith("qwen"):
        out = ip(images=[image], resample=NEAREST, return_tensors="np")
        t, h, w = out["image_grid_thw"][0]
        m = ip.merge_size
        assert (h // m, w // m) == geom.shape, "grid of the processor differs from the geometry"
        return out["pixel_values"].reshape(h // m, w // m, -1)
    else:
        px = ip(images=[image], resample=NEAREST, return_tensors="np")["pixel_values"][0]
        if family == "llava_next":
            px = px[0]  # the base image (whole image resized to the square input)
    c, hh, ww = px.shape
    assert (hh, ww) == (geom.canvas_h, geom.canvas_w)
    ch, cw = hh // geom.rows, ww // geom.cols
    return px.reshape(c, geom.rows, ch, geom.cols, cw).transpose(1, 3, 0, 2, 4).reshape(geom.rows, geom.cols, -1)


def processor_cells(family, ip, config, size, box, geom, refs) -> np.ndarray:
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 255
    values = cell_values(family, ip, config, Image.fromarray(pixels), geom)
    black, white = refs
    bright = (values > (black + white) / 2) & (white > black)
    return bright.any(-1)


def _ambiguous(geom: GridGeometry, box) -> bool:
    """A mapped edge strictly inside a cell but within one output pixel of its boundary (a sliver the
    sampling may or may not show), or a box narrower than two output pixels."""
    cx0, cy0, cx1, cy1 = geom.to_canvas(box)
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        return True
    for lo, hi, cell, limit in ((cx0, cx1, geom.cell_w, geom.canvas_w), (cy0, cy1, geom.cell_h, geom.canvas_h)):
        for edge in (lo, hi):
            if -1.01 < edge < limit + 1.01:
                nearest = round(edge / cell) * cell
                if 1e-6 < abs(edge - nearest) < 1.01:
                    return True
    return False


def _random_boxes(rng, w, h, n):
    boxes = []
    for _ in range(n):
        bw = int(rng.integers(1, max(2, w // 2) + 1))
        bh = int(rng.integers(1, max(2, h // 2) + 1))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        boxes.append((x0, y0, x0 + bw, y0 + bh))
    return boxes


@pytest.mark.parametrize("size_name", list(SIZES))
@pytest.mark.parametrize("setup", list(SETUPS))
def test_cells_match_real_processor(setup, size_name):
    family, ip, config = SETUPS[setup]
    w, h = SIZES[size_name]
    geom = MODEL_ADAPTERS.get(family).grid_geometry(ip, config, w, h)
    refs = []
    for value in (0, 255):
        refs.append(cell_values(family, ip, config, Image.fromarray(np.full((h, w, 3), value, np.uint8)), geom))
    rng = np.random.default_rng(zlib.crc32(f"{setup}/{size_name}".encode()))
    checked = 0
    for box in _random_boxes(rng, w, h, 60):
        if _ambiguous(geom, box):
            continue
        ours = geom.box_to_cells(box)
        real = processor_cells(family, ip, config, (w, h), box, geom, refs)
        assert np.array_equal(ours, real), (
            f"{setup} {size_name} box {box}:\nours\n{ours.astype(int)}\nreal\n{real.astype(int)}")
        checked += 1
        if checked == 10:
            break
    assert checked >= 8, f"only {checked} unambiguous boxes"


def _naive_cells(box, w, h, rows, cols):
    """The published mapping: rescale the box straight onto the square grid, ignoring padding."""
    x0, y0, x1, y1 = box
    mask = np.zeros((rows, cols), bool)
    c0, c1 = int(np.floor(x0 / w * cols)), int(np.ceil(x1 / w * cols))
    r0, r1 = int(np.floor(y0 / h * rows)), int(np.ceil(y1 / h * rows))
    mask[r0:r1, c0:c1] = True
    return mask


def test_published_pad_to_square_mistake_not_reproduced():
    family, ip, config = SETUPS["llava-pad-336"]
    w, h = SIZES["wide"]
    geom = MODEL_ADAPTERS.get(family).grid_geometry(ip, config, w, h)
    refs = [cell_values(family, ip, config, Image.fromarray(np.full((h, w, 3), v, np.uint8)), geom)
            for v in (0, 255)]
    box = (40, 10, 120, 50)
    real = processor_cells(family, ip, config, (w, h), box, geom, refs)
    assert np.array_equal(geom.box_to_cells(box), real)
    naive = _naive_cells(box, w, h, geom.rows, geom.cols)
    assert not np.array_equal(naive, real)
    # the padded image occupies only the middle rows: the naive mapping puts cells on the padding
    assert naive[:5].any() and not real[:5].any()


def test_box_errors():
    family, ip, config = SETUPS["llava-hf-clip-336"]
    geom = MODEL_ADAPTERS.get(family).grid_geometry(ip, config, 300, 120)
    with pytest.raises(BoxOutsideError):
        geom.boxes_to_cells([(310, 0, 320, 10)])
    with pytest.raises(NoCellError, match="cover no cell"):  # the centre crop cuts the left edge away
        geom.boxes_to_cells([(0, 10, 20, 50)])
    partly = geom.boxes_to_cells([(-50, -50, 200, 60)])  # clipped to the image
    assert partly.any()


def test_224_patch16_grid_known_cells():
    """The notebook's 224 px / 14 x 14 grid (16 px patches): cells worked out by hand."""
    family, ip, config = SETUPS["llava-224-patch16"]
    geom = MODEL_ADAPTERS.get(family).grid_geometry(ip, config, 224, 224)
    assert geom.shape == (14, 14) and geom.cell_w == 16
    cells = geom.box_to_cells((32, 48, 80, 64))  # columns 2-4, row 3
    assert cells[3, 2:5].all() and cells.sum() == 3
    big = MODEL_ADAPTERS.get(family).grid_geometry(ip, config, 448, 448)  # resized by 1/2: same cells for 2x boxes
    assert np.array_equal(big.box_to_cells((64, 96, 160, 128)), cells)
