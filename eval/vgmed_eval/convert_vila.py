"""`vgmed-eval convert` for VILA 1.5 checkpoints (VILA-M3: MONAI's medical VILA) -> transformers'
``InternVLForConditionalGeneration`` with a SigLIP tower and a Llama text model.

VILA's own code (``LlavaLlamaModel``) keeps three sub-models in folders: ``llm/`` (a LlamaForCausalLM and
the tokenizer), ``vision_tower/`` (SigLIP so400m, patch 14 at 384 px: 27 x 27 patches, no CLS token) and
``mm_projector/`` (``mlp_downsample``: ``DownSampleBlock`` pads the 27 x 27 grid with a zero row at the
bottom and a zero column at the right to 28 x 28 and concatenates every 2 x 2 patches -> 14 x 14 = 196
tokens, column by column like InternVL 1.x's pixel shuffle; then LayerNorm, Linear, GELU, Linear). The
image is the SigLIP hidden state at ``mm_vision_select_layer`` (-2), all tokens (``cls_patch``), after a
plain resize to 384 x 384 (``image_aspect_ratio: resize``, or SigLIP's own resize); ``<image>`` in the
prompt is replaced by the 196 features.

That projector is transformers' InternVL projector (LayerNorm, Linear, GELU, Linear over 4 x the tower
width) after the same 2 x 2 merge, so the converted checkpoint is an InternVL model whose vision tower is
transformers' SigLIP; ``ps_version: v1`` makes the ``internvl`` adapter merge as VILA does (zero padding,
column order). Renamed weights: ``llm/`` ``model.*`` -> ``model.language_model.*``; ``vision_tower/``
``vision_model.*`` -> ``model.vision_tower.*`` (the unused pooling head dropped); ``mm_projector/``
``layers.1/2/4`` -> ``model.multi_modal_projector.layer_norm/linear_1/linear_2``. The tokenizer gains
``<image>`` (rows grown as for LLaVA). VILA keeps its conversation in code, so the prompt is given with
``--chat-template FILE`` (or ``--prompt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from vgmed_eval.chat_templates import PROMPTS, read_template
from vgmed_eval.checkpoint_io import (
    EMBED,
    IMAGE_TOKEN,
    LM_HEAD,
    ConvertError,
    assemble,
    converted_tensors,
    fitted_shapes,
    grow_shapes,
    load_tokenizer,
    read_json,
    read_weights,
    source_shapes,
    weight_files,
    write_extras,
)

FOLDERS = ("llm", "vision_tower", "mm_projector")
_PROJECTOR = {"layers.1": "layer_norm", "layers.2": "linear_1", "layers.4": "linear_2"}


def is_vila(src: Path) -> bool:
    """VILA 1.5's layout: the three sub-model folders beside config.json."""
    return all((Path(src) / f).is_dir() for f in FOLDERS)


def renamed(folder: str, key: str) -> str | None:
    """A sub-model's weight name -> the converted model's; None for what the model does not use."""
    if folder == "llm":
        if key.endswith("rotary_emb.inv_freq"):
            return None
        if key == "lm_head.weight":
            return LM_HEAD
        if key.startswith("model."):
            return "model.language_model." + key[len("model."):]
    elif folder == "vision_tower":
        key = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if key.startswith("head.") or key.endswith("position_ids"):
            return None
        return "model.vision_tower." + key
    else:
        stem, _, kind = key.rpartition(".")
        if stem in _PROJECTOR:
            return f"model.multi_modal_projector.{_PROJECTOR[stem]}.{kind}"
    raise ConvertError(f"{folder}: unexpected weight {key!r}")


@dataclass
class VilaPlan:
    src: Path
    files: dict[str, list[Path]]
    config: object  # InternVLConfig
    tokenizer: object
    image_processor: object
    template: str
    template_name: str
    rows: int
    shapes: dict

    def describe(self) -> str:
        return (f"VILA ({self.config.text_config.model_type} + SigLIP {self.config.vision_config.image_size} px, "
                f"{self.config.image_seq_length} tokens), prompt {self.template_name}")


def plan(src: Path, *, chat_template: Path | None = None, prompt: str | None = None) -> VilaPlan:
    """Read and check everything; raise :class:`ConvertError` before anything is written."""
    from transformers import (
        AutoConfig,
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        SiglipVisionConfig,
    )

    cfg_path = src / "config.json"
    cfg = read_json(cfg_path)
    kind = read_json(src / "mm_projector" / "config.json").get("mm_projector_type")
    if kind != "mlp_downsample":
        raise ConvertError(f"{src / 'mm_projector' / 'config.json'}: mm_projector_type {kind!r}; only VILA 1.5's "
                           "mlp_downsample converts")
    aspect = cfg.get("image_aspect_ratio") or "resize"
    if aspect != "resize":
        raise ConvertError(f"{cfg_path}: image_aspect_ratio {aspect!r}; only resize (VILA 1.5) converts")
    if cfg.get("s2") or cfg.get("dynamic_s2") or cfg.get("mm_use_im_start_end"):
        raise ConvertError(f"{cfg_path}: S2 multi-scale towers and image start/end tokens do not convert")
    tower_cfg = read_json(src / "vision_tower" / "config.json")
    if tower_cfg.get("model_type") not in ("siglip_vision_model", "siglip"):
        raise ConvertError(f"{src / 'vision_tower' / 'config.json'}: model_type {tower_cfg.get('model_type')!r}; "
                           "only a SigLIP tower converts")
    if tower_cfg.get("model_type") == "siglip":
        tower_cfg = tower_cfg.get("vision_config", {})
    select = cfg.get("mm_vision_select_feature", "cls_patch")
    if select != "cls_patch":
        raise ConvertError(f"{cfg_path}: mm_vision_select_feature {select!r}: SigLIP has no CLS token, VILA uses "
                           "cls_patch (every token)")
    if chat_template is not None:
        template, template_name = read_template(chat_template), str(chat_template)
    elif prompt:
        template, template_name = PROMPTS[prompt].template, prompt
    else:
        raise ConvertError(f"{src}: VILA keeps its conversation in code (VILA-M3 8B: llama_3, 3B / 13B: vicuna_v1); "
                           "give the prompt with --chat-template FILE or --prompt")
    files = {f: weight_files(src / f) for f in FOLDERS}
    for folder, found in files.items():
        if not found:
            raise ConvertError(f"{src / folder}: no weight files (model*.safetensors or pytorch_model*.bin)")
    tok = load_tokenizer(src / "llm", template)
    source: dict[str, tuple[int, ...]] = {}
    for folder, paths in files.items():
        source.update(source_shapes(paths, partial(renamed, folder)))
    if EMBED not in source:
        raise ConvertError(f"{src / 'llm'}: no model.embed_tokens.weight")
    rows = grow_shapes(source, len(tok))
    llm = {k: v for k, v in read_json(src / "llm" / "config.json").items()
           if k not in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "model_type")}
    try:
        text = AutoConfig.for_model("llama", **{**llm, "vocab_size": rows})
        vision = SiglipVisionConfig(**{**{k: v for k, v in tower_cfg.items() if k not in (
            "architectures", "model_type", "transformers_version", "torch_dtype", "_name_or_path")},
            "vision_use_head": False})
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"{src}: {exc}") from exc
    side, patch = int(vision.image_size), int(vision.patch_size)
    cells = math.ceil(side // patch / 2)
    config = InternVLConfig(vision_config=vision, text_config=text,
                            image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                            image_seq_length=cells * cells, downsample_ratio=0.5,
                            vision_feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
                            vision_feature_select_strategy="full", projector_hidden_act="gelu",
                            tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)))
    config.ps_version = "v1"
    target = fitted_shapes(src, "a SigLIP + Llama InternVL model", InternVLForConditionalGeneration, config, source)
    pre_path = src / "vision_tower" / "preprocessor_config.json"
    pre = read_json(pre_path) if pre_path.is_file() else {}
    ip = GotOcr2ImageProcessorPil(size={"height": side, "width": side}, crop_to_patches=False, max_patches=1,
                                  image_mean=pre.get("image_mean", [0.5] * 3),
                                  image_std=pre.get("image_std", [0.5] * 3))
    return VilaPlan(src=src, files=files, config=config, tokenizer=tok, image_processor=ip, template=template,
                    template_name=template_name, rows=rows, shapes=target)


def convert(src: Path, dst: Path, *, chat_template: Path | None = None, prompt: str | None = None,
            progress: bool = True) -> VilaPlan:
    """Convert a VILA 1.5 checkpoint at ``src`` into a new folder ``dst``."""
    p = plan(Path(src), chat_template=chat_template, prompt=prompt)

    def part(folder: str, path: Path):
        def read() -> dict[str, torch.Tensor]:
            return converted_tensors(read_weights(path), partial(renamed, folder), p.shapes, p.rows)
        return read

    notes = {"source_model_type": "vila", "source": str(src), "chat_template": p.template_name,
             "embedding_rows": p.rows, "image_token_id": p.config.image_token_id,
             "image_seq_length": p.config.image_seq_length}

    def finish(work: Path) -> None:
        write_extras(work, [p.config, p.tokenizer, p.image_processor], notes,
                     src / "llm" / "generation_config.json", p.template)

    assemble(Path(dst), [part(f, path) for f, paths in p.files.items() for path in paths], finish, progress)
    return p
