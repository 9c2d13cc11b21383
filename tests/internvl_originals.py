"""Tiny checkpoints in the ORIGINAL InternVL-Chat layout, and their forward pass written out by hand.

The layout is InternVL's own code's (``InternVLChatModel``), as MedRegA ships it: a config.json with
``model_type internvl_chat``, ``vision_config`` / ``llm_config``, ``template``, ``select_layer``,
``downsample_ratio``, ``ps_version``, ``dynamic_image_size``; weights named ``vision_model.*`` (fused
``attn.qkv``, ``norm1/2``, ``ls1/2``, ``class_embedding``, ``position_embedding``), ``mlp1.0/1/3`` and
``language_model.model.*`` / ``language_model.lm_head``; the tokenizer with ``<img>``, ``</img>`` and
``<IMG_CONTEXT>``.

:func:`reference_logits` is what InternVL's code computes, independently of the converter and of
transformers' InternVL classes: resize (or tile + thumbnail) and ImageNet normalisation, the InternViT
blocks by hand, the hidden state at ``select_layer`` without CLS, pixel shuffle by slicing (v1: tokens
column by column), ``mlp1``, and the text model on the embeddings with ``<IMG_CONTEXT>`` replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from llava_originals import _load_all, _write_shards
from PIL import Image

from vgmed_eval.adapters.tiny import synthetic_tokenizer

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIDE, PATCH, WIDTH, HEADS, INTER, LAYERS = 112, 14, 32, 2, 64, 3
SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
PROMPT = "<|im_start|>system\n" + SYSTEM + "<|im_end|><|im_start|>user\n<image>\n{q}<|im_end|><|im_start|>assistant\n"


@dataclass(frozen=True)
class Layout:
    text_arch: str  # LlamaForCausalLM (MedRegA: Yi-34B) or Qwen2ForCausalLM
    ps_version: str
    dynamic: bool
    norm: str  # rms_norm (InternViT-6B) or layer_norm (InternViT-300M)
    qk_norm: bool
    qkv_bias: bool
    select_layer: int
    weights: str  # safetensors | bin
    shards: int
    max_tiles: int = 4


MEDREGA = Layout("LlamaForCausalLM", "v1", False, "rms_norm", True, False, -1, "safetensors", 2)
INTERNVL2 = Layout("Qwen2ForCausalLM", "v2", True, "layer_norm", False, True, -2, "bin", 1)


def _text_model(layout: Layout, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls, cfg = {"LlamaForCausalLM": (LlamaForCausalLM, LlamaConfig),
                "Qwen2ForCausalLM": (Qwen2ForCausalLM, Qwen2Config)}[layout.text_arch]
    config = cfg(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=False)
    config._attn_implementation = "eager"
    return cls(config).eval()


def _vision_weights(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, base=0.0):
        return base + scale * torch.randn(*shape, generator=g)

    n = (SIDE // PATCH) ** 2
    out = {"vision_model.embeddings.class_embedding": rnd(1, 1, WIDTH),
           "vision_model.embeddings.patch_embedding.weight": rnd(WIDTH, 3, PATCH, PATCH, scale=0.05),
           "vision_model.embeddings.patch_embedding.bias": rnd(WIDTH),
           "vision_model.embeddings.position_embedding": rnd(1, n + 1, WIDTH)}
    for i in range(LAYERS):
        p = f"vision_model.encoder.layers.{i}."
        out.update({p + "attn.qkv.weight": rnd(3 * WIDTH, WIDTH), p + "attn.proj.weight": rnd(WIDTH, WIDTH),
                    p + "attn.proj.bias": rnd(WIDTH), p + "mlp.fc1.weight": rnd(INTER, WIDTH),
                    p + "mlp.fc1.bias": rnd(INTER), p + "mlp.fc2.weight": rnd(WIDTH, INTER),
                    p + "mlp.fc2.bias": rnd(WIDTH), p + "norm1.weight": rnd(WIDTH, base=1.0),
                    p + "norm2.weight": rnd(WIDTH, base=1.0), p + "ls1": rnd(WIDTH, base=0.5),
                    p + "ls2": rnd(WIDTH, base=0.5)})
        if layout.qkv_bias:
            out[p + "attn.qkv.bias"] = rnd(3 * WIDTH)
        if layout.qk_norm:
            out[p + "attn.q_norm.weight"] = rnd(WIDTH, base=1.0)
            out[p + "attn.k_norm.weight"] = rnd(WIDTH, base=1.0)
        if layout.norm == "layer_norm":
            out[p + "norm1.bias"], out[p + "norm2.bias"] = rnd(WIDTH), rnd(WIDTH)
    out.update({"mlp1.0.weight": rnd(4 * WIDTH, base=1.0), "mlp1.0.bias": rnd(4 * WIDTH),
                "mlp1.1.weight": rnd(64, 4 * WIDTH), "mlp1.1.bias": rnd(64),
                "mlp1.3.weight": rnd(64, 64), "mlp1.3.bias": rnd(64)})
    return out


def make_original(root: Path, layout: Layout, seed: int = 0) -> Path:
    """Write a tiny InternVL-Chat checkpoint in the original layout."""
    root.mkdir(parents=True, exist_ok=True)
    tok = synthetic_tokenizer(["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"], "", bos=None,
                              eos="<|im_end|>", pad="<|endoftext|>")
    tok.save_pretrained(root)
    torch.manual_seed(seed)
    text = _text_model(layout, len(tok) + 7)  # a few spare rows, as trained checkpoints often have
    tensors = {"language_model." + k: v for k, v in text.state_dict().items()}
    tensors.update(_vision_weights(layout, seed + 1))
    _write_shards(root, tensors, layout)
    llm = {k: v for k, v in text.config.to_dict().items() if k not in ("transformers_version",)}
    llm["architectures"] = [layout.text_arch]
    vision = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": WIDTH,
              "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "image_size": SIDE, "patch_size": PATCH, "qkv_bias": layout.qkv_bias,
              "qk_normalization": layout.qk_norm, "norm_type": layout.norm, "layer_norm_eps": 1e-6,
              "hidden_act": "gelu", "use_flash_attn": False, "drop_path_rate": 0.0, "initializer_factor": 0.1}
    config = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "Hermes-2",
              "select_layer": layout.select_layer, "downsample_ratio": 0.5, "force_image_size": SIDE,
              "ps_version": layout.ps_version, "dynamic_image_size": layout.dynamic, "use_thumbnail": layout.dynamic,
              "min_dynamic_patch": 1, "max_dynamic_patch": layout.max_tiles, "use_backbone_lora": 0,
              "use_llm_lora": 0, "vision_config": vision, "llm_config": llm, "torch_dtype": "float32"}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root


# ----------------------------------------------------------------------------- the hand-made forward
def _normalised(image: Image.Image) -> torch.Tensor:
    arr = (np.asarray(image, dtype=np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / \
        np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)


def _tiles(image: Image.Image, layout: Layout) -> list[Image.Image]:
    """InternVL's dynamic_preprocess, written out: closest aspect ratio (ties: more tiles when the image is
    large enough), resize, crop row by row, thumbnail last when there are several tiles."""
    if not layout.dynamic:
        return [image.resize((SIDE, SIDE), Image.BICUBIC)]
    w, h = image.size
    ratios = sorted({(i, j) for n in range(1, layout.max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if 1 <= i * j <= layout.max_tiles}, key=lambda r: r[0] * r[1])
    best, best_diff = (1, 1), float("inf")
    for cols, rows in ratios:
        diff = abs(w / h - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and w * h > 0.5 * SIDE * SIDE * cols * rows:
            best = (cols, rows)
    cols, rows = best
    big = image.resize((cols * SIDE, rows * SIDE), Image.BICUBIC)
    tiles = [big.crop((c * SIDE, r * SIDE, (c + 1) * SIDE, (r + 1) * SIDE)) for r in range(rows) for c in range(cols)]
    return tiles + [image.resize((SIDE, SIDE), Image.BICUBIC)] if len(tiles) > 1 else tiles


def _rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _vit_hidden(w: dict, layout: Layout, pixels: torch.Tensor) -> list[torch.Tensor]:
    """InternViT's hidden states (embeddings, then after each block), by hand."""
    x = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"],
                 w["vision_model.embeddings.patch_embedding.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = w["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + w["vision_model.embeddings.position_embedding"]
    states = [x]
    for i in range(LAYERS):
        p = f"vision_model.encoder.layers.{i}."

        def norm(t, name, p=p):
            if layout.norm == "rms_norm":
                return _rms(t, w[p + name + ".weight"])
            return F.layer_norm(t, (WIDTH,), w[p + name + ".weight"], w[p + name + ".bias"], 1e-6)

        h = norm(x, "norm1")
        qkv = F.linear(h, w[p + "attn.qkv.weight"], w.get(p + "attn.qkv.bias"))
        q, k, v = qkv.split(WIDTH, -1)
        if layout.qk_norm:
            q, k = _rms(q, w[p + "attn.q_norm.weight"]), _rms(k, w[p + "attn.k_norm.weight"])
        b, n, _ = q.shape
        q, k, v = (t.reshape(b, n, HEADS, -1).transpose(1, 2) for t in (q, k, v))
        att = ((q * (WIDTH // HEADS) ** -0.5) @ k.transpose(-1, -2)).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(b, n, WIDTH)
        x = x + w[p + "ls1"] * F.linear(o, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        m = F.linear(F.gelu(F.linear(norm(x, "norm2"), w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
                     w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        x = x + w[p + "ls2"] * m
        states.append(x)
    return states


def _shuffle(grid: torch.Tensor, version: str) -> torch.Tensor:
    """(h, w, c) patches -> tokens of 2 x 2 patches (channels: top-left, top-right, bottom-left, bottom-right),
    row-major (v2) or column-major (v1)."""
    merged = torch.cat([grid[0::2, 0::2], grid[0::2, 1::2], grid[1::2, 0::2], grid[1::2, 1::2]], -1)
    if version == "v1":
        merged = merged.transpose(0, 1)
    return merged.reshape(-1, merged.shape[-1])


def reference_logits(root: Path, layout: Layout, image: Image.Image, question: str) -> torch.Tensor:
    """InternVL's own forward of one (image, question), from the original files; (seq, vocab) float32."""
    from transformers import AutoTokenizer

    w = _load_all(root)
    tiles = _tiles(image.convert("RGB"), layout)
    pixels = torch.stack([_normalised(t) for t in tiles])
    with torch.no_grad():
        feats = _vit_hidden(w, layout, pixels)[layout.select_layer][:, 1:]
        side = SIDE // PATCH
        tokens = torch.cat([_shuffle(f.reshape(side, side, -1), layout.ps_version) for f in feats])
        x = F.layer_norm(tokens, (4 * WIDTH,), w["mlp1.0.weight"], w["mlp1.0.bias"], 1e-5)
        x = F.linear(F.gelu(F.linear(x, w["mlp1.1.weight"], w["mlp1.1.bias"])), w["mlp1.3.weight"], w["mlp1.3.bias"])
        tok = AutoTokenizer.from_pretrained(root)
        per_tile = (side // 2) ** 2
        query = PROMPT.format(q=question).replace(
            "<image>", "<img>" + "<IMG_CONTEXT>" * (per_tile * len(tiles)) + "</img>")
        ids = torch.tensor(tok(query).input_ids)
        text = _text_model(layout, w["language_model.model.embed_tokens.weight"].shape[0])
        text.load_state_dict({k[len("language_model."):]: v for k, v in w.items() if k.startswith("language_model.")})
        embeds = text.get_input_embeddings()(ids)
        embeds[ids == tok.convert_tokens_to_ids("<IMG_CONTEXT>")] = x
        return text(inputs_embeds=embeds[None]).logits[0].float()
