"""Random-weight ORIGINAL checkpoints of the paper's model shapes, converted by `vgmed-eval convert`.

``huatuo-7b`` is HuatuoGPT-Vision-7B's real shape in its original layout (``llava_qwen2``: Qwen2-7B,
28 layers, hidden 3584, 28 heads, 4 KV heads, vocab 152,064; CLIP ViT-L/14 at 336 px bundled in the
checkpoint, ``mlp2x_gelu``, pad-to-square, feature layer -2); about 15 GiB in bfloat16, to run on a
GPU machine. ``huatuo-mini`` keeps the layout, the vocabulary, the 336 px / 576-token image grid and
the prompt, with narrow, shallow layers, so the same path runs on a CPU. Weights are written
tensor by tensor into ~2 GiB shards, so building the 7B checkpoint holds about one shard in memory.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from vgmed_eval.adapters.tiny import synthetic_tokenizer

SHAPES = {
    "huatuo-7b": (dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4),
                  dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)),
    "huatuo-mini": (dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=2),
                    dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4)),
}
TOWER = "vit/clip_vit_large_patch14_336"
SHARD_BYTES = 2 * 2**30


def _configs(shape: str, max_layers: int | None):
    from transformers import CLIPVisionConfig, Qwen2Config

    text, vision = (dict(d) for d in SHAPES[shape])
    if max_layers:
        text["num_hidden_layers"] = min(text["num_hidden_layers"], max_layers)
        vision["num_hidden_layers"] = min(vision["num_hidden_layers"], max_layers)
    text = Qwen2Config(vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, **text)
    vision = CLIPVisionConfig(image_size=336, patch_size=14, projection_dim=768, **vision)
    return text, vision


def _names_and_shapes(text, vision) -> dict[str, tuple[int, ...]]:
    """Original LLaVA names: the Qwen2 model, the projector, the tower saved inside the checkpoint."""
    from transformers import CLIPVisionModel, Qwen2ForCausalLM

    with torch.device("meta"):
        out = {k: tuple(v.shape) for k, v in Qwen2ForCausalLM(text).state_dict().items()}
        tower = CLIPVisionModel(vision).state_dict()
    out.update({"model.vision_tower.vision_tower.vision_model." + k: tuple(v.shape) for k, v in tower.items()
                if "position_ids" not in k})
    h, v = text.hidden_size, vision.hidden_size
    out.update({"model.mm_projector.0.weight": (h, v), "model.mm_projector.0.bias": (h,),
                "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,)})
    return out


def write_original(root: Path, shape: str, dtype: torch.dtype, max_layers: int | None = None,
                   shard_bytes: int = SHARD_BYTES) -> Path:
    """A random-weight original HuatuoGPT-Vision-style checkpoint (norms 1, biases 0, weights N(0, 0.02))."""
    from safetensors.torch import save_file

    text, vision = _configs(shape, max_layers)
    root.mkdir(parents=True, exist_ok=True)
    tok = synthetic_tokenizer(["<|user|>", "<|assistant|>"], "", bos=None, eos="<|endoftext|>", pad="<|endoftext|>")
    tok.chat_template = None
    tok.save_pretrained(root)
    gen = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    files: list[str] = []
    weight_map: dict[str, str] = {}

    def flush() -> None:
        files.append(f"model-{len(files) + 1:05d}.safetensors")
        save_file(shard, root / files[-1], metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, files[-1]))
        shard.clear()

    for key, shp in _names_and_shapes(text, vision).items():
        if "norm" in key and key.endswith("weight"):
            t = torch.ones(shp, dtype=dtype)
        elif key.endswith("bias") or key.endswith("class_embedding"):
            t = torch.zeros(shp, dtype=dtype)
        else:
            t = torch.empty(shp, dtype=dtype).normal_(0, 0.02, generator=gen)
        shard[key] = t
        if sum(v.numel() * v.element_size() for v in shard.values()) >= shard_bytes:
            flush()
    if shard:
        flush()
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {**text.to_dict(), "architectures": ["LlavaQwen2ForCausalLM"], "model_type": "llava_qwen2",
              "mm_hidden_size": vision.hidden_size, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "mm_vision_tower": TOWER,
              "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
              "mm_patch_merge_type": "flat", "tokenizer_model_max_length": 4096, "torch_dtype": str(dtype)[6:]}
    for key in ("dtype", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    tower = root / TOWER
    tower.mkdir(parents=True, exist_ok=True)
    (tower / "config.json").write_text(json.dumps({**vision.to_dict(), "model_type": "clip_vision_model"}))
    (tower / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 336, "size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3}))
    return root


def converted_adapter(shape: str, dtype: str, device: str, max_layers: int | None = None):
    """Write the original checkpoint, convert it with `vgmed-eval convert`, load the result as the evaluator does.

    Returns (adapter, seconds to convert). The temporary files are removed once the model is loaded."""
    from vgmed_eval.adapters import load_adapter
    from vgmed_eval.convert import convert

    with tempfile.TemporaryDirectory(prefix="vgmed-paper-shape-") as tmp:
        src = write_original(Path(tmp) / "HuatuoGPT-Vision-7B-random", shape, getattr(torch, dtype), max_layers)
        started = time.perf_counter()
        convert(src, Path(tmp) / "HuatuoGPT-Vision-7B-random-hf", progress=False)
        seconds = time.perf_counter() - started
        adapter = load_adapter(str(Path(tmp) / "HuatuoGPT-Vision-7B-random-hf"), dtype=dtype, device=device)
        adapter.name = f"random {shape} shape, converted"
    return adapter, seconds
