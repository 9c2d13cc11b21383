"""`vgmed-eval convert` on a tiny VILA 1.5 checkpoint in its original layout (VILA-M3's): the converted
model (transformers' SigLIP + Llama in an InternVL model, VILA's 2 x 2 merge) gives the logits of VILA's
forward written out by hand; the 384 px / 14 x 14 geometry (27 x 27 patches padded to 28 x 28)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from vila_originals import TOKENS, make_original, reference_logits

from vgmed_eval.adapters import load_adapter
from vgmed_eval.cli import main
from vgmed_eval.convert import ConvertError, convert
from vgmed_eval.geometry import tile_layout

IMAGES = {"square": (150, 150), "wide": (300, 120), "tall": (90, 250)}
QUESTION = "Is there a liver in the image?"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vila")
    src = make_original(tmp / "original")
    dst = tmp / "converted"
    assert main(["convert", str(src), str(dst), "--prompt", "vicuna"]) == 0
    return src, dst


@pytest.mark.parametrize("name", list(IMAGES))
def test_logits_equal_original_forward(converted, name):
    src, dst = converted
    adapter = load_adapter(str(dst), dtype="float32")
    w, h = IMAGES[name]
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8))
    batch = adapter.build_inputs([image], [QUESTION])
    assert len(batch.grid_positions[0]) == TOKENS and batch.geometries[0].shape == (4, 4)
    with torch.no_grad():
        ours = adapter.model(**batch.inputs).logits[0]
    ref = reference_logits(src, image, QUESTION)
    assert ours.shape[0] == ref.shape[0]
    torch.testing.assert_close(ours[:, :ref.shape[1]], ref, rtol=1e-5, atol=1e-5)


def test_merge_order_and_padding_matter(converted):
    """transformers' own InternVL merge (row order, no padding) cannot even run on the odd grid, and the
    grid cell (0, 1) is the 5th image token (VILA's column order)."""
    _, dst = converted
    adapter = load_adapter(str(dst), dtype="float32")
    batch = adapter.build_inputs([Image.new("RGB", (120, 90), (30, 60, 90))], [QUESTION])
    span = torch.nonzero(batch.inputs["input_ids"][0] == adapter.image_token_id).flatten()
    assert int(batch.grid_positions[0][1]) == int(span[4])
    adapter.model.model.pixel_shuffle = type(adapter.model.model).pixel_shuffle.__get__(adapter.model.model)
    with pytest.raises(RuntimeError), torch.no_grad():
        adapter.model(**batch.inputs)


def test_real_size_geometry():
    """VILA-M3 at 384 px: 27 x 27 patches of 14 px -> 14 x 14 cells of 28 px over the 378 px the tower
    sees; the bottom-right 6 px of the resized image fall outside every patch."""
    lay = tile_layout(512, 256, tile=384, cells=14, min_tiles=1, max_tiles=1, tiling=False, transposed=True,
                      patch=14)
    geom = lay.whole()
    assert geom.shape == (14, 14) and geom.cell_w == 28 and geom.canvas_w == 378
    # x 0..512 -> 0..384, y 0..256 -> 0..384 (stretched); a box on the first 28 canvas px = cell column 0
    cells = geom.box_to_cells((0, 0, 28 * 512 / 384, 28 * 256 / 384))
    assert cells[0, 0] and cells.sum() == 1
    # the last column: canvas 364..378 holds image pixels (cell 13, half padding)
    last = geom.box_to_cells((365 * 512 / 384, 0, 376 * 512 / 384, 10))
    assert last[0, 13] and last.sum() == 1
    # a box only in the unseen 378..384 strip covers no cell
    assert not geom.box_to_cells((379 * 512 / 384, 0, 512, 10)).any()
    # token order: column-major, as VILA's DownSampleBlock
    assert list(lay.token_index("whole")[:3]) == [0, 14, 28]


def test_refusals(tmp_path):
    src = make_original(tmp_path / "o")
    with pytest.raises(ConvertError, match="--chat-template FILE or --prompt"):
        convert(src, tmp_path / "never")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "image_aspect_ratio": "pad"}))
    with pytest.raises(ConvertError, match="image_aspect_ratio 'pad'"):
        convert(src, tmp_path / "never", prompt="vicuna")
    (src / "config.json").write_text(json.dumps({**cfg, "mm_vision_select_feature": "patch"}))
    with pytest.raises(ConvertError, match="SigLIP has no CLS token"):
        convert(src, tmp_path / "never", prompt="vicuna")
    assert not (tmp_path / "never").exists()


def test_grounding_on_converted(converted, tmp_path):
    from eval_fixtures import make_release

    _, dst = converted
    make_release(tmp_path / "release")
    out = tmp_path / "g"
    assert main(["grounding", "--release", str(tmp_path / "release"), "--model", str(dst), "--out", str(out),
                 "--bootstrap", "10"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 7


def test_reproduce_end_to_end_on_converted(converted, tmp_path):
    """grounding (release + control), heads and VQA with VGRefine, the whole chain, on the converted tiny VILA:
    one 14 x 14-style tile per image (here 4 x 4 cells), whose knockout blocks the cells' own tokens."""
    from pathlib import Path

    from eval_fixtures import make_release

    _, dst = converted
    make_release(tmp_path / "release")
    make_release(tmp_path / "control", errors=False)
    out = tmp_path / "out"
    fix = Path(__file__).parent / "fixtures" / "vqa" / "slake"
    argv = ["reproduce", "--model", str(dst), "--vgmed", str(tmp_path / "release"), "--out", str(out),
            "--control-release", str(tmp_path / "control"), "--top-k", "3", "--max-new-tokens", "2",
            "--bootstrap", "20", "--batch-size", "4", "--benchmark", f"slake={fix}"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] and all(s["status"] == "done" for s in report["steps"].values())
    summary = json.loads((out / "grounding" / "summary.json").read_text())
    assert summary["n_ok"] == 7  # the whole image is stretched onto the grid: every scorable box counts
    heads = json.loads((out / "heads.json").read_text())
    assert heads["family"] == "internvl" and len(heads["heads"]) == 3
    refined = (out / "vqa" / "slake" / "predictions_vgrefine.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in refined]
    assert rows and all(r["grid_cells"] == TOKENS for r in rows)
    assert all(0 < r["knocked_out"] < TOKENS for r in rows)  # percentile 80 of the 16 cells
