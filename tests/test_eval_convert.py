"""`vgmed-eval convert`: original LLaVA-format checkpoints -> transformers, checked against LLaVA's own forward."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from llava_originals import HUATUO_7B, LAYOUTS, LLAVA_MED, make_original, make_tower, reference_logits
from PIL import Image
from safetensors import safe_open
from skimage import data

from vgmed_eval.adapters import load_adapter
from vgmed_eval.checkpoint_io import ConvertError, grow
from vgmed_eval.cli import main
from vgmed_eval.convert import convert

QUESTION = "Is there a mass in the image?"
FIX = Path(__file__).parent / "fixtures" / "vqa"
IMAGES = {
    "square": Image.fromarray(data.astronaut()[:200, :200]),
    "wide": Image.fromarray(data.astronaut()[100:250, :300]),
    "tall": Image.fromarray(data.coffee()[:300, 200:360]),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each original layout, converted once: name -> (src, dst, tower folder or None)."""
    base = tmp_path_factory.mktemp("originals")
    out = {}
    for name, layout in LAYOUTS.items():
        src = make_original(base / name, layout)
        tower = make_tower(base / f"{name}-clip", layout) if layout.tower_name.startswith("openai/") else None
        dst = base / f"{name}-hf"
        convert(src, dst, vision_tower=tower, progress=False)
        out[name] = (src, dst, tower)
    return out


def _logits(adapter, image, question=QUESTION):
    batch = adapter.build_inputs([image], [question])
    with torch.no_grad():
        return batch, adapter.model(**batch.inputs).logits[0].float()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("shape", sorted(IMAGES))
def test_converted_logits_equal_llava_forward(converted, name, shape):
    src, dst, tower = converted[name]
    layout, image = LAYOUTS[name], IMAGES[shape]
    adapter = load_adapter(str(dst))
    batch, logits = _logits(adapter, image)
    ref = reference_logits(src, layout, image, QUESTION, tower)
    assert logits.shape[0] == ref.shape[0]  # same prompt length: same template, 64 image tokens
    torch.testing.assert_close(logits[:, : ref.shape[1]], ref, rtol=1e-5, atol=1e-5)
    assert len(batch.grid_positions[0]) == 64 and batch.geometries[0].shape == (8, 8)


def test_each_part_matters(converted):
    """The comparison can fail: padding, the checkpoint's own tower and the BOS all change the logits."""
    src, dst, _ = converted["huatuo"]
    _, logits = _logits(load_adapter(str(dst)), IMAGES["wide"])
    unpadded = reference_logits(src, HUATUO_7B.__class__(**{**HUATUO_7B.__dict__, "aspect": "square"}),
                                IMAGES["wide"], QUESTION)
    assert (logits[:, : unpadded.shape[1]] - unpadded).abs().max() > 1e-3
    folder_tower = HUATUO_7B.__class__(**{**HUATUO_7B.__dict__, "tower_in_checkpoint": False})
    other = reference_logits(src, folder_tower, IMAGES["square"], QUESTION)
    _, logits = _logits(load_adapter(str(dst)), IMAGES["square"])
    assert (logits[:, : other.shape[1]] - other).abs().max() > 1e-3
    src, dst, _ = converted["llava-med"]
    adapter = load_adapter(str(dst))
    ids = adapter.build_inputs([IMAGES["square"]], [QUESTION]).inputs["input_ids"][0]
    assert int(ids[0]) == adapter.tokenizer.bos_token_id  # LLaVA-Med's tokenizer adds <s>, as the original


def test_converted_checkpoint_contents(converted):
    src, dst, tower = converted["llava-med"]
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["text_config"]["model_type"] == "mistral"
    assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
    assert cfg["image_seq_length"] == 64
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # two text shards + the tower from its folder
    meta = json.loads((dst / "vgmed_convert.json").read_text())
    assert meta["vision_tower_weights"] == "tower folder" and meta["chat_template"] == "llava-med"
    # The tokenizer did not hold <image>: the rows grew to a multiple of 64, old rows kept exactly.
    n_tok = len(load_adapter(str(dst)).tokenizer)
    assert cfg["text_config"]["vocab_size"] == meta["embedding_rows"] == 64 * -(-n_tok // 64)
    assert cfg["image_token_index"] == n_tok - 1
    old = torch.load(src / "pytorch_model-00001-of-00002.bin", weights_only=True) | \
        torch.load(src / "pytorch_model-00002-of-00002.bin", weights_only=True)
    shard = dst / index["weight_map"]["model.language_model.embed_tokens.weight"]
    with safe_open(shard, "pt") as fh:
        new = fh.get_tensor("model.language_model.embed_tokens.weight")
    rows = old["model.embed_tokens.weight"].shape[0]
    assert torch.equal(new[:rows], old["model.embed_tokens.weight"])
    grown = new[rows:]
    assert (grown - old["model.embed_tokens.weight"].mean(0)).abs().max() < 0.05  # near the mean (1e-5 cov)
    processor = json.loads((dst / "processor_config.json").read_text()) if (dst / "processor_config.json").exists() \
        else {}
    ip = processor.get("image_processor") or json.loads((dst / "preprocessor_config.json").read_text())
    assert ip["do_pad"] is True and ip["crop_size"] == {"height": 112, "width": 112}
    # HuatuoGPT's padded vocabulary holds <image> already: no growth.
    src, dst, _ = converted["huatuo"]
    meta = json.loads((dst / "vgmed_convert.json").read_text())
    assert meta["embedding_rows"] == json.loads((src / "config.json").read_text())["vocab_size"]
    assert meta["vision_tower_weights"] == "checkpoint"


def test_grow_matches_mean_and_covariance():
    """The new rows follow N(mean, 1e-5 cov) of the old rows (checked on many draws)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(400, 6, generator=g) @ torch.randn(6, 6, generator=g) + 2.0
    out = grow(w, 400 + 4000)
    assert torch.equal(out[:400], w)
    new = out[400:].double()
    cov = torch.cov((w - w.mean(0)).double().T) * (399 / 400) * 1e-5
    torch.testing.assert_close(new.mean(0), w.mean(0).double(), atol=2e-3, rtol=0)
    torch.testing.assert_close(torch.cov(new.T), cov, atol=3e-6, rtol=0.15)
    assert grow(w, 300) is w


def test_refusals_are_clear(tmp_path):
    src = make_original(tmp_path / "m", HUATUO_7B)
    cfg = json.loads((src / "config.json").read_text())

    def refused(change: dict, match: str, **kw):
        (src / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ConvertError, match=match):
            convert(src, tmp_path / "out", progress=False, **kw)
        assert not (tmp_path / "out").exists()

    refused({"model_type": "llava_gemma"}, r"model_type 'llava_gemma' is not an original LLaVA-format.*llava_qwen2")
    refused({"mm_projector_type": "mlp3x_gelu"}, r"mlp3x_gelu.*only linear and mlp2x_gelu")
    refused({"mm_projector_type": "qformer"}, r"unsupported mm_projector_type 'qformer'")
    refused({"image_aspect_ratio": "anyres"}, r"anyres")
    refused({"mm_vision_tower": "vit/elsewhere"}, r"vision tower 'vit/elsewhere'.*--vision-tower")
    refused({}, r"--vision-tower .*nope: no config.json", vision_tower=tmp_path / "nope")
    (src / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(ConvertError, match="already exists"):
        convert(src, tmp_path / "busy", progress=False)
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"
    # A checkpoint without the projector's second layer: named before anything is written.
    with safe_open(src / "model-00001-of-00002.safetensors", "pt") as fh:
        part = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("model.mm_projector.2")}
    from safetensors.torch import save_file

    save_file(part, src / "model-00001-of-00002.safetensors")
    with safe_open(src / "model-00002-of-00002.safetensors", "pt") as fh:
        part = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("model.mm_projector.2")}
    save_file(part, src / "model-00002-of-00002.safetensors")
    with pytest.raises(ConvertError, match=r"missing model\.multi_modal_projector\.linear_2"):
        convert(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_convert_then_grounding_vgrefine_vqa(tmp_path, capsys):
    """The whole evaluator runs on a converted model, through the command line."""
    from eval_fixtures import make_release

    src = make_original(tmp_path / "LLaVA-Med-orig", LLAVA_MED)
    clip = make_tower(tmp_path / "clip", LLAVA_MED)
    dst = tmp_path / "llava-med-hf"
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 2
    assert re.search("error: .*openai/clip-vit-large-patch14-336.*--vision-tower", capsys.readouterr().err)
    assert main(["convert", str(src), str(dst), "--vision-tower", str(clip), "--no-progress"]) == 0
    release = make_release(tmp_path / "release")
    g = tmp_path / "grounding"
    assert main(["grounding", "--release", str(release), "--model", str(dst), "--out", str(g), "--no-progress",
                 "--bootstrap", "50"]) == 0
    summary = json.loads((g / "summary.json").read_text())
    assert summary["family"] == "llava" and summary["n_llm_layers"] == 3 and summary["n_ok"] == 7
    assert main(["heads", "--results", str(g), "--top-k", "4", "--out", str(tmp_path / "heads.json")]) == 0
    out = tmp_path / "vqa"
    assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model", str(dst),
                 "--vgrefine", str(tmp_path / "heads.json"), "--compare", "--max-new-tokens", "2",
                 "--bootstrap", "50", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "predictions_vgrefine.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["grid_cells"] == 64 and r["knocked_out"] == 51 for r in rows)
    assert rows[0]["prompt"].startswith("[INST] <image>") and rows[0]["prompt"].endswith("[/INST]")
    shutil.rmtree(dst)


def _port_without_template(dst: Path, folder: Path) -> Path:
    """A copy of a converted checkpoint with every chat template removed (as some official ports ship)."""
    shutil.copytree(dst, folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = folder / name
        cfg = json.loads(path.read_text())
        cfg.pop("chat_template", None)
        path.write_text(json.dumps(cfg))
    return folder


def test_ports_without_template_get_the_known_prompt_or_a_clear_error(converted, tmp_path, capsys):
    _, huatuo, _ = converted["huatuo"]
    _, med, _ = converted["llava-med"]
    port = _port_without_template(huatuo, tmp_path / "HuatuoGPT-Vision-7B-hf")
    assert load_adapter(str(port)).prompt("Q?") == "<|user|>\n<image>\nQ?\n<|assistant|>\n"
    port = _port_without_template(med, tmp_path / "llava-med-v1.5-mistral-7b-hf")
    assert load_adapter(str(port)).prompt("Q?") == "[INST] <image>\nQ? [/INST]"
    unknown = _port_without_template(huatuo, tmp_path / "someones-llava")
    with pytest.raises(ValueError, match=r"someones-llava: the checkpoint has no chat template.*--chat-template FILE"):
        load_adapter(str(unknown))
    template = tmp_path / "mine.jinja"
    template.write_text("Q: {% for m in messages %}{% for it in m['content'] %}{% if it['type'] == 'image' %}"
                        "<image>{% else %}{{ it['text'] }}{% endif %}{% endfor %}{% endfor %} A:")
    assert load_adapter(str(unknown), chat_template=template).prompt("Q?") == "Q: <image>Q? A:"
    # --chat-template also overrides a template the checkpoint has, and tiny models.
    assert load_adapter(str(huatuo), chat_template=template).prompt("x") == "Q: <image>x A:"
    assert load_adapter("builtin:tiny-llava", chat_template=template).prompt("x") == "Q: <image>x A:"
    # Every model-loading command takes it; without it the unknown port is refused by name.
    from eval_fixtures import make_release

    release = make_release(tmp_path / "release", errors=False)
    assert main(["grounding", "--release", str(release), "--model", str(unknown), "--out", str(tmp_path / "g"),
                 "--no-progress"]) == 2
    assert re.search("error: .*someones-llava.*--chat-template FILE", capsys.readouterr().err)
    assert main(["grounding", "--release", str(release), "--model", str(unknown), "--out", str(tmp_path / "g"),
                 "--no-progress", "--bootstrap", "20", "--limit", "2", "--chat-template", str(template)]) == 0
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["n_ok"] == 2
    assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model", str(unknown),
                 "--out", str(tmp_path / "v"), "--max-new-tokens", "1"]) == 2
    assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model", str(unknown),
                 "--out", str(tmp_path / "v"), "--max-new-tokens", "1", "--chat-template", str(template)]) == 0
    rows = (tmp_path / "v" / "predictions_baseline.jsonl").read_text().splitlines()
    assert all(json.loads(r)["prompt"].startswith("Q: <image>") for r in rows)


def test_huatuo_34b_layout_and_several_knockout_layers(converted, tmp_path):
    """HuatuoGPT-Vision-34B's layout (llava_llama on a Llama-family model) converts with the Huatuo prompt,
    and VGRefine knocks out on several layers at once (the published 34B setting is layers 34-36)."""
    from eval_fixtures import make_release

    _, dst, _ = converted["huatuo-34b"]
    adapter = load_adapter(str(dst))
    assert adapter.prompt("Q?") == "<|user|>\n<image>\nQ?\n<|assistant|>\n"
    assert type(adapter.model.model.language_model).__name__ == "LlamaModel"
    release = make_release(tmp_path / "release", errors=False)
    g = tmp_path / "g"
    assert main(["grounding", "--release", str(release), "--model", str(dst), "--out", str(g), "--no-progress",
                 "--bootstrap", "20"]) == 0
    assert main(["heads", "--results", str(g), "--top-k", "4", "--out", str(tmp_path / "heads.json")]) == 0
    runs = {}
    for layers in (["1"], ["0", "1", "2"]):
        out = tmp_path / f"vqa-{'-'.join(layers)}"
        assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model", str(dst),
                     "--vgrefine", str(tmp_path / "heads.json"), "--knockout-layers", *layers, "--max-new-tokens", "3",
                     "--bootstrap", "20", "--out", str(out)]) == 0
        config = json.loads((out / "results.json").read_text())["vgrefine"]
        assert config["knockout_layers"] == [int(x) for x in layers]
        runs[len(layers)] = [json.loads(line) for line in (out / "predictions_vgrefine.jsonl").read_text().splitlines()]
    assert len(runs[1]) == len(runs[3]) == 2
