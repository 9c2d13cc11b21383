"""Tiny checkpoints in the ORIGINAL LLaVA-format layouts, and their forward pass assembled by hand.

The layouts are those HuatuoGPT-Vision, LLaVA-Med and LLaVA-1.5 ship: a config.json with LLaVA's
own keys (``model_type: llava_qwen2`` ..., ``mm_projector_type``, ``mm_vision_tower``, ...), weights
named as LLaVA's code names them (``model.layers.*``, ``lm_head``, ``model.mm_projector.0/2``, the tower
as ``model.vision_tower.vision_tower.vision_model.*`` when it is saved with the model), safetensors or
``.bin`` shards with their index, and the CLIP tower as its own folder (a whole CLIPModel checkpoint,
as openai's is, or a vision-only one).

:func:`reference_logits` is what LLaVA's own code computes, written out here independently of the
converter: pad to square with the CLIP mean colour, CLIP resize + centre crop + normalise, CLIP hidden
state at the selected layer without CLS, the projector, the text model on the embeddings with the
image features spliced where ``<image>`` stands, each text chunk tokenised separately.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken

from vgmed_eval.adapters.tiny import synthetic_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIDE, PATCH = 112, 14
PROMPTS = {  # the original conversation strings, one image before the question
    "huatuo": "<|user|>\n<image>\n{q}\n<|assistant|>\n",
    "llava-med": "[INST] <image>\n{q} [/INST]",
    "vicuna": "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions. USER: <image>\n{q} ASSISTANT:",
}


@dataclass(frozen=True)
class Layout:
    model_type: str
    text_type: str
    prompt: str
    weights: str  # "safetensors" | "bin"
    shards: int
    tower_in_checkpoint: bool
    projector: str = "mlp2x_gelu"
    aspect: str = "pad"
    tower_name: str = "vit/clip_vit_large_patch14_336"  # HuatuoGPT-Vision bundles it here
    whole_clip: bool = True  # the tower folder is a whole CLIPModel (vision_model.* + text_model.*)
    spare_rows: int = 0  # embedding rows beyond the tokenizer (Qwen2's padded vocabulary)
    select_layer: int = -2


HUATUO_7B = Layout("llava_qwen2", "qwen2", "huatuo", "safetensors", 2, True, spare_rows=24)
LLAVA_MED = Layout("llava_mistral", "mistral", "llava-med", "bin", 2, False,
                   tower_name="openai/clip-vit-large-patch14-336")
LLAVA_15 = Layout("llava", "llama", "vicuna", "safetensors", 1, False, projector="linear", aspect="square",
                  whole_clip=False, select_layer=-1)
# HuatuoGPT-Vision-34B: the same LLaVA code on Yi-1.5-34B (a Llama-family model, `llava_llama`), the Huatuo
# prompt (recognised from the folder name), CLIP bundled, pad, mlp2x_gelu; three shards as a big model has.
HUATUO_34B = Layout("llava_llama", "llama", "huatuo", "safetensors", 3, True)
LAYOUTS = {"huatuo": HUATUO_7B, "llava-med": LLAVA_MED, "llava-1.5": LLAVA_15, "huatuo-34b": HUATUO_34B}

_SPECIALS = {"qwen2": dict(specials=["<|user|>", "<|assistant|>"], bos=None, eos="<|endoftext|>", pad="<|endoftext|>"),
             "mistral": dict(specials=["[INST]", "[/INST]"], bos="<s>", eos="</s>", pad="<unk>"),
             "llama": dict(specials=[], bos="<s>", eos="</s>", pad="<unk>")}


def _text_model(layout: Layout, vocab: int, seed: int):
    import transformers

    cls, cfg_cls = {"qwen2": ("Qwen2ForCausalLM", "Qwen2Config"), "mistral": ("MistralForCausalLM", "MistralConfig"),
                    "llama": ("LlamaForCausalLM", "LlamaConfig")}[layout.text_type]
    cfg = getattr(transformers, cfg_cls)(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                         max_position_embeddings=2048, initializer_range=0.1,
                                         tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return getattr(transformers, cls)(cfg).eval()


def _vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=SIDE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=3, num_attention_heads=2, projection_dim=16)


def _clip_weights(seed: int) -> dict[str, torch.Tensor]:
    """A random CLIP vision model's weights under openai's names (``vision_model.*``)."""
    from transformers import CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(_vision_config())
    with torch.no_grad():  # non-trivial layer norms, so a wrong layer or a missing weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return {"vision_model." + k: v.clone() for k, v in model.state_dict().items() if "position_ids" not in k}


def _write_tower(folder: Path, layout: Layout) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vision = _vision_config().to_dict()
    if layout.whole_clip:  # openai/clip-vit-large-patch14-336's shape: a CLIPConfig with vision_config
        config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
                  "text_config": {"hidden_size": 16, "num_hidden_layers": 1}, "vision_config": vision}
    else:
        config = {**vision, "architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({  # CLIP's old-style file: integer sizes
        "crop_size": SIDE, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "size": SIDE}, indent=2))
    weights = _clip_weights(seed=7)
    if layout.whole_clip:
        weights["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 16)
        weights["logit_scale"] = torch.tensor(2.0)
        weights["visual_projection.weight"] = torch.randn(16, 32)
    torch.save(weights, folder / "pytorch_model.bin")


def _write_shards(root: Path, tensors: dict[str, torch.Tensor], layout: Layout) -> None:
    keys = list(tensors)
    groups = [keys[i::layout.shards] for i in range(layout.shards)]
    ext = "safetensors" if layout.weights == "safetensors" else "bin"
    stem = "model" if ext == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"{stem}.{ext}" if layout.shards == 1 else f"{stem}-{i:05d}-of-{layout.shards:05d}.{ext}"
        part = {k: tensors[k].contiguous().clone() for k in group}
        if ext == "safetensors":
            save_file(part, root / name, metadata={"format": "pt"})
        else:
            torch.save(part, root / name)
        weight_map.update(dict.fromkeys(group, name))
    if layout.shards > 1:
        (root / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def make_original(root: Path, layout: Layout, seed: int = 0) -> Path:
    """Write a tiny original checkpoint (and its tower folder, inside it when it is a relative name)."""
    root.mkdir(parents=True, exist_ok=True)
    sp = _SPECIALS[layout.text_type]
    tok = synthetic_tokenizer(sp["specials"], "", bos=sp["bos"], eos=sp["eos"], pad=sp["pad"])
    tok.chat_template = None
    tok.add_tokens([AddedToken("\n", normalized=False)])  # newlines are tokens, as in the real vocabularies
    if sp["bos"]:  # LLaMA / Mistral tokenizers put BOS before every encoded text
        from tokenizers import processors

        bos = (sp["bos"], tok.convert_tokens_to_ids(sp["bos"]))
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A $B", special_tokens=[bos])
    tok.save_pretrained(root)
    vocab = len(tok) + layout.spare_rows
    text = _text_model(layout, vocab, seed)
    tensors = dict(text.state_dict())
    mm_hidden, hidden = 32, 64
    g = torch.Generator().manual_seed(seed + 1)
    if layout.projector == "mlp2x_gelu":
        tensors.update({"model.mm_projector.0.weight": torch.randn(hidden, mm_hidden, generator=g) * 0.2,
                        "model.mm_projector.0.bias": torch.randn(hidden, generator=g) * 0.1,
                        "model.mm_projector.2.weight": torch.randn(hidden, hidden, generator=g) * 0.2,
                        "model.mm_projector.2.bias": torch.randn(hidden, generator=g) * 0.1})
    else:
        tensors.update({"model.mm_projector.weight": torch.randn(hidden, mm_hidden, generator=g) * 0.2,
                        "model.mm_projector.bias": torch.randn(hidden, generator=g) * 0.1})
    if layout.tower_in_checkpoint:  # fine-tuned with the model: differs from the tower folder's weights
        tensors.update({"model.vision_tower.vision_tower." + k: v for k, v in _clip_weights(seed=11).items()})
    _write_shards(root, tensors, layout)
    config = {**text.config.to_dict(), "architectures": [f"Llava{layout.text_type.title()}ForCausalLM"],
              "model_type": layout.model_type, "mm_hidden_size": mm_hidden, "mm_projector_type": layout.projector,
              "mm_vision_select_feature": "patch", "mm_vision_select_layer": layout.select_layer,
              "mm_vision_tower": layout.tower_name, "image_aspect_ratio": layout.aspect,
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
              "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "use_mm_proj": True,
              "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "torch_dtype": "float32"}
    for key in ("dtype", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    if not layout.tower_name.startswith("openai/"):
        _write_tower(root / layout.tower_name, layout)
    return root


def make_tower(folder: Path, layout: Layout) -> Path:
    """A separate local CLIP folder (for ``--vision-tower`` when the config names a hub id)."""
    _write_tower(folder, layout)
    return folder


# ----------------------------------------------------------------------------- the hand-made forward
def _load_all(root: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(root.glob("*.safetensors")):
        out.update(load_file(f))
    for f in sorted(root.glob("pytorch_model*.bin")):
        out.update(torch.load(f, weights_only=True))
    return out


def _pixels(image: Image.Image, pad: bool) -> torch.Tensor:
    image = image.convert("RGB")
    if pad and image.width != image.height:  # LLaVA's expand2square
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in CLIP_MEAN))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    w, h = image.size
    scale = SIDE / min(w, h)  # shortest edge -> SIDE, then centre crop SIDE x SIDE
    image = image.resize((max(SIDE, round(w * scale)), max(SIDE, round(h * scale))), Image.BICUBIC)
    left, top = (image.width - SIDE) // 2, (image.height - SIDE) // 2
    image = image.crop((left, top, left + SIDE, top + SIDE))
    arr = (np.asarray(image, dtype=np.float32) / 255.0 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD,
                                                                                                    np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def reference_logits(root: Path, layout: Layout, image: Image.Image, question: str,
                     tower_dir: Path | None = None) -> torch.Tensor:
    """LLaVA's own forward of one (image, question), from the original files; (seq, vocab) float32."""
    from transformers import AutoTokenizer, CLIPVisionModel

    weights = _load_all(root)
    if layout.tower_in_checkpoint:
        prefix = "model.vision_tower.vision_tower.vision_model."
        tower = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    else:
        saved = torch.load((tower_dir or root / layout.tower_name) / "pytorch_model.bin", weights_only=True)
        tower = {k[len("vision_model."):]: v for k, v in saved.items() if k.startswith("vision_model.")}
    clip = CLIPVisionModel(_vision_config()).eval()
    clip.load_state_dict(tower, strict=True)
    with torch.no_grad():
        hidden = clip(_pixels(image, layout.aspect == "pad"), output_hidden_states=True).hidden_states
        feats = hidden[layout.select_layer][0, 1:]  # "patch": CLS dropped
        if layout.projector == "mlp2x_gelu":
            x = feats @ weights["model.mm_projector.0.weight"].T + weights["model.mm_projector.0.bias"]
            x = torch.nn.functional.gelu(x)
            x = x @ weights["model.mm_projector.2.weight"].T + weights["model.mm_projector.2.bias"]
        else:
            x = feats @ weights["model.mm_projector.weight"].T + weights["model.mm_projector.bias"]
        tok = AutoTokenizer.from_pretrained(root)
        vocab = weights["model.embed_tokens.weight"].shape[0]
        text = _text_model(layout, vocab, seed=0)
        text.load_state_dict({k: v for k, v in weights.items() if not k.startswith(("model.mm_", "model.vision_"))})
        before, after = PROMPTS[layout.prompt].format(q=question).split("<image>")
        ids_before = tok(before, add_special_tokens=True).input_ids  # BOS where the tokenizer has one
        ids_after = tok(after, add_special_tokens=False).input_ids
        embed = text.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(ids_before)), x, embed(torch.tensor(ids_after))])[None]
        return text(inputs_embeds=embeds).logits[0].float()
