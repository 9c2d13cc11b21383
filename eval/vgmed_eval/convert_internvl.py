"""`vgmed-eval convert` for InternVL-Chat checkpoints (``model_type internvl_chat``, e.g. MedRegA on
InternVL-Chat-V1-2 with Nous-Hermes-2-Yi-34B) -> transformers' ``InternVLForConditionalGeneration``.

InternVL's own code (``InternVLChatModel``): ``vision_model`` (InternViT: CLS + patch embeddings with
learned positions, pre-norm blocks with a fused ``qkv`` projection, optional RMS q/k norm over the whole
width, layer scales ``ls1`` / ``ls2``, no final norm), the hidden state at ``select_layer`` without CLS,
pixel shuffle (``downsample_ratio`` 0.5; ``ps_version`` v1 leaves the token grid transposed), ``mlp1``
(LayerNorm, Linear, GELU, Linear), and ``language_model`` (a LlamaForCausalLM or Qwen2ForCausalLM; the
image's ``<IMG_CONTEXT>`` tokens replaced by the features). Images: resized to ``force_image_size``
(bicubic), ImageNet mean and std; with ``dynamic_image_size`` InternVL's tiling plus a thumbnail.

Renamed weights: ``vision_model.*`` -> ``model.vision_tower.*`` (``qkv`` split into q/k/v, ``attn.proj``
-> ``attention.projection_layer``, ``norm1/2`` -> ``layernorm_before/after``, ``ls1/2`` -> ``lambda_1/2``,
``class_embedding`` -> ``cls_token``, ``patch_embedding`` -> ``patch_embeddings.projection``,
``position_embedding`` -> ``position_embeddings``), ``mlp1.0/1/3`` -> ``model.multi_modal_projector.
layer_norm/linear_1/linear_2``, ``language_model.model.*`` -> ``model.language_model.*``,
``language_model.lm_head`` -> ``lm_head``. A v1 checkpoint keeps ``ps_version: v1`` in its config; the
``internvl`` adapter then orders the tokens as InternVL 1.x does (transformers' own class would not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgmed_eval.chat_templates import INTERNVL_HERMES, PROMPTS, read_template
from vgmed_eval.checkpoint_io import (
    ConvertError,
    assemble,
    fitted_shapes,
    mapped_shapes,
    own_storage,
    read_json,
    read_weights,
    weight_files,
    write_extras,
)

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CONTEXT_TOKEN = "<IMG_CONTEXT>"
TEXT_TYPES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
TEMPLATES = {"Hermes-2": INTERNVL_HERMES, "internlm2-chat": INTERNVL_HERMES}
_VISION_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)")
_LAYER_PARTS = {"attn.proj.": "attention.projection_layer.", "attn.q_norm.": "attention.q_norm.",
                "attn.k_norm.": "attention.k_norm.", "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2.",
                "norm1.": "layernorm_before.", "norm2.": "layernorm_after.", "ls1": "lambda_1", "ls2": "lambda_2"}
_FIXED = {"vision_model.embeddings.class_embedding": "model.vision_tower.embeddings.cls_token",
          "vision_model.embeddings.position_embedding": "model.vision_tower.embeddings.position_embeddings",
          "vision_model.embeddings.patch_embedding.weight":
              "model.vision_tower.embeddings.patch_embeddings.projection.weight",
          "vision_model.embeddings.patch_embedding.bias":
              "model.vision_tower.embeddings.patch_embeddings.projection.bias",
          "language_model.lm_head.weight": "lm_head.weight"}
_MLP1 = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}


def renamed(key: str, tensor=None) -> dict[str, object]:
    """One original name (and tensor, or shape tuple) -> its transformers name(s); a fused ``qkv``
    becomes three entries. Buffers (rotary frequencies) give nothing."""
    if key.endswith("rotary_emb.inv_freq"):
        return {}
    if key in _FIXED:
        return {_FIXED[key]: tensor}
    if key.startswith("language_model.model."):
        return {"model.language_model." + key[len("language_model.model."):]: tensor}
    match = re.fullmatch(r"mlp1\.(\d+)\.(weight|bias)", key)
    if match and match[1] in _MLP1:
        return {f"model.multi_modal_projector.{_MLP1[match[1]]}.{match[2]}": tensor}
    match = _VISION_LAYER.fullmatch(key)
    if match:
        prefix, rest = f"model.vision_tower.encoder.layer.{match[1]}.", match[2]
        if rest.startswith("attn.qkv."):
            kind = rest[len("attn.qkv."):]
            if isinstance(tensor, tuple):  # a shape
                parts = [(tensor[0] // 3, *tensor[1:])] * 3
            else:  # q, k, v stacked along the output dimension; copies, not views of one storage
                parts = [t.clone() for t in tensor.chunk(3, dim=0)]
            return {f"{prefix}attention.{n}_proj.{kind}": part for n, part in zip("qkv", parts, strict=True)}
        for old, new in _LAYER_PARTS.items():
            if rest.startswith(old):
                return {prefix + new + rest[len(old):]: tensor}
    raise ConvertError(f"unexpected weight {key!r}")


@dataclass
class InternVLPlan:
    """Everything read and checked before writing."""

    src: Path
    files: list[Path]
    config: object  # InternVLConfig
    tokenizer: object
    image_processor: object
    template: str
    template_name: str
    source: dict = field(default_factory=dict)

    def describe(self) -> str:
        cfg = self.config
        return (f"internvl_chat, {cfg.text_config.model_type} text model, ps_version "
                f"{getattr(cfg, 'ps_version', 'v2')}, prompt {self.template_name}")


def _text_config(llm: dict, path: Path):
    from transformers import AutoConfig

    arch = (llm.get("architectures") or ["?"])[0]
    if arch not in TEXT_TYPES:
        raise ConvertError(f"{path}: llm_config architecture {arch!r} has no transformers class here "
                           f"(supported: {', '.join(TEXT_TYPES)}; InternLM2 checkpoints need InternVL's -hf release)")
    kwargs = {k: v for k, v in llm.items() if k not in ("architectures", "model_type", "_name_or_path",
                                                         "transformers_version", "auto_map", "torch_dtype")}
    if "torch_dtype" in llm:
        kwargs["dtype"] = llm["torch_dtype"]
    try:
        return AutoConfig.for_model(TEXT_TYPES[arch], **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"{path}: llm_config: {exc}") from exc


def _vision_config(vision: dict, image_size: int, path: Path):
    from transformers import InternVLVisionConfig

    norm = vision.get("norm_type", "rms_norm")
    if norm not in ("rms_norm", "layer_norm"):
        raise ConvertError(f"{path}: vision_config norm_type {norm!r}; supported: rms_norm, layer_norm")
    return InternVLVisionConfig(
        hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_hidden_layers"], num_attention_heads=vision["num_attention_heads"],
        image_size=image_size, patch_size=vision["patch_size"], attention_bias=bool(vision.get("qkv_bias", True)),
        use_qk_norm=bool(vision.get("qk_normalization", False)), norm_type=norm,
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6), hidden_act=vision.get("hidden_act", "gelu"),
        use_mean_pooling=True,  # no final norm after the last block, as InternViT
    )


def load_tokenizer(src: Path, template: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{src}: cannot load the tokenizer: {exc}") from exc
    missing = [t for t in ("<img>", "</img>", CONTEXT_TOKEN) if t not in tok.get_vocab()]
    if missing:
        raise ConvertError(f"{src}: the tokenizer lacks InternVL's image tokens {', '.join(missing)}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.chat_template = template
    return tok


def plan(src: Path, *, chat_template: Path | None = None, prompt: str | None = None) -> InternVLPlan:
    """Read and check everything; raise :class:`ConvertError` before anything is written."""
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    cfg_path = src / "config.json"
    cfg = read_json(cfg_path)
    for key in ("vision_config", "llm_config"):
        if not isinstance(cfg.get(key), dict):
            raise ConvertError(f"{cfg_path}: no {key} (not an InternVL-Chat config)")
    if cfg.get("use_backbone_lora") or cfg.get("use_llm_lora"):
        raise ConvertError(f"{cfg_path}: LoRA weights are not merged (use_backbone_lora / use_llm_lora); merge them "
                           "with InternVL's tools first")
    ps = cfg.get("ps_version", "v1")
    if ps not in ("v1", "v2"):
        raise ConvertError(f"{cfg_path}: ps_version {ps!r}; supported: v1, v2")
    dynamic = bool(cfg.get("dynamic_image_size", False))
    if dynamic and not cfg.get("use_thumbnail", False):
        raise ConvertError(f"{cfg_path}: dynamic_image_size without use_thumbnail; transformers' tiling always adds "
                           "the thumbnail")
    files = weight_files(src)
    if not files:
        raise ConvertError(f"{src}: no weight files (model*.safetensors or pytorch_model*.bin)")
    vision_cfg = cfg["vision_config"]
    side = int(cfg.get("force_image_size") or vision_cfg["image_size"])
    if side != int(vision_cfg["image_size"]):
        raise ConvertError(f"{cfg_path}: force_image_size {side} differs from the tower's image_size "
                           f"{vision_cfg['image_size']} (position embeddings are resized at load by InternVL's code)")
    if chat_template is not None:
        template, template_name = read_template(chat_template), str(chat_template)
    elif prompt:
        template, template_name = PROMPTS[prompt].template, prompt
    else:
        name = cfg.get("template")
        if name not in TEMPLATES:
            raise ConvertError(f"{cfg_path}: conversation template {name!r} is not one vgmed knows "
                               f"({', '.join(TEMPLATES)}); give it with --chat-template FILE")
        template, template_name = TEMPLATES[name].template, TEMPLATES[name].name
    tok = load_tokenizer(src, template)
    text = _text_config(cfg["llm_config"], cfg_path)
    patch = int(vision_cfg["patch_size"])
    ratio = float(cfg.get("downsample_ratio", 0.5))
    cells = round(side // patch * ratio)
    config = InternVLConfig(
        vision_config=_vision_config(vision_cfg, side, cfg_path), text_config=text,
        image_token_id=tok.convert_tokens_to_ids(CONTEXT_TOKEN), image_seq_length=cells * cells,
        downsample_ratio=ratio, vision_feature_layer=int(cfg.get("select_layer", -1)),
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
    )
    config.ps_version = ps
    source = mapped_shapes(files, renamed)
    fitted_shapes(src, "an InternVL model", InternVLForConditionalGeneration, config, source)
    ip = GotOcr2ImageProcessorPil(
        size={"height": side, "width": side}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        crop_to_patches=dynamic, min_patches=int(cfg.get("min_dynamic_patch", 1)),
        max_patches=int(cfg.get("max_dynamic_patch", 12)) if dynamic else 1)
    return InternVLPlan(src=src, files=files, config=config, tokenizer=tok, image_processor=ip, template=template,
                        template_name=template_name, source=source)


def convert(src: Path, dst: Path, *, chat_template: Path | None = None, prompt: str | None = None,
            progress: bool = True) -> InternVLPlan:
    """Convert an InternVL-Chat checkpoint at ``src`` into a new folder ``dst``."""
    p = plan(Path(src), chat_template=chat_template, prompt=prompt)
    tied = p.config.tie_word_embeddings

    def part(path: Path):
        def read() -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            seen: set[int] = set()
            for key, value in read_weights(path).items():
                for new, tensor in renamed(key, value).items():
                    if tied and new == "lm_head.weight":
                        continue
                    out[new] = own_storage(tensor, seen)
            return out
        return read

    notes = {"source_model_type": "internvl_chat", "source": str(src), "ps_version": p.config.ps_version,
             "chat_template": p.template_name, "image_token_id": p.config.image_token_id,
             "image_seq_length": p.config.image_seq_length, "tiling": bool(p.image_processor.crop_to_patches)}

    def finish(work: Path) -> None:
        write_extras(work, [p.config, p.tokenizer, p.image_processor], notes, src / "generation_config.json",
                     p.template)

    assemble(Path(dst), [part(f) for f in p.files], finish, progress)
    return p
