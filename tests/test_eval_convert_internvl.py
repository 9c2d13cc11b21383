"""`vgmed-eval convert` on tiny InternVL-Chat checkpoints in the original layout (MedRegA's: Llama text
model, InternViT-6B-style RMS norms and q/k norm, ps_version v1, one 448-style tile; and an InternVL2-style
one: Qwen2, LayerNorm, qkv bias, select_layer -2, dynamic tiling): the converted model's logits equal the
forward pass written out by hand from the original files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from internvl_originals import INTERNVL2, MEDREGA, make_original, reference_logits
from PIL import Image

from vgmed_eval.adapters import load_adapter
from vgmed_eval.cli import main
from vgmed_eval.convert import ConvertError, convert

IMAGES = {"square": (150, 150), "wide": (300, 120), "tall": (90, 250)}


def _image(size, seed=0):
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["medrega", "internvl2"])
def converted(request, tmp_path_factory):
    layout = {"medrega": MEDREGA, "internvl2": INTERNVL2}[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    src = make_original(tmp / "original", layout)
    dst = tmp / "converted"
    assert main(["convert", str(src), str(dst)]) == 0
    return layout, src, dst


@pytest.mark.parametrize("name", list(IMAGES))
def test_logits_equal_original_forward(converted, name):
    layout, src, dst = converted
    adapter = load_adapter(str(dst), dtype="float32")
    image, question = _image(IMAGES[name]), "Is there a liver in the image?"
    batch = adapter.build_inputs([image], [question])
    with torch.no_grad():
        ours = adapter.model(**batch.inputs).logits[0]
    ref = reference_logits(src, layout, image, question)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    n_tiles = batch.inputs["pixel_values"].shape[0]
    if layout.dynamic:
        assert n_tiles == {"square": 1, "wide": 4, "tall": 4}[name]  # tiles + thumbnail (wide: 3 x 1)
    else:
        assert n_tiles == 1  # MedRegA: one tile, no tiling


def test_written_facts(converted):
    layout, _, dst = converted
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "internvl" and config["ps_version"] == layout.ps_version
    assert config["image_seq_length"] == 16 and config["vision_feature_layer"] == layout.select_layer
    assert config["tie_word_embeddings"] is False
    notes = json.loads((dst / "vgmed_convert.json").read_text())
    assert notes["source_model_type"] == "internvl_chat" and notes["tiling"] == layout.dynamic
    adapter = load_adapter(str(dst))
    assert adapter.family == "internvl" and adapter.geometry(300, 120).shape == (4, 4)
    assert "<|im_start|>system" in adapter.prompt("hi")


def test_v1_token_order_matters(converted):
    """The v1 checkpoint's logits change when its tokens are ordered as v2 (transformers' default)."""
    layout, src, dst = converted
    if layout.ps_version != "v1":
        pytest.skip("v2 checkpoint")
    adapter = load_adapter(str(dst), dtype="float32")
    batch = adapter.build_inputs([_image((150, 150))], ["Is there a liver?"])
    with torch.no_grad():
        v1 = adapter.model(**batch.inputs).logits
        adapter.model.model.pixel_shuffle = type(adapter.model.model).pixel_shuffle.__get__(adapter.model.model)
        v2 = adapter.model(**batch.inputs).logits
    assert (v1 - v2).abs().max() > 1e-3
    # and the grid positions are column-major within the tile: cell (0, 1) is the 5th image token
    span = torch.nonzero(batch.inputs["input_ids"][0] == adapter.image_token_id).flatten()
    assert int(batch.grid_positions[0][1]) == int(span[4])


def test_reproduce_on_converted(converted, tmp_path):
    """grounding, heads and VQA with VGRefine (`reproduce`) on each converted model: MedRegA-style on one
    column-major tile, InternVL2-style on tiles + thumbnail, whose knockout reaches every tile."""
    from eval_fixtures import make_release

    _, _, dst = converted
    make_release(tmp_path / "release")
    out = tmp_path / "out"
    fix = Path(__file__).parent / "fixtures" / "vqa" / "slake"
    assert main(["reproduce", "--model", str(dst), "--vgmed", str(tmp_path / "release"), "--out", str(out),
                 "--top-k", "3", "--max-new-tokens", "2", "--bootstrap", "10", "--batch-size", "3",
                 "--benchmark", f"slake={fix}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in report["steps"].values()] == ["done"] * 3
    assert json.loads((out / "grounding" / "summary.json").read_text())["n_ok"] == 7
    refined = (out / "vqa" / "slake" / "predictions_vgrefine.jsonl").read_text().splitlines()
    assert refined and all(json.loads(line)["knocked_out"] > 0 for line in refined)


def test_refusals(tmp_path):
    src = make_original(tmp_path / "o", MEDREGA)
    cfg = json.loads((src / "config.json").read_text())
    for change, message in [({"template": "vicuna_v1.1"}, "conversation template 'vicuna_v1.1'"),
                            ({"use_llm_lora": 16}, "LoRA weights are not merged"),
                            ({"dynamic_image_size": True, "use_thumbnail": False}, "without use_thumbnail"),
                            ({"llm_config": {**cfg["llm_config"], "architectures": ["InternLM2ForCausalLM"]}},
                             "InternLM2ForCausalLM")]:
        (src / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ConvertError, match=message):
            convert(src, tmp_path / "never")
        assert not (tmp_path / "never").exists()
    (src / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    shard = sorted(src.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    tensors["mlp1.7.weight"] = torch.zeros(2)
    save_file(tensors, shard)
    with pytest.raises(ConvertError, match="unexpected weight 'mlp1.7.weight'"):
        convert(src, tmp_path / "never")
