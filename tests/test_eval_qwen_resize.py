"""``--qwen-resize double`` (``--protocol published``): the authors' Qwen runs resize every picture twice,
first with qwen-vl-utils' ``fetch_image`` (``process_vision_info(messages, image_patch_size=14)``, no
min / max pixels in the message: its defaults, 4 to 16384 tokens of 28 x 28 px), then with the processor
(``image_processor.min_pixels = 784``, ``max_pixels = 50176``). Both steps are written out here from the
two libraries' sources (qwen-vl-utils 0.0.14 ``vision_process.smart_resize``; transformers'
``image_processing_qwen2_vl.smart_resize``, the same in 4.57.1, which the authors pin, and 5.x)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from vgmed_eval.adapters import load_adapter
from vgmed_eval.adapters.qwen import set_pixel_bounds, set_resize
from vgmed_eval.cli import main as eval_main
from vgmed_eval.geometry import published_geometry, stretch_geometry
from vgmed_eval.protocol import PUBLISHED, VGMED

LOW, HIGH = 784, 50176  # the processor's bounds in the authors' runs
# (width, height): square, wide, tall, the issue's 300 x 200, sizes either side of a rounding edge, a
# thin strip (a side under 14 px, where qwen-vl-utils' copy and transformers' differ) and a large scan
SIZES = [(300, 200), (200, 300), (240, 240), (512, 512), (384, 200), (640, 480), (1000, 10), (12, 600),
         (700, 350), (333, 222), (2048, 1536), (95, 95)]


def utils_resize(height: int, width: int, factor: int) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize with fetch_image's defaults (min 4, max 16384 tokens of factor^2)."""
    low, high = 4 * factor * factor, 16384 * factor * factor
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > high:
        beta = math.sqrt(height * width / high)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < low:
        beta = math.sqrt(low / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def processor_resize(height: int, width: int, factor: int) -> tuple[int, int]:
    """transformers' smart_resize with the authors' bounds (no minimum of one factor on the rounding)."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > HIGH:
        beta = math.sqrt(height * width / HIGH)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < LOW:
        beta = math.sqrt(LOW / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def theirs(width: int, height: int, factor: int = 28) -> tuple[tuple[int, int], tuple[int, int]]:
    """(pre-resized (w, h), token grid (rows, cols)) of the authors' double resize."""
    h1, w1 = utils_resize(height, width, factor)
    h2, w2 = processor_resize(h1, w1, factor)
    return (w1, h1), (h2 // factor, w2 // factor)


def authors_cells(box, width: int, height: int) -> set[tuple[int, int]]:
    """measure_attention.py: box scaled to the pre-resized picture (x * w1 / W, size scaled separately for
    xywh), token width w1 / cols, floor / ceil with no tolerance; [col, row] pairs."""
    (w1, h1), (rows, cols) = theirs(width, height)
    x, y, bw, bh = box
    sx, sy = w1 / width, h1 / height
    x0, y0, ww, hh = x * sx, y * sy, bw * sx, bh * sy
    tw, th = w1 / cols, h1 / rows
    c0, r0 = int(max(np.floor(x0 / tw), 0)), int(max(np.floor(y0 / th), 0))
    c1, r1 = min(int(np.ceil((x0 + ww) / tw)), cols), min(int(np.ceil((y0 + hh) / th)), rows)
    return {(c, r) for c in range(c0, c1) for r in range(r0, r1)}


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def adapter(request):
    adapter = load_adapter(f"builtin:tiny-{request.param}")
    set_pixel_bounds(adapter, LOW, HIGH)
    return adapter


def test_the_issue_example_written_out():
    assert theirs(300, 200) == ((308, 196), (6, 10))  # 10 x 6 tokens
    assert processor_resize(200, 300, 28) == (168, 252)  # a single resize: 9 x 6


def test_grids_double_under_published_single_by_default(adapter):
    assert (VGMED.qwen_resize, PUBLISHED.qwen_resize) == ("single", "double")
    differ = 0
    for width, height in SIZES:
        set_resize(adapter, "single")
        single = adapter.geometry(width, height).shape
        h, w = processor_resize(height, width, 28)
        assert single == (h // 28, w // 28), (width, height)
        set_resize(adapter, "double")
        assert adapter.geometry(width, height).shape == theirs(width, height)[1], (width, height)
        differ += single != theirs(width, height)[1]
    assert differ >= 3  # 300 x 200, 200 x 300 and the thin strips at least


def test_the_model_receives_the_double_resized_picture(adapter):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    patch = adapter.image_processor.patch_size
    for mode, size, grid in (("single", (300, 200), (6, 9)), ("double", (308, 196), (6, 10))):
        set_resize(adapter, mode)
        batch = adapter.build_inputs([picture], ["Is there a mass?"])
        rows, cols = grid
        assert batch.inputs["image_grid_thw"][0].tolist() == [1, rows * 2, cols * 2]
        assert batch.geometries[0].shape == grid and len(batch.grid_positions[0]) == rows * cols
        # the pixels: PIL's bicubic resize to the written-out size, then the processor
        seen = picture.resize(size, Image.Resampling.BICUBIC) if mode == "double" else picture
        ref = adapter.image_processor(images=[seen], return_tensors="pt")["pixel_values"]
        assert batch.inputs["pixel_values"].shape == (rows * cols * 4, 3 * 2 * patch * patch)
        assert np.array_equal(batch.inputs["pixel_values"].cpu().numpy(), ref.numpy())
    set_resize(adapter, "single")


def cells(geometry, box) -> set[tuple[int, int]]:
    mask = geometry.boxes_to_cells([box])
    return {(int(c), int(r)) for r, c in zip(*np.nonzero(mask), strict=True)}


def test_box_cells_are_the_authors_on_the_double_grid(adapter):
    """Every box gets the authors' cells; mapped on the tower's canvas instead (28 px cells, the same grid)
    about 1% would not, through float rounding alone."""
    set_resize(adapter, "double")
    rng = np.random.default_rng(1)
    tower_differs = 0
    for width, height in [s for s in SIZES if min(s) >= 20]:
        geometry = published_geometry(adapter.geometry(width, height), "resize", "authors")
        rows, cols = theirs(width, height)[1]
        tower = published_geometry(stretch_geometry(width, height, rows * 28, cols * 28, rows, cols), "resize",
                                   "authors")
        for _ in range(300):
            x, y = int(rng.integers(0, width - 2)), int(rng.integers(0, height - 2))
            bw, bh = int(rng.integers(1, width - x)), int(rng.integers(1, height - y))
            want = authors_cells((x, y, bw, bh), width, height)
            assert cells(geometry, (x, y, x + bw, y + bh)) == want, (width, height, (x, y, bw, bh))
            tower_differs += cells(tower, (x, y, x + bw, y + bh)) != want
    assert tower_differs > 0
    set_resize(adapter, "single")


def test_other_families():
    llava = load_adapter("builtin:tiny-llava")
    set_resize(llava, "double", explicit=False)  # from a protocol: does not apply
    with pytest.raises(ValueError, match="Qwen-VL models only"):
        set_resize(llava, "double")


def test_grounding_published_runs_the_double_grid(tmp_path):
    root = tmp_path / "release"
    (root / "images").mkdir(parents=True)
    Image.fromarray(data.astronaut()[:200, :300]).save(root / "images" / "a.png")
    rec = {"id": "q1", "image": "images/a.png", "question": "Is there a face in the image?", "q_type": "localization",
           "modality": "CT", "label": "face", "bbox": [[150, 20, 230, 120]], "bbox_convention": "xyxy_exclusive",
           "source": {"dataset": "astro", "licence": "BSD"}}
    (root / "VGMED_localization.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    grids = {}
    for name, extra in (("vgmed", ["--min-pixels", "784", "--max-pixels", "50176"]), ("published", [])):
        out = tmp_path / name
        assert eval_main(["grounding", "--release", str(root), "--model", "builtin:tiny-qwen2_vl", "--out", str(out),
                          "--layers", "0", "--bootstrap", "10", "--chance-draws", "0", "--no-progress",
                          "--q-types", "localization", "--protocol", name, *extra]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["protocol"]["qwen_resize"] == ("double" if name == "published" else "single")
        row = pd.read_parquet(out / "per_layer.parquet").iloc[0]
        grids[name] = (int(row["grid_rows"]), int(row["grid_cols"]))
    assert grids == {"vgmed": (6, 9), "published": (6, 10)}
