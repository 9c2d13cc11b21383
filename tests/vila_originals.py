"""Tiny checkpoints in VILA 1.5's ORIGINAL layout (VILA-M3's), and their forward pass written out by hand.

The layout: config.json (``model_type llava_llama``, ``image_aspect_ratio resize``,
``mm_vision_select_layer``, ``mm_vision_select_feature cls_patch``) beside three folders: ``llm/``
(LlamaForCausalLM weights + tokenizer), ``vision_tower/`` (a SigLIP vision model saved with
``vision_model.*`` names, its pooling head included, and SigLIP's preprocessor_config.json) and
``mm_projector/`` (``mm_projector_type mlp_downsample``, weights ``layers.1`` LayerNorm, ``layers.2`` /
``layers.4`` Linear). The tower sees 98 px as 7 x 7 patches: an odd grid, as 384 px gives 27 x 27.

:func:`reference_logits` is VILA's forward, independently of the converter and of transformers' InternVL
classes: PIL resize to the tower's size, mean/std 0.5, the SigLIP hidden state at the selected layer (all
tokens), DownSampleBlock by hand (a zero row at the bottom and a zero column at the right, then 2 x 2
patches concatenated, column by column), the projector, and the text model with ``<image>`` replaced,
each prompt chunk tokenised separately (BOS on the first only), as ``tokenizer_image_token`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from llava_originals import PROMPTS
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import processors

from vgmed_eval.adapters.tiny import synthetic_tokenizer

SIDE, PATCH, WIDTH, HIDDEN = 98, 14, 32, 64
GRID = SIDE // PATCH  # 7: odd, as VILA's 27
TOKENS = ((GRID + 1) // 2) ** 2  # 16


def _tower_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(image_size=SIDE, patch_size=PATCH, hidden_size=WIDTH, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=2)


def make_original(root: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionModel

    for folder in ("llm", "vision_tower", "mm_projector"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    tok = synthetic_tokenizer(["USER", "ASSISTANT"], "", bos="<s>", eos="</s>", pad="<unk>")
    tok.chat_template = None
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)])
    tok.save_pretrained(root / "llm")
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
                                       initializer_range=0.1, tie_word_embeddings=False)).eval()
    llm.save_pretrained(root / "llm")
    tower = SiglipVisionModel(_tower_config()).eval()
    with torch.no_grad():  # non-trivial norms, so a wrong layer shows
        for name, p in tower.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    save_file({"vision_model." + k: v.contiguous() for k, v in tower.state_dict().items()},
              root / "vision_tower" / "model.safetensors", metadata={"format": "pt"})
    (root / "vision_tower" / "config.json").write_text(json.dumps(
        {**_tower_config().to_dict(), "architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model"}))
    (root / "vision_tower" / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3,
         "image_processor_type": "SiglipImageProcessor", "image_std": [0.5] * 3, "resample": 3,
         "rescale_factor": 1 / 255, "size": {"height": SIDE, "width": SIDE}}))
    g = torch.Generator().manual_seed(seed + 3)
    proj = {"layers.1.weight": 1 + 0.3 * torch.randn(4 * WIDTH, generator=g),
            "layers.1.bias": 0.1 * torch.randn(4 * WIDTH, generator=g),
            "layers.2.weight": 0.1 * torch.randn(HIDDEN, 4 * WIDTH, generator=g),
            "layers.2.bias": 0.1 * torch.randn(HIDDEN, generator=g),
            "layers.4.weight": 0.1 * torch.randn(HIDDEN, HIDDEN, generator=g),
            "layers.4.bias": 0.1 * torch.randn(HIDDEN, generator=g)}
    save_file(proj, root / "mm_projector" / "model.safetensors", metadata={"format": "pt"})
    (root / "mm_projector" / "config.json").write_text(json.dumps(
        {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector",
         "mm_projector_type": "mlp_downsample"}))
    (root / "config.json").write_text(json.dumps(
        {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "image_aspect_ratio": "resize",
         "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch", "mm_use_im_start_end": False,
         "hidden_size": HIDDEN, "mm_hidden_size": WIDTH, "model_dtype": "torch.float32",
         "llm_cfg": str(root / "llm"), "vision_tower_cfg": str(root / "vision_tower"),
         "mm_projector_cfg": str(root / "mm_projector")}, indent=2))
    return root


def _down_sample(grid: torch.Tensor) -> torch.Tensor:
    """VILA's DownSampleBlock on (h, w, c): zero row / column to even sides, 2 x 2 patches concatenated
    (top-left, top-right, bottom-left, bottom-right), tokens column by column."""
    h, w, c = grid.shape
    padded = torch.zeros(h + h % 2, w + w % 2, c)
    padded[:h, :w] = grid
    merged = torch.cat([padded[0::2, 0::2], padded[0::2, 1::2], padded[1::2, 0::2], padded[1::2, 1::2]], -1)
    return merged.transpose(0, 1).reshape(-1, 4 * c)


def reference_logits(root: Path, image: Image.Image, question: str) -> torch.Tensor:
    from transformers import AutoTokenizer, LlamaForCausalLM, SiglipVisionModel

    cfg = json.loads((root / "config.json").read_text())
    pixels = np.asarray(image.convert("RGB").resize((SIDE, SIDE), Image.BICUBIC), np.float32) / 255.0
    pixels = torch.from_numpy((pixels - 0.5) / 0.5).permute(2, 0, 1)[None]
    tower = SiglipVisionModel(_tower_config()).eval()
    saved = load_file(root / "vision_tower" / "model.safetensors")
    tower.load_state_dict({k[len("vision_model."):]: v for k, v in saved.items()}, strict=True)
    proj = load_file(root / "mm_projector" / "model.safetensors")
    with torch.no_grad():
        feats = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[cfg["mm_vision_select_layer"]][0]
        x = _down_sample(feats.reshape(GRID, GRID, WIDTH))
        x = F.layer_norm(x, (4 * WIDTH,), proj["layers.1.weight"], proj["layers.1.bias"])
        x = F.linear(F.gelu(F.linear(x, proj["layers.2.weight"], proj["layers.2.bias"])),
                     proj["layers.4.weight"], proj["layers.4.bias"])
        tok = AutoTokenizer.from_pretrained(root / "llm")
        llm = LlamaForCausalLM.from_pretrained(root / "llm", dtype=torch.float32).eval()
        before, after = PROMPTS["vicuna"].format(q=question).split("<image>")
        ids_before = tok(before).input_ids
        ids_after = tok(after).input_ids[1:]  # tokenizer_image_token drops the later chunks' BOS
        embed = llm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(ids_before)), x, embed(torch.tensor(ids_after))])[None]
        return llm(inputs_embeds=embeds).logits[0].float()
